"""What fit returns (History) and the hooks it calls (Callback, EarlyStopping)."""
from __future__ import annotations

import warnings

__all__ = ["History", "Callback", "EarlyStopping"]


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
