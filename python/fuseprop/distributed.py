"""Data-parallel training over MPI (mpi4py): several processes, on one machine or several, train one
model as one process would on the same global batches.

    mpirun -n 2 python -m fuseprop train --distributed          # or, in your own script:
    model.fit(x, y, ..., distributed=True)                       # or DataParallel(model).fit(x, y, ...)

How a step runs on each rank (``DataParallel.train_step``; ``fit(distributed=...)`` calls the same):
  1. Every rank holds the whole model; ``DataParallel(model)`` broadcasts rank 0's parameters once.
  2. ``fit``'s batch_size is the GLOBAL batch. Every rank draws the same shuffled order each epoch
     (same seed: rank 0's is broadcast when fit has none) and takes its part of every global batch
     (``datasets.batches(..., shard=(rank, size))``: contiguous, sizes differing by at most one, so a
     short last batch leaves the higher ranks one sample fewer, or none).
  3. Forward and loss on the local part; backward layer by layer from the output. All gradients live in
     ONE flat buffer (each ``param.grad`` is a view into it, in backward order) cut into buckets of
     about ``bucket_bytes``; a bucket's all-reduce (``Iallreduce``, non-blocking) starts as soon as the
     backward has written all its gradients, while the layers before it are still being differentiated.
  4. With a "mean" loss each rank's gradient is scaled by its sample count n_r before the sum and the
     sum divided by the global count afterwards: sum_r n_r * mean_r / sum_r n_r is the mean over the
     global batch, also for unequal or empty parts. (A "sum" loss is summed as it is.) The count, the
     loss and the correct predictions travel in the first bucket, so the reported loss and accuracy are
     those of the global batch, with no extra message.
  5. After every bucket has completed: penalties, clipping, the finiteness checks and ``optimizer.step()``,
     identical on every rank (the kernels are deterministic), so the replicas stay equal.

Faults. Every wait has a deadline (``timeout``, default 60 s or ``$FUSEPROP_DIST_TIMEOUT``): a collective
that does not complete in time (a rank died, hangs, or called a different collective) prints which rank
waited for what on stderr, aborts the communicator (``MPI_Abort``: the launcher ends every rank) and
raises DistributedError. ``mpirun`` itself ends the job when a rank is killed.

Without MPI: ``run_local(n, fn)`` runs fn(comm) on n threads, each with an in-process stand-in
communicator (``LocalComm``: the few mpi4py calls used here), to test training loops and this module.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import threading
import time
import zlib

import numpy as np

from . import losses, nn

__all__ = ["DataParallel", "DistributedError", "LocalComm", "run_local", "threads_per_rank", "mpirun_command",
           "DEFAULT_TIMEOUT", "DEFAULT_BUCKET_BYTES"]

DEFAULT_TIMEOUT = 60.0  # seconds a rank waits for the others at any one collective; $FUSEPROP_DIST_TIMEOUT overrides
DEFAULT_BUCKET_BYTES = 256 * 1024
_ALIGN = 64  # bytes: every gradient view starts on its own cache line
_EXTRAS = 3  # [sample count, loss sum, correct] ahead of the gradients, in the first bucket


class DistributedError(RuntimeError):
    """A collective did not complete in time (a rank died or hangs), or the ranks do not agree."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("fuseprop.distributed needs mpi4py and an MPI library: pip install 'fuseprop[mpi]' and, "
                          "on Debian or Ubuntu, apt-get install openmpi-bin libopenmpi-dev") from e
    return MPI


