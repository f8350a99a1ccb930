"""Losses shaped like torch.nn's: ``loss = loss_fn(pred, target)`` returns a Python float and
``loss_fn.backward()`` the gradient with respect to pred, both from ONE native pass.

pred must be a float32 or float64 array (a model's output); targets are converted explicitly into
a new array of pred's dtype, and a (N,) target for a (N, 1) prediction (one output: regression, or a
binary classifier on logits) is taken as (N, 1). CrossEntropyLoss takes class labels of any integer
dtype, or floats that are whole numbers (any other float is refused, never truncated).
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from ._arrays import as_input
from ._tape import tie_gradient

__all__ = ["CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss", "default_for", "as_class_labels"]


def default_for(y):
    """The loss fit and evaluate use when given none: CrossEntropyLoss for integer targets, else MSELoss."""
    return CrossEntropyLoss() if np.asarray(y).dtype.kind in "iu" else MSELoss()


def as_class_labels(labels, name: str = "labels") -> np.ndarray:
    """Class labels as int64: integers of any dtype, or floats that are whole numbers (labels stored as
    floats); a float with a fraction, NaN or infinity raises ValueError naming it instead of being truncated."""
    arr = np.asarray(labels)
    if arr.dtype.kind == "f":
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if not whole.all():
            at = tuple(int(i) for i in np.argwhere(~whole)[0])
            where = f"{name}[{', '.join(map(str, at))}]" if at else name
            raise ValueError(f"{name} must be class indices (whole numbers), got {where} = {arr[at]!r} "
                             f"in a {arr.dtype} array of shape {arr.shape}")
        arr = arr.astype(np.int64)
    return F.as_labels(arr, name)


class _Loss:
    def __init__(self, reduction: str = "mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._grad = None
        self._grad_from = None  # after a fused Sequential.train_step: its plan, which holds the gradient

    @staticmethod
    def _pred(pred, name) -> np.ndarray:
        if not isinstance(pred, np.ndarray) or pred.dtype not in (np.float32, np.float64):
            got = pred.dtype if isinstance(pred, np.ndarray) else type(pred).__name__
            raise TypeError(f"{name} must be a float32 or float64 numpy.ndarray, got {got}")
        return np.require(pred, None, ["C_CONTIGUOUS", "ALIGNED"])

    def _compute(self, pred, target):
        raise NotImplementedError

    def _hits(self, pred, target):
        """(right, judged) for the accuracy fit and evaluate report: (0, 0) where a loss has none."""
        return 0, 0

    def _target(self, target, dtype, shape) -> np.ndarray:
        """target as this loss takes it, for predictions of dtype and shape (the native plans convert
        through it too, so a target means the same on every path)."""
        t = as_input(target, dtype, "target")
        if t.ndim == 1 and len(shape) == 2 and shape[1] == 1 and t.shape[0] == shape[0]:
            t = t.reshape(-1, 1)  # one output: (N,) as (N, 1)
        return t

    _native_kind = None  # the native plans' name of this loss, set by the class that defines it

    def _native_form(self):
        """(kind, reduction, label_smoothing) for the native plans (engine.protocol), or None: a subclass
        computes its own loss, so only the class that names the kind has this form."""
        kind = type(self).__dict__.get("_native_kind")
        return None if kind is None else (kind, self.reduction, getattr(self, "label_smoothing", 0.0))

    def __call__(self, pred, target) -> float:
        self._grad = self._grad_from = None
        loss, self._grad = self._compute(pred, target)
        tie_gradient(self._grad, pred)  # backward checks that it is handed to the forward that made pred
        return float(loss)

    def backward(self) -> np.ndarray:
        """The gradient of the last computed loss with respect to pred (also after a fused train_step,
        which computes it in its workspace: it is copied out on the first request)."""
        if self._grad is None and self._grad_from is not None:
            self._grad = self._grad_from.loss_grad()
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        return self._grad

    def __getstate__(self):  # copies and pickles take the gradient as an array, not the plan that holds it
        state = self.__dict__.copy()
        if state["_grad"] is None and state["_grad_from"] is not None:
            state["_grad"] = self._grad_from.loss_grad()
        state["_grad_from"] = None
        return state

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy from logits (B, C) and integer class labels (B,), optional label smoothing."""

    _native_kind = "cross_entropy"

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def __call__(self, logits, labels) -> float:
        """labels: class indices (B,) in [0, C), of any integer dtype (or floats that are whole numbers)."""
        return super().__call__(logits, labels)

    def _compute(self, logits, labels):
        return F.cross_entropy_loss(self._pred(logits, "logits"), as_class_labels(labels, "labels"),
                                    self.label_smoothing, self.reduction)

    def _target(self, target, dtype, shape):
        return as_class_labels(target, "labels")

    def _hits(self, logits, labels):
        """Samples whose largest logit is the label's."""
        return int((logits.argmax(1) == np.asarray(labels)).sum()), len(logits)


class MSELoss(_Loss):
    """Mean (or summed) squared error over all elements."""

    _native_kind = "mse"

    def _compute(self, pred, target):
        pred = self._pred(pred, "pred")
        return F.mse_loss_with_grad(pred, self._target(target, pred.dtype, pred.shape), self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits (sigmoid fused, numerically stable), over all elements."""

    _native_kind = "bce_with_logits"

    def _compute(self, pred, target):
        logits = self._pred(pred, "logits")
        return F.bce_with_logits_loss(logits, self._target(target, logits.dtype, logits.shape), self.reduction)

    def _hits(self, logits, target):
        """Elements whose logit's sign gives the target (logit > 0 for a target >= 0.5), as keras' binary
        accuracy; multi-label outputs count each label."""
        target = np.asarray(target).reshape(logits.shape)
        return int(((logits > 0) == (target >= 0.5)).sum()), logits.size
