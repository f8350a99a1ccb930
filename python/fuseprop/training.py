"""The training loop, shaped like keras: ``model.fit`` / ``evaluate`` / ``predict``, callbacks
(EarlyStopping, learning-rate schedules) and regularisation (L1, L2, gradient clipping).

Which step fit runs. Each step is ONE native call (Sequential's fused train_step) whenever nothing
per-layer is needed: a Sequential the fused plan accepts (see fuseprop._train_plan), l1 == l2 == 0
and no clip_grad_value. Augmentation (it transforms the batch before the step), learning-rate
schedules (they change ``lr`` only), the optimizer's own ``weight_decay`` and clip_grad_norm (the
native step scales the gradients by the global norm between backward and update) keep the step
fused. Dropout, l1, l2 and clip_grad_value take the per-layer path: forward, loss, backward,
penalties, clipping and ``optimizer.step()`` around the same kernels.

On the CPU, when the fused step runs and nothing needs Python per batch (no augment, no grad_norm_history,
no callback with its own on_batch_end except the built-in LR schedules), an epoch runs as a few native calls
of many steps each (_NativeEpochs, TrainPlan.run_batches): the same order, steps, lrs, losses and failures
as the per-batch loop, bit for bit, with no Python between batches.

With distributed=..., every step runs layer by layer on each rank's part of the global batch, with the
gradients all-reduced between backward and update (fuseprop.distributed); penalties and clipping apply
to the averaged gradients.

Accuracy (CrossEntropyLoss) comes from the step's own logits, with no second forward: the fused plan
counts argmax == label natively (``train_plan.correct``); the per-layer path counts on its logits.

Penalties act on weights only (parameters with ndim >= 2; biases are not penalised, as keras'
kernel_regularizer), and the reported loss includes them:
  l1: loss += l1 * sum|w|        grad += l1 * sign(w)
  l2: loss += l2 / 2 * sum w**2  grad += l2 * w   (coupled decay: SGD's or Adam's weight_decay=l2, on weights only)
For decoupled decay, or to keep the fused step, use the optimizer's weight_decay (AdamW) instead.

Reported losses are per-sample means over the epoch (batch losses weighted by batch size).
"""
from __future__ import annotations

import copy

import math
import sys
import time
import warnings

import numpy as np

from . import _C, _random, cuda, datasets, losses, nn, optim
from .diagnostics import GradientWarning

__all__ = ["History", "Callback", "EarlyStopping", "LRScheduler", "StepLR", "CosineAnnealingLR", "LinearWarmup",
           "fit", "evaluate", "predict"]


class History:
    """What fit returns: ``history`` {"loss": [...], "accuracy": [...], "val_loss": [...], ...} one value
    per epoch, ``epoch`` (0-based epoch numbers), ``params`` (epochs, steps, batch_size, samples, verbose,
    fused) and, with grad_norm_history=True, ``grad_norms`` {layer name: [L2 norm of its gradient per step]}."""

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []
        self.params: dict = {}
        self.grad_norms: dict[str, list] = {}

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


class Callback:
    """Hooks fit calls. ``self.model`` is set before on_train_begin; set ``self.stop_training = True``
    to end fit after the current epoch. ``logs`` holds the epoch's metrics ("loss", "val_loss", ...)."""

    stop_training = False
    model = None

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than min_delta for ``patience`` epochs; with
    restore_best_weights, the weights of the best epoch are put back when training ends.
    mode "auto": "max" for metrics whose name contains "acc", else "min"."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 restore_best_weights: bool = True, mode: str = "auto"):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(float(min_delta))
        self.restore_best_weights = restore_best_weights
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode

    def on_train_begin(self, logs=None):
        self.wait, self.best, self.best_epoch, self.best_weights = 0, None, None, None
        self.stopped_epoch, self.stop_training = None, False

    def _improved(self, value) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"EarlyStopping: {self.monitor!r} is not among the metrics {sorted(logs or {})}",
                          RuntimeWarning, stacklevel=2)
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch, self.stop_training = epoch, True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)  # in place: a fused plan stays valid


