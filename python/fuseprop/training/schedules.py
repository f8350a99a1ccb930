"""Learning-rate schedules as fit callbacks, with torch.optim.lr_scheduler's formulas."""
from __future__ import annotations

import math

from .. import optim
from .callbacks import Callback

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "LinearWarmup"]


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
