"""The training loop, shaped like keras: fit (epochs of mini-batches, validation, callbacks, penalties,
clipping, distributed data-parallel), evaluate and predict. See fuseprop.training for which step fit runs."""
from __future__ import annotations

import copy
import math
import sys
import time
import warnings

import numpy as np

from .. import _C, _random, cuda, datasets, losses, optim
from .._arrays import as_input
from .._tape import no_grad
from ..diagnostics import GradientWarning
from ..distributed.data_parallel import resolve as _resolve_distributed
from ..engine.step import StepHooks, per_layer_step
from . import native_epochs
from .callbacks import History

__all__ = ["fit", "evaluate", "predict"]


def _prepare(model, x, y, loss_fn):
    """x in the model's dtype (one conversion up front, not one per batch); class labels as int64 (whole
    floats too: never truncated), other targets in the model's dtype."""
    dtype = next(iter(model.parameters())).dtype
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must hold samples along its first axis, got a 0-d array")
    if x.dtype != dtype:
        x = as_input(x, dtype, "x")
    y = losses.as_class_labels(y, "y") if _is_ce(loss_fn) else as_input(y, dtype, "y")
    if y.ndim < 1 or len(x) != len(y):
        raise ValueError(f"x and y must have the same number of samples, got x of shape {x.shape} and y of shape "
                         f"{y.shape}")
    return x, y


def _is_ce(loss_fn) -> bool:
    return isinstance(loss_fn, losses.CrossEntropyLoss)


def _modes(model) -> list:
    return [(m, m.training) for _, m in model.named_modules()]


def _restore(modes):
    for m, training in modes:
        object.__setattr__(m, "training", training)


def _reraise_naming(error, what: str, chosen=None):
    """A ValueError or TypeError from inside a batch, raised again with the user's arrays named (and, when
    fit or evaluate chose the loss, which one and why)."""
    if type(error) not in (ValueError, TypeError) or getattr(error, "_names_arrays", False):
        raise error
    note = f" [{what}]"
    if chosen is not None:
        note += (f" [the loss is {type(chosen).__name__}, which was chosen because y holds "
                 f"{'integers' if _is_ce(chosen) else 'floats'}: pass loss= to choose another, e.g. "
                 f"{'MSELoss()' if _is_ce(chosen) else 'CrossEntropyLoss() for class labels stored as floats'}]")
    named = type(error)(f"{error}{note}")
    named._names_arrays = True  # an outer call (fit around evaluate) adds nothing more
    raise named from error