class LRScheduler(Callback):
    """Sets each param group's lr to ``base_lr * factor`` (``_lr``) at t = 0 and after every ``step()``,
    as torch.optim.lr_scheduler does. fit calls ``step()`` after every epoch (interval="epoch") or
    after every batch (interval="step")."""

    def __init__(self, optimizer, interval: str = "epoch"):
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"{type(self).__name__} needs a fuseprop optimizer, got {type(optimizer).__name__}")
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}")
        self.optimizer, self.interval = optimizer, interval
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def _lr(self, base_lr: float, t: int) -> float:
        raise NotImplementedError

    def _apply(self):
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self._lr(base, self.last_epoch)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list:
        return [g["lr"] for g in self.optimizer.param_groups]

    def on_batch_end(self, batch, logs=None):
        if self.interval == "step":
            self.step()

    def on_epoch_end(self, epoch, logs=None):
        if self.interval == "epoch":
            self.step()


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (t // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, interval: str = "epoch"):
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, interval)

    def _lr(self, base_lr, t):
        return base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, interval: str = "epoch"):
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, interval)

    def _lr(self, base_lr, t):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """lr = base_lr * (start_factor + (1 - start_factor) * min(t, warmup) / warmup): torch's
    LinearLR(start_factor, end_factor=1, total_iters=warmup); warmup counts epochs or steps (interval)."""

    def __init__(self, optimizer, warmup: int, start_factor: float = 0.1, interval: str = "epoch"):
        if warmup < 1 or not 0.0 < start_factor <= 1.0:
            raise ValueError(f"need warmup >= 1 and start_factor in (0, 1], got {warmup} and {start_factor}")
        self.warmup, self.start_factor = int(warmup), float(start_factor)
        super().__init__(optimizer, interval)

    def _lr(self, base_lr, t):
        return base_lr * (self.start_factor + (1 - self.start_factor) * min(t, self.warmup) / self.warmup)


def _default_loss(y):
    return losses.CrossEntropyLoss() if np.asarray(y).dtype.kind in "iu" else losses.MSELoss()


def _prepare(model, x, y, loss_fn):
    """x in the model's dtype (one conversion up front, not one per batch); labels as int64."""
    dtype = next(iter(model.parameters())).dtype
    x = np.asarray(x)
    if x.dtype != dtype:
        x = nn.as_input(x, dtype, "x")
    y = np.ascontiguousarray(y, dtype=np.int64 if isinstance(loss_fn, losses.CrossEntropyLoss) else dtype)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of samples, got {len(x)} and {len(y)}")
    return x, y


def _per_layer_step(model, x, y, loss_fn, optimizer, l1, l2, clip_norm, clip_value, record):
    """One step layer by layer, with the penalties and clipping: (loss incl. penalties, logits)."""
    model.zero_grad()
    out = model(x)
    value = loss_fn(out, y)
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss is {value}; the weights were not updated")
    grad = loss_fn.backward()
    if isinstance(model, nn.Sequential):
        model._backward(grad, need_input_grad=False)
    else:
        model.backward(grad)
    params = model.parameters()
    value += _regularise(params, l1, l2, clip_value, clip_norm)
    record()
    if not all(np.isfinite(p.grad).all() for p in params):
        raise FloatingPointError("a gradient is not finite; the weights were not updated")
    optimizer.step()
    for name, p in model.named_parameters():  # as Sequential.train_step: an overflowing update is never silent
        if not np.isfinite(p.data).all():
            raise FloatingPointError(f"the optimizer update made {name} non-finite (is the learning rate too "
                                     "large?); the weights were overwritten: reload them from a checkpoint")
    return value, out


