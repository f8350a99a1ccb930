"""DataParallel: one model trained data-parallel over the ranks of a communicator (see fuseprop.distributed)."""
from __future__ import annotations

import copy
import os
import sys
import time
import zlib

import numpy as np

from .. import _random, losses
from ..engine.step import StepHooks, per_layer_step
from .local import LocalComm
from .mpi import DistributedError, _check_timeout, _default_timeout, _mpi

__all__ = ["DataParallel", "resolve", "DEFAULT_BUCKET_BYTES"]

DEFAULT_BUCKET_BYTES = 256 * 1024
_ALIGN = 64  # bytes: every gradient view starts on its own cache line
_EXTRAS = 4  # [sample count, loss sum, right, judged] ahead of the gradients, in the first bucket


class DataParallel:
    """``module`` replicated on every rank of ``comm`` (default MPI.COMM_WORLD), trained data-parallel.

    The constructor checks that every rank built the same parameters (count, shapes, dtype), broadcasts
    rank 0's values, and re-homes every ``param.grad`` into one flat buffer. bucket_bytes: gradients per
    all-reduce (a parameter is never split; None: one bucket, started after the whole backward).
    timeout: seconds any collective may take before this rank aborts the job (see the module docstring).
    ``stats``: steps, and the seconds spent in them and, within them, in communication calls (starting,
    testing and waiting for the all-reduces: the communication that did not overlap the backward).
    """

    def __init__(self, module, comm=None, *, bucket_bytes=DEFAULT_BUCKET_BYTES, timeout=None):
        if not _is_module(module):
            raise TypeError(f"module must be a fuseprop.nn.Module, got {type(module).__name__}")
        if bucket_bytes is not None:
            if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, (int, np.integer)):
                raise TypeError(f"bucket_bytes must be an integer or None, got {type(bucket_bytes).__name__}")
            if bucket_bytes < 1:
                raise ValueError(f"bucket_bytes must be positive (None: one bucket), got {bucket_bytes}")
        self.timeout = _default_timeout() if timeout is None else _check_timeout(timeout)
        if comm is None:
            comm = _mpi().COMM_WORLD
        for method in ("Get_rank", "Get_size", "Iallreduce", "Ibcast", "Abort"):
            if not callable(getattr(comm, method, None)):
                raise TypeError(f"comm must be an mpi4py communicator (or a LocalComm), got {type(comm).__name__} "
                                f"without {method}()")
        self.module, self.comm = module, comm
        self._in_place = LocalComm.IN_PLACE if isinstance(comm, LocalComm) else _mpi().IN_PLACE
        self.rank, self.world_size = int(comm.Get_rank()), int(comm.Get_size())
        if module.device != "cpu":
            raise NotImplementedError("DataParallel trains on the CPU: build it over a model on the CPU "
                                      "(model.to('cpu'))")
        params = module.parameters()
        if not params:
            raise ValueError("module has no parameters to train")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("module holds a parameter twice (a shared layer); DataParallel needs each once")
        if len({p.dtype for p in params}) != 1:
            raise ValueError("the module's parameters must all have one dtype, got "
                             f"{sorted({str(p.dtype) for p in params})}")
        self.stats = dict(steps=0, step_seconds=0.0, comm_seconds=0.0)
        self.last_correct = self.last_count = 0
        self._layout(params, bucket_bytes)
        self._check_same_model(params)
        self.broadcast_parameters()

    # -- layout: one flat gradient buffer in backward order, cut into buckets
    def _layout(self, params, bucket_bytes):
        dtype = params[0].dtype
        item = dtype.itemsize
        align = _ALIGN // item
        offsets, buckets = {}, []  # buckets: [first offset, end, [params]]
        end = -(-_EXTRAS // align) * align
        for p in reversed(params):  # the backward writes the output layer's gradients first
            at = -(-end // align) * align
            if not buckets or (bucket_bytes is not None and buckets[-1][2]
                               and (at + p.size - buckets[-1][0]) * item > bucket_bytes):
                buckets.append([0 if not buckets else buckets[-1][1], at, []])
            offsets[p] = at
            end = buckets[-1][1] = at + p.size
            buckets[-1][2].append(p)
        raw = np.zeros(end + align, dtype)
        skip = (-raw.ctypes.data % _ALIGN) // item
        self._flat = raw[skip:skip + end]
        self._extras = self._flat[:_EXTRAS]
        self._grads = self._flat[-(-_EXTRAS // align) * align:]
        for p, at in offsets.items():
            view = self._flat[at:at + p.size].reshape(p.shape)
            view[...] = p.grad
            p.grad = view  # the kernels write through .grad: from now on into the flat buffer
        self._views = [p.grad for p in params]
        self._buckets = [self._flat[lo:hi] for lo, hi, _ in buckets]
        self._bucket_sizes = [len(ps) for _, _, ps in buckets]
        self._bucket_of = {id(p): i for i, (_, _, ps) in enumerate(buckets) for p in ps}
        self._module_buckets = {}
        self._params = params

    @property
    def grad_buffer(self) -> np.ndarray:
        """The flat buffer every param.grad is a view into (first the count, loss, right and judged predictions of the last step)."""
        return self._flat

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    # -- collectives with deadlines
    def _wait(self, requests, what: str) -> float:
        """Test the requests until all are complete (the seconds that took), or abort at the deadline."""
        start = time.perf_counter()
        deadline = start + self.timeout
        pending = list(requests)
        while pending:
            pending = [r for r in pending if not r.Test()]
            if not pending:
                break
            now = time.perf_counter()
            if now > deadline:
                self._abort(f"{what} did not complete within {self.timeout:g} s")
            # MPI moves a non-blocking collective on only inside MPI calls, one fragment at a time: poll
            # without sleeping (yielding the core to a rank that shares it) for the first 0.1 s, then
            # every 0.2 ms, which costs no CPU to speak of while another rank is late or hangs.
            if now - start < 0.1:
                os.sched_yield()
            else:
                time.sleep(2e-4)
        return time.perf_counter() - start

    def _abort(self, problem: str):
        message = (f"fuseprop.distributed: rank {self.rank} of {self.world_size}: {problem}: another rank has "
                   "died, hangs, or called a different collective; aborting the job (the limit is "
                   "DataParallel(timeout=...) or $FUSEPROP_DIST_TIMEOUT)")
        print(message, file=sys.stderr, flush=True)
        self.comm.Abort(1)  # MPI ends every rank here; a LocalComm returns, and the error is raised
        raise DistributedError(message)

    def broadcast_parameters(self, root: int = 0):
        """Overwrite every rank's parameters (and buffers) with root's (in place)."""
        self._wait([self.comm.Ibcast(p.data, root=root) for p in self._params], "the broadcast of the parameters")
        self.broadcast_buffers(root)

    def broadcast_buffers(self, root: int = 0):
        """Overwrite every rank's buffers (BatchNorm's running statistics) with root's, as torch's DDP does
        (broadcast_buffers=True): each rank's batch norm sees only its part of the batch, so their running
        statistics would drift apart; after every step all ranks hold rank 0's."""
        buffers = self.module.buffers()
        if buffers:
            self._wait([self.comm.Ibcast(b, root=root) for b in buffers], "the broadcast of the buffers")

    def _check_same_model(self, params):
        shapes = ";".join(f"{p.shape}" for p in params) + str(params[0].dtype)
        mine = np.array([len(params), sum(p.size for p in params), zlib.crc32(shapes.encode())], np.int64)
        root = mine.copy()
        self._wait([self.comm.Ibcast(root, root=0)], "the check that every rank has the same model")
        differs = np.array([int((mine != root).any())], np.int64)
        self._wait([self.comm.Iallreduce(self._in_place, differs)], "the check that every rank has the same model")
        if differs[0]:
            raise ValueError(f"the ranks' models differ: {int(differs[0])} rank(s) have parameters other than rank 0's "
                             f"(this rank {self.rank}: {mine[0]} parameters of {mine[1]} values; rank 0: {root[0]} of "
                             f"{root[1]}; shapes and dtype must match too)")

    def shared_seed(self) -> int:
        """A seed drawn on rank 0 (from fuseprop's generator) and given to every rank."""
        seed = np.array([_random.default_generator().integers(2**62) if self.rank == 0 else 0], np.int64)
        self._wait([self.comm.Ibcast(seed, root=0)], "the broadcast of the shuffling seed")
        return int(seed[0])

    def allreduce(self, values) -> np.ndarray:
        """The sum over ranks of a small float64 array (metrics)."""
        buf = np.array(values, np.float64)
        self._wait([self.comm.Iallreduce(self._in_place, buf)], "an all-reduce of metrics")
        return buf

    # -- the step
    def _ready(self, module):
        """Sequential._backward's callback: module's gradients are written; start what is complete."""
        buckets = self._module_buckets.get(module)
        if buckets is None:  # the buckets of its parameters, looked up once per module
            buckets = self._module_buckets[module] = [self._bucket_of[id(p)] for p in module.parameters()
                                                      if id(p) in self._bucket_of]
        for i in buckets:
            self._pending[i] -= 1
        self._start(all_buckets=False)

    def _start(self, all_buckets: bool):
        """Start, in order (every rank must issue the same collectives in the same order), the buckets
        whose gradients are all written (or all of them); and let MPI move the started ones along."""
        start = time.perf_counter()
        while self._next < len(self._buckets) and (all_buckets or self._pending[self._next] == 0):
            self._requests.append(self.comm.Iallreduce(self._in_place, self._buckets[self._next]))
            self._next += 1
        for r in self._requests:
            r.Test()  # MPI progresses non-blocking collectives inside MPI calls
        self._comm_seconds += time.perf_counter() - start

    def train_step(self, x, y, loss_fn, optimizer) -> float:
        """One data-parallel step on this rank's part (x, y) of the global batch: returns the global
        batch's loss (every rank returns the same). Every rank must call it, with its own part (an empty
        part is allowed as long as some rank has samples). ``last_correct`` / ``last_count``: the global
        batch's correct predictions (CrossEntropyLoss) and samples."""
        value, self.last_correct, _, self.last_count = self._step(x, y, loss_fn, optimizer)
        return value

    def _step(self, x, y, loss_fn, optimizer, l1=0.0, l2=0.0, clip_norm=None, clip_value=None, record=None):
        """(global loss with penalties, global right, judged and sample count); fit calls it with its extras. The
        step is the engine's per-layer step, with the all-reduce added through its hooks (_AllReduce)."""
        start = time.perf_counter()
        x = np.asarray(x)
        if x.ndim < 1 or len(x) != len(y):
            raise ValueError(f"x and y must have the same number of samples, got shapes {x.shape} and {np.shape(y)}")
        if any(p.grad is not v for p, v in zip(self._params, self._views)):
            raise RuntimeError("a parameter's .grad was replaced (Module.to or an assignment), so it is no longer a "
                               "view into the all-reduced buffer: build the DataParallel again")
        # A loss object keeps the gradient of its last call for backward(): ranks that are threads of one
        # process (run_local) and were handed the same object would read each other's. Each step uses its
        # own shallow copy (the settings as they are now; about a microsecond).
        loss_fn = copy.copy(loss_fn)
        self._extras.fill(0)  # the gradients are zeroed by the step (each param.grad is a view of the buffer)
        self._pending, self._next, self._requests, self._comm_seconds = list(self._bucket_sizes), 0, [], 0.0
        hooks = _AllReduce(self, loss_fn, record)
        value, _ = per_layer_step(self.module, x, y, loss_fn, optimizer, l1=l1, l2=l2, clip_norm=clip_norm,
                                  clip_value=clip_value, hooks=hooks)
        self.broadcast_buffers()
        self.stats["steps"] += 1
        self.stats["step_seconds"] += time.perf_counter() - start
        self.stats["comm_seconds"] += self._comm_seconds
        return value, hooks.right, hooks.judged, hooks.count

    # -- the model's face
    def __call__(self, x):
        return self.module(x)

    def parameters(self):
        return self.module.parameters()

    def state_dict(self):
        return self.module.state_dict()

    def fit(self, x, y, **kwargs):
        """fuseprop.training.fit over every rank: the same x and y on every rank, batch_size global."""
        return self.module.fit(x, y, distributed=self, **kwargs)

    def evaluate(self, x, y, loss=None, batch_size: int = 256) -> dict:
        """training.evaluate over the whole (x, y), each rank taking a contiguous part; the sums are
        all-reduced, so every rank returns the same."""
        loss_fn = loss if loss is not None else losses.default_for(y)
        size, extra = divmod(len(x), self.world_size)
        lo = self.rank * size + min(self.rank, extra)
        hi = lo + size + (self.rank < extra)
        sums = [0.0, 0.0, 0.0]
        if hi > lo:
            part = self.module.evaluate(x[lo:hi], y[lo:hi], loss=loss_fn, batch_size=batch_size)
            scale = hi - lo if loss_fn.reduction == "mean" else 1
            sums = [part["loss"] * scale, part.get("accuracy", 0.0) * (hi - lo), hi - lo]
        total, correct, count = self.allreduce(sums)
        result = {"loss": total / count if loss_fn.reduction == "mean" else total}
        if isinstance(loss_fn, losses.CrossEntropyLoss):
            result["accuracy"] = round(correct) / count  # whole samples: the sum is an integer
        elif isinstance(loss_fn, losses.BCEWithLogitsLoss):
            result["accuracy"] = correct / count
        return result

    def __repr__(self):
        return (f"DataParallel(rank {self.rank} of {self.world_size}, {self.bucket_count} bucket(s), "
                f"timeout {self.timeout:g} s,\n  {self.module!r})")


def resolve(model, distributed) -> DataParallel:
    """fit's distributed= argument as a DataParallel over model."""
    if distributed is True:
        return DataParallel(model)
    if isinstance(distributed, DataParallel):
        if distributed.module is not model:
            raise ValueError("distributed is a DataParallel over another model than the one being fitted")
        return distributed
    raise TypeError(f"distributed must be True, False or a fuseprop.distributed.DataParallel, "
                    f"got {type(distributed).__name__}")


# -- the in-process stand-in for MPI


def _is_module(obj) -> bool:
    """A fuseprop.nn.Module, known by what the step and fit call on it (this package sits below fuseprop.nn)."""
    return all(callable(getattr(obj, name, None)) for name in
               ("named_parameters", "parameters", "zero_grad", "_backward", "fit", "evaluate", "state_dict"))


class _AllReduce(StepHooks):
    """DataParallel's hooks into the per-layer step.

    With a "mean" loss each rank's gradient is scaled by its sample count n_r before the sum and the sum
    divided by the global count afterwards: sum_r n_r * mean_r / sum_r n_r is the mean over the global
    batch, also for unequal or empty parts. The count, the loss and the right and judged predictions travel in the
    first bucket (written before the backward starts it), so the loss the step checks and returns is the
    global batch's."""

    needs_samples = False  # a rank's part of a short global batch may be empty
    check_local_loss = False  # the global loss exists only after the all-reduce

    def __init__(self, ddp, loss_fn, record):
        self.ddp, self.record = ddp, record
        self.mean = loss_fn.reduction == "mean"
        self.loss_fn = loss_fn
        self.module_done = ddp._ready  # starts each bucket's all-reduce as soon as its gradients are written
        self.right = self.judged = self.count = 0

    def output_gradient(self, grad, out, y, loss):
        n = len(out)
        right, judged = self.loss_fn._hits(out, self.loss_fn._target(y, out.dtype, out.shape))
        self.ddp._extras[:] = (n, loss * n if self.mean else loss, right, judged)
        return grad * grad.dtype.type(n) if self.mean else grad

    def gradients_ready(self, loss):
        ddp = self.ddp
        ddp._start(all_buckets=True)
        ddp._comm_seconds += ddp._wait(ddp._requests, f"the all-reduce of the gradients (step {ddp.stats['steps'] + 1})")
        count, value, right, judged = (float(v) for v in ddp._extras)
        if count == 0:
            raise ValueError("every rank's part of the batch is empty")
        if self.mean:
            np.divide(ddp._grads, ddp._grads.dtype.type(count), out=ddp._grads)
            value /= count
        self.right, self.judged, self.count = int(round(right)), int(round(judged)), int(round(count))
        return value

    def gradients_final(self):
        if self.record is not None:
            self.record()