class _RecordNorms(StepHooks):
    """fit's hook into the per-layer step: record each layer's gradient norm (after penalties and clipping)."""

    def __init__(self, record):
        self._record = record

    def gradients_final(self):
        self._record()


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
    loss_fn = loss if loss is not None else losses.default_for(y)
    optimizer = optimizer if optimizer is not None else optim.Adam(model.parameters())
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"need batch_size >= 1 and epochs >= 0, got {batch_size} and {epochs}")
    x, y = _prepare(model, x, y, loss_fn)
    ddp = None
    if distributed is not False and distributed is not None:
        ddp = _resolve_distributed(model, distributed)
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
    # Accuracy: samples whose argmax is the label (CrossEntropyLoss), or elements whose logit's sign gives
    # the target (BCEWithLogitsLoss); "judged" counts them. The native plans count it in the step.
    scored = isinstance(loss_fn, (losses.CrossEntropyLoss, losses.BCEWithLogitsLoss))
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
    if (native_epochs._NATIVE_EPOCHS and ddp is None and not on_cuda and not per_layer and not layers and augment is None
            and isinstance(batch_size, (int, np.integer))
            and not isinstance(batch_size, bool)):
        native = native_epochs.NativeEpochs(model, x, y, loss_fn, optimizer, int(batch_size), drop_last, clip_grad_norm)
    hooks = _RecordNorms(record) if layers else StepHooks()
    modes = _modes(model)  # each module's own: put back as they were, not all to the model's
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
            total = correct = judged = seen = first = 0
            if native is not None:  # the batches it leaves (none, unless it cannot start) run one by one below
                order = rng.permutation(n) if shuffle else None  # as datasets.batches draws it
                first, total, correct, seen = native.epoch(order, callbacks, bar)
                judged = seen * native.outputs_judged if scored else 0
                fused_steps += first
                batches = datasets._iterate(x, y, order, batch_size, native.stop, None, first)
            else:
                shard = (ddp.rank, ddp.world_size) if ddp is not None else None
                batches = _epoch_batches(x, y, batch_size, shuffle, drop_last, rng, device_data, shard)
            for b, (xb, yb) in enumerate(batches, first):
                if augment is not None and len(xb):
                    xb = augment(xb)
                if ddp is not None:  # the global batch's loss, correct predictions and size
                    value, right, judge, m = ddp._step(xb, yb, loss_fn, optimizer, l1, l2, clip_grad_norm,
                                                       clip_grad_value, record if layers else None)
                else:
                    value = None
                    if not per_layer:
                        value = model._fused_step(xb, yb, loss_fn, optimizer, clip_grad_norm)
                    if value is not None:
                        fused_steps += 1
                        right = model.train_plan.correct if scored else 0
                        judge = len(yb) * model._fused_for(loss_fn, optimizer).outputs_judged if scored else 0
                        if layers:
                            record()
                    else:
                        if on_cuda:  # Sequential's train_step raised if it could not run there; other modules cannot
                            raise NotImplementedError(f"{type(model).__name__} cannot train on CUDA; a Sequential chain "
                                                      "can")
                        value, out = per_layer_step(model, xb, yb, loss_fn, optimizer, l1=l1, l2=l2,
                                                    clip_norm=clip_grad_norm, clip_value=clip_grad_value, hooks=hooks)
                        right, judge = loss_fn._hits(out, yb)
                    m = len(yb)
                total += value * (m if loss_fn.reduction == "mean" else 1)
                correct, judged, seen = correct + right, judged + judge, seen + m
                for cb in callbacks:
                    cb.on_batch_end(b)
                if bar is not None:
                    bar.update(1)
            train_seconds = time.perf_counter() - start
            logs = {"loss": total / seen if loss_fn.reduction == "mean" else total}
            if scored and judged:
                logs["accuracy"] = correct / judged
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
    except (ValueError, TypeError) as e:
        _reraise_naming(e, f"fit: x has shape {x.shape}, y {y.shape}, batch_size {batch_size}",
                        None if loss is not None else loss_fn)
    finally:
        _restore(modes)
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


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for x, in eval mode, batch_size samples at a time (no gradients are computed).
    An empty x gives an empty result of the output's shape."""
    modes = _modes(model)  # each module's own: put back as they were, not all to the model's
    model.eval()
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError("x must hold samples along its first axis, got a 0-d array")
    try:
        with no_grad():  # the last recorded forward's tape stays for its backward
            outs = [cuda.to_host(model(x[i:i + batch_size])) for i in range(0, max(len(x), 1), batch_size)]
            return outs[0] if len(outs) == 1 else np.concatenate(outs)
    except (ValueError, TypeError) as e:
        _reraise_naming(e, f"predict: x has shape {x.shape}, taken {batch_size} rows at a time")
    finally:
        _restore(modes)


def evaluate(model, x, y, loss=None, batch_size: int = 256) -> dict:
    """{"loss": per-sample mean loss} plus "accuracy" for CrossEntropyLoss, in eval mode, in batches.
    loss defaults as in fit."""
    # A copy of the loss: the caller's keeps the gradient of its own last call for backward().
    loss_fn = copy.copy(loss) if loss is not None else losses.default_for(y)
    x, y = _prepare(model, x, y, loss_fn)
    if len(x) == 0:
        raise ValueError(f"evaluate needs at least one sample, got x of shape {x.shape}")
    modes = _modes(model)  # each module's own: put back as they were, not all to the model's
    model.eval()
    total = right = judged = 0
    try:
        with no_grad():  # the last recorded forward's tape stays for its backward
            for i in range(0, len(x), batch_size):
                out, yb = cuda.to_host(model(x[i:i + batch_size])), y[i:i + batch_size]
                total += loss_fn(out, yb) * (len(yb) if loss_fn.reduction == "mean" else 1)
                r, j = loss_fn._hits(out, yb)
                right, judged = right + r, judged + j
    except (ValueError, TypeError) as e:
        _reraise_naming(e, f"evaluate: x has shape {x.shape}, y {y.shape}, taken {batch_size} rows at a time",
                        None if loss is not None else loss_fn)
    finally:
        _restore(modes)
    result = {"loss": total / len(x) if loss_fn.reduction == "mean" else total}
    if judged:
        result["accuracy"] = right / judged
    return result