def _regularise(params, l1, l2, clip_value, clip_norm) -> float:
    """Add the L1/L2 penalties' gradients to the weights' (in place), then clip; returns the penalty's value."""
    penalty = 0.0
    for p in params:
        if p.data.ndim >= 2 and l1:
            p.grad += p.dtype.type(l1) * np.sign(p.data)
            penalty += l1 * float(np.abs(p.data).sum())
        if p.data.ndim >= 2 and l2:
            p.grad += p.dtype.type(l2) * p.data
            penalty += 0.5 * l2 * float(np.dot(p.data.ravel(), p.data.ravel()))
    if clip_value is not None:
        nn.utils.clip_grad_value_(params, clip_value)
    if clip_norm is not None:
        nn.utils.clip_grad_norm_(params, clip_norm)
    return penalty


def _layer_grads(model):
    """{layer name: [its parameters]}: "0.weight" and "0.bias" belong to layer "0"."""
    layers = {}
    for name, p in model.named_parameters():
        layers.setdefault(name.rpartition(".")[0] or name, []).append(p)
    return layers


def _check_grad_norms(norms: dict, steps: int, epoch: int):
    for layer, values in norms.items():
        recent = np.asarray(values[-steps:])
        if not np.isfinite(recent).all() or recent.max() > 1e3:
            warnings.warn(f"exploding gradients in layer {layer!r} in epoch {epoch}: max norm {recent.max():.3g} "
                          "(lower the learning rate or clip the gradients)", GradientWarning, stacklevel=3)
        elif np.median(recent) < 1e-7:
            warnings.warn(f"vanishing gradients in layer {layer!r} in epoch {epoch}: median norm "
                          f"{np.median(recent):.3g}", GradientWarning, stacklevel=3)


def _format(epoch: int, epochs: int, logs: dict, samples_per_s: float, seconds: float) -> str:
    parts = [f"epoch {epoch}/{epochs}"]
    for key, value in logs.items():
        parts.append(f"{key} {value:.2%}" if key.endswith("accuracy") else f"{key} {value:.4f}")
    return "  ".join(parts + [f"{samples_per_s:,.0f} samples/s", f"{seconds:.2f} s"])


def _progress_bar(verbose: int, total: int, desc: str):
    """A tqdm bar when verbose == 1, stdout is a terminal and tqdm is installed; else None."""
    if verbose != 1 or not sys.stdout.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=True, file=sys.stdout)