def _default_timeout() -> float:
    value = os.environ.get("FUSEPROP_DIST_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        return _check_timeout(float(value), "FUSEPROP_DIST_TIMEOUT")
    except ValueError:
        raise ValueError(f"FUSEPROP_DIST_TIMEOUT must be a positive number of seconds, got {value!r}") from None


def _check_timeout(value, name="timeout") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def threads_per_rank(comm=None) -> int:
    """The kernel threads each rank should use: the CPUs this process may run on, shared among the
    ranks on this machine (mpirun binds each rank to one core by default: then 1)."""
    MPI = _mpi()
    comm = comm if comm is not None else MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks_here = local.Get_size()
    finally:
        local.Free()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // ranks_here) if cpus > 1 else 1


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
        if not isinstance(module, nn.Module):
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
        """The flat buffer every param.grad is a view into (first the count, loss and correct of the last step)."""
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
        """Overwrite every rank's parameters with root's (in place)."""
        self._wait([self.comm.Ibcast(p.data, root=root) for p in self._params], "the broadcast of the parameters")

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
        from . import _random
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
        value, self.last_correct, self.last_count = self._step(x, y, loss_fn, optimizer)
        return value

    def _step(self, x, y, loss_fn, optimizer, l1=0.0, l2=0.0, clip_norm=None, clip_value=None, record=None):
        """(global loss with penalties, global correct, global count); fit calls it with its extras."""
        from .training import _regularise
        start = time.perf_counter()
        model = self.module
        x = np.asarray(x)
        if x.ndim < 1 or len(x) != len(y):
            raise ValueError(f"x and y must have the same number of samples, got shapes {x.shape} and {np.shape(y)}")
        n = len(x)
        if any(p.grad is not v for p, v in zip(self._params, self._views)):
            raise RuntimeError("a parameter's .grad was replaced (Module.to or an assignment), so it is no longer a "
                               "view into the all-reduced buffer: build the DataParallel again")
        # A loss object keeps the gradient of its last call for backward(): ranks that are threads of one
        # process (run_local) and were handed the same object would read each other's. Each step uses its
        # own shallow copy (the settings as they are now; about a microsecond).
        loss_fn = copy.copy(loss_fn)
        mean = loss_fn.reduction == "mean"
        self._flat.fill(0)
        self._pending, self._next, self._requests, self._comm_seconds = list(self._bucket_sizes), 0, [], 0.0
        if n:
            out = model(x)
            value = loss_fn(out, y)
            correct = int((out.argmax(1) == np.asarray(y)).sum()) if isinstance(loss_fn, losses.CrossEntropyLoss) else 0
            self._extras[:] = (n, value * n if mean else value, correct)
            grad = loss_fn.backward()
            if mean:
                grad = grad * grad.dtype.type(n)  # sum over ranks of n_r * mean_r, divided by sum n_r below
            if isinstance(model, nn.Sequential):
                model._backward(grad, need_input_grad=False, done=self._ready)
            else:
                model.backward(grad)
        self._start(all_buckets=True)
        what = f"the all-reduce of the gradients (step {self.stats['steps'] + 1})"
        self._comm_seconds += self._wait(self._requests, what)
        count, value, correct = (float(v) for v in self._extras)
        if count == 0:
            raise ValueError("every rank's part of the batch is empty")
        if mean:
            np.divide(self._grads, self._grads.dtype.type(count), out=self._grads)
            value /= count
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value}; the weights were not updated")
        value += _regularise(self._params, l1, l2, clip_value, clip_norm)
        if record is not None:
            record()
        if not np.isfinite(self._grads).all():
            raise FloatingPointError("a gradient is not finite; the weights were not updated")
        optimizer.step()
        for p in self._params:
            if not np.isfinite(p.data).all():
                raise FloatingPointError(f"the optimizer update made {p.name or 'a parameter'} non-finite (is the "
                                         "learning rate too large?); the weights were overwritten")
        self.stats["steps"] += 1
        self.stats["step_seconds"] += time.perf_counter() - start
        self.stats["comm_seconds"] += self._comm_seconds
        return value, int(round(correct)), int(round(count))

    # -- the model's face
    def __call__(self, x):
        return self.module(x)

    def parameters(self):
        return self.module.parameters()

    def state_dict(self):
        return self.module.state_dict()

    def fit(self, x, y, **kwargs):
        """fuseprop.training.fit over every rank: the same x and y on every rank, batch_size global."""
        from .training import fit
        return fit(self.module, x, y, distributed=self, **kwargs)

    def evaluate(self, x, y, loss=None, batch_size: int = 256) -> dict:
        """training.evaluate over the whole (x, y), each rank taking a contiguous part; the sums are
        all-reduced, so every rank returns the same."""
        from .training import _default_loss, evaluate
        loss_fn = loss if loss is not None else _default_loss(y)
        size, extra = divmod(len(x), self.world_size)
        lo = self.rank * size + min(self.rank, extra)
        hi = lo + size + (self.rank < extra)
        sums = [0.0, 0.0, 0.0]
        if hi > lo:
            part = evaluate(self.module, x[lo:hi], y[lo:hi], loss=loss_fn, batch_size=batch_size)
            scale = hi - lo if loss_fn.reduction == "mean" else 1
            sums = [part["loss"] * scale, part.get("accuracy", 0.0) * (hi - lo), hi - lo]
        total, correct, count = self.allreduce(sums)
        result = {"loss": total / count if loss_fn.reduction == "mean" else total}
        if isinstance(loss_fn, losses.CrossEntropyLoss):
            result["accuracy"] = round(correct) / count
        return result

    def __repr__(self):
        return (f"DataParallel(rank {self.rank} of {self.world_size}, {self.bucket_count} bucket(s), "
                f"timeout {self.timeout:g} s,\n  {self.module!r})")


def _resolve(model, distributed) -> DataParallel:
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

class _InPlace:
    def __repr__(self):
        return "LocalComm.IN_PLACE"


class _Group:
    """What the LocalComms of one run_local share: collectives by sequence number, and an abort flag."""

    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.slots = {}  # sequence number -> {"what", "data": {rank: array or None}, "taken": set}
        self.aborted = None  # (rank, error code)


