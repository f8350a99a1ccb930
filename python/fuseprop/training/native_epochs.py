"""fit's epochs as native runs of many fused steps, when nothing needs Python between batches."""
from __future__ import annotations

import math
import time

import numpy as np

from .callbacks import Callback
from .schedules import CosineAnnealingLR, LinearWarmup, LRScheduler, StepLR

__all__ = ["NativeEpochs"]

_NATIVE_EPOCHS = True  # False: fit steps batch by batch from Python even where native runs could (tests compare)
_RUN_SECONDS = 0.05  # about how long one native run of batches lasts: the bar moves, and Ctrl-C lands, between runs
_MAX_RUN = 1 << 14  # batches in one native run at most (the first run has min(16, _MAX_RUN))
_BUILTIN_SCHEDULES = (StepLR._lr, CosineAnnealingLR._lr, LinearWarmup._lr)


class NativeEpochs:
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

    @property
    def outputs_judged(self) -> int:
        """Per sample, the outputs the native count of right predictions judges (see PlanStep)."""
        fused = self.model._fused_for(self.loss_fn, self.optimizer)
        return fused.outputs_judged if fused is not None else 0

    def _data_fits(self, fused) -> bool:
        """x and y as the fused step takes them (else the per-batch loop raises as it does today); the
        arrays, made C-contiguous once, in self._data."""
        x, y, dtype = self.x, self.y, fused._dtype
        if x.dtype != dtype or x.ndim != 2 or x.shape[1] != fused._in_features:
            return False
        if fused._loss_kind == "cross_entropy":
            if y.dtype != np.int64 or y.ndim != 1 or y.min() < 0 or y.max() >= fused._out_features:
                return False
        elif y.ndim == 1 and fused._out_features == 1 and y.dtype == dtype:
            y = y.reshape(-1, 1)  # one output: (N,) targets as (N, 1), as the loss takes them
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