def fit(model, x, y, *, loss=None, optimizer=None, epochs: int = 1, batch_size: int = 32, validation_data=None,
        validation_split: float = 0.0, callbacks=None, verbose: int = 1, seed=None, shuffle: bool = True,
        drop_last: bool = False, augment=None, l1: float = 0.0, l2: float = 0.0, clip_grad_norm=None,
        clip_grad_value=None, grad_norm_history: bool = False, distributed=False) -> History:
    """Train ``model`` on (x, y) for ``epochs`` epochs of mini-batches; returns a History.

    loss: a fuseprop loss (default CrossEntropyLoss for integer y, else MSELoss); optimizer: default
    Adam(lr=1e-3). validation_data (x_val, y_val), or validation_split: the last fraction of (x, y),
    taken before shuffling, as keras. Batches are reshuffled every epoch from ``seed`` (default:
    fuseprop's generator). augment: a callable on each training batch of x (fuseprop.augment).
    callbacks: Callback objects (EarlyStopping, LR schedules). verbose: 0 silent, 1 a tqdm bar when
    stdout is a terminal and tqdm is installed, else (and for 2) one line per epoch. l1, l2,
    clip_grad_norm, clip_grad_value: see the module docstring. grad_norm_history: record each layer's
    gradient norm every step (of the gradient the update used: after clipping) in history.grad_norms and warn (GradientWarning) on vanishing or exploding
    gradients. The model is in train mode while fitting, eval mode while validating, and in its former
    mode afterwards.

    distributed: True (MPI.COMM_WORLD) or a fuseprop.distributed.DataParallel over this model: every
    rank calls fit with the same x, y and settings; batch_size is the global batch, of which each rank
    trains on its part; gradients are averaged over the global batch, so the result is one process's on
    the same batches (float rounding aside). Reported metrics are the global ones, printed by rank 0
    only. See fuseprop.distributed.
    """
    loss_fn = loss if loss is not None else _default_loss(y)
    optimizer = optimizer if optimizer is not None else optim.Adam(model.parameters())
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"need batch_size >= 1 and epochs >= 0, got {batch_size} and {epochs}")
    x, y = _prepare(model, x, y, loss_fn)
    ddp = None
    if distributed is not False and distributed is not None:
        from .distributed import _resolve  # here: it needs mpi4py, which only distributed training does
        ddp = _resolve(model, distributed)
        verbose = verbose if ddp.rank == 0 else 0
        if seed is None:
            seed = ddp.shared_seed()  # every rank must draw the same order
    if validation_data is None and validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
        cut = len(x) - int(len(x) * validation_split)
        x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
    elif validation_data is not None:
        validation_data = _prepare(model, *validation_data, loss_fn)  # converted once, not every epoch
    is_ce = isinstance(loss_fn, losses.CrossEntropyLoss)
    per_layer = bool(l1 or l2 or clip_grad_value is not None or clip_grad_norm == 0)  # native 0 means no clipping
    on_cuda = model.device == "cuda"
    if on_cuda and (per_layer or grad_norm_history):
        raise NotImplementedError("on CUDA, fit runs the whole step on the GPU: l1, l2, clip_grad_value and "
                                  "grad_norm_history need the CPU's per-layer path (use the optimizer's weight_decay "
                                  "and clip_grad_norm instead, or train on the CPU)")
    rng = np.random.default_rng(seed) if seed is not None else _random.default_generator()
    callbacks = list(callbacks or [])
    history = History()
    n = len(x)
    steps = n // batch_size if drop_last else math.ceil(n / batch_size)
    history.params = dict(epochs=epochs, steps=steps, batch_size=batch_size, samples=n, verbose=verbose)
    layers = _layer_grads(model) if grad_norm_history else {}
    history.grad_norms = {name: [] for name in layers}

    def record():
        for name, params in layers.items():
            history.grad_norms[name].append(math.sqrt(sum(float(np.dot(p.grad.ravel(), p.grad.ravel()))
                                                          for p in params)))

    # On the GPU without augmentation the data goes over once; each batch is then gathered there.
    device_data = (cuda.asarray(x), cuda.asarray(y)) if on_cuda and augment is None else None
    # On the CPU, with nothing per batch in Python, runs of many fused steps in one native call each.
    native = None
    if (_NATIVE_EPOCHS and ddp is None and not on_cuda and not per_layer and not layers and augment is None
            and isinstance(model, nn.Sequential) and isinstance(batch_size, (int, np.integer))
            and not isinstance(batch_size, bool)):
        native = _NativeEpochs(model, x, y, loss_fn, optimizer, int(batch_size), drop_last, clip_grad_norm)
    was_training = model.training
    for cb in callbacks:
        cb.model = model
        cb.on_train_begin()
    fused_steps = 0
    try:
        for epoch in range(epochs):
            model.train()
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            bar = _progress_bar(verbose, steps, f"epoch {epoch + 1}/{epochs}")
            start = time.perf_counter()
            total = correct = seen = first = 0
            if native is not None:  # the batches it leaves (none, unless it cannot start) run one by one below
                order = rng.permutation(n) if shuffle else None  # as datasets.batches draws it
                first, total, correct, seen = native.epoch(order, callbacks, bar)
                fused_steps += first
                batches = datasets._iterate(x, y, order, batch_size, native.stop, None, first)
            else:
                shard = (ddp.rank, ddp.world_size) if ddp is not None else None
                batches = _epoch_batches(x, y, batch_size, shuffle, drop_last, rng, device_data, shard)
            for b, (xb, yb) in enumerate(batches, first):
                if augment is not None and len(xb):
                    xb = augment(xb)
                if ddp is not None:  # the global batch's loss, correct predictions and size
                    value, right, m = ddp._step(xb, yb, loss_fn, optimizer, l1, l2, clip_grad_norm, clip_grad_value,
                                                record if layers else None)
                else:
                    value = None
                    if not per_layer and isinstance(model, nn.Sequential):
                        value = model._fused_step(xb, yb, loss_fn, optimizer, clip_grad_norm)
                    if value is not None:
                        fused_steps += 1
                        right = model.train_plan.correct if is_ce else 0
                        if layers:
                            record()
                    else:
                        if on_cuda:  # Sequential's train_step raised if it could not run there; other modules cannot
                            raise NotImplementedError(f"{type(model).__name__} cannot train on CUDA; a Sequential chain "
                                                      "can")
                        value, out = _per_layer_step(model, xb, yb, loss_fn, optimizer, l1, l2, clip_grad_norm,
                                                     clip_grad_value, record if layers else lambda: None)
                        right = int((out.argmax(1) == yb).sum()) if is_ce else 0
                    m = len(yb)
                total += value * (m if loss_fn.reduction == "mean" else 1)
                correct += right
                seen += m
                for cb in callbacks:
                    cb.on_batch_end(b)
                if bar is not None:
                    bar.update(1)
            train_seconds = time.perf_counter() - start
            logs = {"loss": total / seen if loss_fn.reduction == "mean" else total}
            if is_ce:
                logs["accuracy"] = correct / seen
            if validation_data is not None:
                kw = dict(loss=loss_fn, batch_size=max(batch_size, 256))
                val = evaluate(model, *validation_data, **kw) if ddp is None else ddp.evaluate(*validation_data, **kw)
                logs.update({"val_" + k: v for k, v in val.items()})
            seconds = time.perf_counter() - start
            history.epoch.append(epoch)
            for k, v in logs.items():
                history.history.setdefault(k, []).append(v)
            if layers:
                _check_grad_norms(history.grad_norms, b + 1, epoch + 1)
            line = _format(epoch + 1, epochs, logs, seen / train_seconds, seconds)
            if bar is not None:
                bar.set_postfix_str(line.split("  ", 1)[1])
                bar.close()
            elif verbose:
                print(line, flush=True)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if any(cb.stop_training for cb in callbacks):
                break
    finally:
        model.train(was_training)
    for cb in callbacks:
        cb.on_train_end()
    history.params["fused"] = fused_steps > 0
    history.params["world_size"] = ddp.world_size if ddp is not None else 1
    return history