class LocalComm:
    """An in-process stand-in for an mpi4py communicator, one per thread (see run_local), with the calls
    fuseprop.distributed makes: Get_rank, Get_size, Iallreduce (op SUM), Ibcast, Allreduce, Bcast,
    Barrier, Abort; requests have Test and Wait. As MPI requires, the ranks must issue the same
    collectives in the same order: a mismatch raises DistributedError. Sums run in rank order, so
    every rank gets the same bits. Abort does not end the process: every rank's next Test raises."""

    IN_PLACE = _InPlace()
    SUM = "SUM"

    def __init__(self, group: _Group, rank: int):
        self._group, self._rank, self._seq = group, rank, 0

    def Get_rank(self) -> int:
        return self._rank

    def Get_size(self) -> int:
        return self._group.size

    def _post(self, what, data, target, root=0):
        """Contribute data to this rank's next collective; the request copies the result into target."""
        g = self._group
        with g.cond:
            if g.aborted:
                raise DistributedError(f"the communicator was aborted by rank {g.aborted[0]}")
            slot = g.slots.setdefault(self._seq, {"what": what, "data": {}, "taken": set()})
            if slot["what"] != what:
                raise DistributedError(f"collective {self._seq}: rank {self._rank} called {what}, another rank "
                                       f"{slot['what']}")
            slot["data"][self._rank] = np.array(data, copy=True) if data is not None else None
            g.cond.notify_all()
        request = _LocalRequest(self, self._seq, what, target, root)
        self._seq += 1
        return request

    def Iallreduce(self, sendbuf, recvbuf, op=SUM):
        if op != self.SUM:
            raise NotImplementedError("LocalComm.Iallreduce supports op=SUM only")
        data = recvbuf if sendbuf is self.IN_PLACE else sendbuf
        return self._post(("Iallreduce", np.asarray(recvbuf).dtype.str, np.shape(recvbuf)), data, recvbuf)

    def Ibcast(self, buf, root=0):
        return self._post(("Ibcast", np.asarray(buf).dtype.str, np.shape(buf), root),
                          buf if self._rank == root else None, buf, root)

    def Allreduce(self, sendbuf, recvbuf, op=SUM):
        self.Iallreduce(sendbuf, recvbuf, op).Wait()

    def Bcast(self, buf, root=0):
        self.Ibcast(buf, root).Wait()

    def Barrier(self):
        self.Iallreduce(self.IN_PLACE, np.zeros(1)).Wait()

    def Abort(self, errorcode=1):
        g = self._group
        with g.cond:
            g.aborted = g.aborted or (self._rank, errorcode)
            g.cond.notify_all()


class _LocalRequest:
    def __init__(self, comm, seq, what, target, root):
        self._comm, self._seq, self._what, self._target, self._root = comm, seq, what, target, root
        self._done = False

    def Test(self) -> bool:
        if self._done:
            return True
        g = self._comm._group
        with g.cond:
            if g.aborted:
                raise DistributedError(f"the communicator was aborted by rank {g.aborted[0]} "
                                       f"(error code {g.aborted[1]})")
            slot = g.slots[self._seq]
            if len(slot["data"]) < g.size:
                return False
            if self._what[0] == "Iallreduce":
                total = slot["data"][0].copy()
                for r in range(1, g.size):
                    total += slot["data"][r]
            else:
                total = slot["data"][self._root]
            np.copyto(self._target, total)
            slot["taken"].add(self._comm._rank)
            if len(slot["taken"]) == g.size:
                del g.slots[self._seq]
        self._done = True
        return True

    def Wait(self):
        g = self._comm._group
        while not self.Test():
            with g.cond:
                g.cond.wait(0.01)


def run_local(world_size: int, fn, timeout: float = 120.0) -> list:
    """fn(comm) on world_size threads, each with its own LocalComm of one group; returns their results
    in rank order. The first exception (by rank) is raised once every thread has ended; a thread still
    running after timeout seconds raises DistributedError (it keeps running: a daemon thread)."""
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    timeout = _check_timeout(timeout)
    group = _Group(int(world_size))
    results, errors = [None] * world_size, [None] * world_size

    def body(rank):
        try:
            results[rank] = fn(LocalComm(group, rank))
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            errors[rank] = e

    threads = [threading.Thread(target=body, args=(r,), daemon=True, name=f"rank {r}") for r in range(world_size)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        raise DistributedError(f"run_local: {', '.join(alive)} still running after {timeout:g} s")
    for e in errors:
        if e is not None:
            raise e
    return results


def mpirun_command(ranks: int, mpirun: str = "mpirun") -> list:
    """The mpirun argv that starts `ranks` processes on this machine, with what Open MPI needs in a
    container: --oversubscribe (more ranks than cores), --allow-run-as-root when root, and no
    single-copy shared-memory transfers (CMA needs ptrace rights that containers often lack).
    Append your program: mpirun_command(2) + [sys.executable, "train.py"]."""
    import shutil
    import subprocess
    path = shutil.which(mpirun)
    if path is None:
        raise FileNotFoundError(f"{mpirun} not found: install Open MPI (Debian: apt-get install openmpi-bin "
                                "libopenmpi-dev)")
    argv = [path, "-n", str(int(ranks))]
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "Open RTE" in version:
        argv += ["--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.append("--allow-run-as-root")
    return argv