def _epoch_batches(x, y, batch_size, shuffle, drop_last, rng, device_data, shard=None):
    """One epoch's (x, y) batches: from datasets.batches (this rank's part of each, with shard), or, with the
    data on the GPU, gathered there in the same order (the same indices from the same generator)."""
    if device_data is None:
        yield from datasets.batches(x, y, batch_size, shuffle, drop_last, rng, shard=shard)
        return
    xd, yd = device_data
    index = np.arange(len(x), dtype=np.int64)
    for ib, _ in datasets.batches(index, index, batch_size, shuffle, drop_last, rng):
        yield _C.cuda_gather_rows((xd, yd), np.ascontiguousarray(ib))


_NATIVE_EPOCHS = True  # False: fit steps batch by batch from Python even where native runs could (tests compare)
_RUN_SECONDS = 0.05  # about how long one native run of batches lasts: the bar moves, and Ctrl-C lands, between runs
_MAX_RUN = 1 << 14  # batches in one native run at most (the first run has min(16, _MAX_RUN))
_BUILTIN_SCHEDULES = (StepLR._lr, CosineAnnealingLR._lr, LinearWarmup._lr)


class _NativeEpochs:
    """fit's epochs as native runs of many fused steps (FusedStep.run_batches: the batches are gathered
    and stepped in C++, without the GIL), computing exactly what fit's per-batch loop computes: the same
    order, the same steps bit for bit, the same losses summed in the same order, the same lr at every step
    (schedules that step per batch are given as each step's lr), and on a refused step the same exception
    with everything left as that loop leaves it.

    An epoch runs batch by batch instead when anything in it needs Python per batch: a callback's
    on_batch_end other than an LR schedule with a built-in formula, a model, loss or optimizer with no fused
    form (or fused_train_step off), or data the fused step would refuse (it then raises as it does today)."""

    def __init__(self, model, x, y, loss_fn, optimizer, batch_size, drop_last, clip_grad_norm):
        self.model, self.loss_fn, self.optimizer, self.clip = model, loss_fn, optimizer, clip_grad_norm
        self.x, self.y, self.batch_size = x, y, batch_size
        n = len(x)
        self.stop = n - n % batch_size if drop_last else n
        self.steps = math.ceil(self.stop / batch_size)
        self.mean = loss_fn.reduction == "mean"
        self.run = min(16, _MAX_RUN)  # batches per native call, adapted to last about _RUN_SECONDS
        self._data = None  # (x, y) C-contiguous and aligned, for the native gather

    def epoch(self, order, callbacks, bar):
        """Runs the epoch's batches over order; returns (batches run, loss total, correct, samples) as
        fit's loop sums them. Runs none when the epoch must go batch by batch."""
        if self.steps == 0:
            return 0, 0, 0, 0
        schedules = _batch_schedules(callbacks)
        fused = self.model._fused_for(self.loss_fn, self.optimizer) if schedules is not None else None
        plan = fused.ready(self.model) if fused is not None else None
        if plan is None or not self._data_fits(fused):
            return 0, 0, 0, 0
        x, y = self._data
        bs, stop = self.batch_size, self.stop
        b = total = correct = seen = 0
        while b < self.steps:
            if b and fused.ready(self.model) is not plan:  # no Python ran but ours: nothing can have changed
                break
            count = min(self.run, self.steps - b)
            lrs, count = _batch_lrs(schedules, self.optimizer, count)
            started, done = time.perf_counter(), 0
            try:
                losses, right = fused.run_batches(self.model, x, y, order, bs, b, count, lrs, self.clip)
                done = count
            finally:  # also on a refused step: what the per-batch loop did after the batches that ran
                done = done or plan.batches_done
                if done:
                    _step_schedules(schedules, done)
                    if bar is not None:
                        bar.update(done)
            elapsed = time.perf_counter() - started
            for j, value in enumerate(losses.tolist(), b):
                m = min(bs, stop - j * bs)
                total += value * (m if self.mean else 1)
                seen += m
            correct += int(right.sum())
            b += count
            self.run = max(1, min(self.run * 8, _MAX_RUN, int(_RUN_SECONDS * count / max(elapsed, 1e-9))))
        return b, total, correct, seen

    def _data_fits(self, fused) -> bool:
        """x and y as the fused step takes them (else the per-batch loop raises as it does today); the
        arrays, made C-contiguous once, in self._data."""
        x, y, dtype = self.x, self.y, fused._dtype
        if x.dtype != dtype or x.ndim != 2 or x.shape[1] != fused._in_features:
            return False
        if fused._loss_kind == "cross_entropy":
            if y.dtype != np.int64 or y.ndim != 1 or y.min() < 0 or y.max() >= fused._out_features:
                return False
        elif y.dtype != dtype or y.ndim != 2 or y.shape[1] != fused._out_features:
            return False
        if self._data is None:
            self._data = tuple(np.require(a, None, ["C_CONTIGUOUS", "ALIGNED"]) for a in (x, y))
        return True


def _batch_schedules(callbacks):
    """The LR schedules whose on_batch_end steps them (interval "step"), in callback order, when every
    callback's on_batch_end is Callback's (nothing) or an LRScheduler's with a built-in formula; else None."""
    schedules = []
    for cb in callbacks:
        kind = type(cb)
        if "on_batch_end" in getattr(cb, "__dict__", ()):
            return None
        if kind.on_batch_end is Callback.on_batch_end:
            continue
        if not isinstance(cb, LRScheduler) or kind.on_batch_end is not LRScheduler.on_batch_end:
            return None
        if cb.interval != "step":
            continue
        if (kind._lr not in _BUILTIN_SCHEDULES or kind.step is not LRScheduler.step or kind._apply is not LRScheduler._apply
                or any(k in cb.__dict__ for k in ("_lr", "step", "_apply"))):
            return None
        schedules.append(cb)
    return schedules


def _batch_lrs(schedules, optimizer, count):
    """(lrs, count): lrs (count, param groups) float64, the lr of each group at each of the next count
    steps as the schedules set them after every step (row 0: the lrs now), or None when no schedule steps
    per batch. count shrinks to the steps before the first whose lr a schedule cannot give (its formula
    raises) or the fused step would refuse: the per-batch loop then meets that as it does today."""
    if not schedules:
        return None, count
    groups = optimizer.param_groups
    row = [g["lr"] for g in groups]
    rows = [list(row)]
    try:
        for j in range(1, count):
            for s in schedules:  # each schedule's whole round, as its step() would run it
                lrs = [s._lr(base, s.last_epoch + j) for base in s.base_lrs[:len(s.optimizer.param_groups)]]
                if s.optimizer is optimizer:
                    row[:len(lrs)] = lrs
            if not all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                       and math.isfinite(v) and v >= 0 for v in row):
                break
            rows.append(list(row))
    except Exception:  # noqa: BLE001  (the per-batch loop raises it from on_batch_end after the steps before)
        pass
    return np.array(rows, dtype=np.float64), len(rows)


def _step_schedules(schedules, done):
    """After done >= 1 steps: the schedules as done rounds of on_batch_end calls leave them. Each round sets
    the same lrs again, so the rounds before the last two just count; the last two run as they would (the
    last one may raise, as it would, after the one before has set every lr)."""
    rounds = min(done, 2)
    for s in schedules:
        s.last_epoch += done - rounds
    for _ in range(rounds):
        for s in schedules:
            s.step()


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for x, in eval mode, batch_size samples at a time (no gradients are computed)."""
    was_training = model.training
    model.eval()
    try:
        x = np.asarray(x)
        with nn.no_grad():  # the last recorded forward's tape stays for its backward
            return np.concatenate([cuda.to_host(model(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model, x, y, loss=None, batch_size: int = 256) -> dict:
    """{"loss": per-sample mean loss} plus "accuracy" for CrossEntropyLoss, in eval mode, in batches.
    loss defaults as in fit."""
    # A copy of the loss: the caller's keeps the gradient of its own last call for backward().
    loss_fn = copy.copy(loss) if loss is not None else _default_loss(y)
    x, y = _prepare(model, x, y, loss_fn)
    was_training = model.training
    model.eval()
    total = correct = 0
    try:
        with nn.no_grad():  # the last recorded forward's tape stays for its backward
            for i in range(0, len(x), batch_size):
                out, yb = cuda.to_host(model(x[i:i + batch_size])), y[i:i + batch_size]
                total += loss_fn(out, yb) * (len(yb) if loss_fn.reduction == "mean" else 1)
                if isinstance(loss_fn, losses.CrossEntropyLoss):
                    correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    result = {"loss": total / len(x) if loss_fn.reduction == "mean" else total}
    if isinstance(loss_fn, losses.CrossEntropyLoss):
        result["accuracy"] = correct / len(x)
    return result
