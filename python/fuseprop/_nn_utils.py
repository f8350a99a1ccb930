"""fuseprop.nn.utils: gradient clipping with PyTorch's semantics (in place, on ``param.grad``)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _params(parameters) -> list:
    return [parameters] if hasattr(parameters, "grad") else list(parameters)


def clip_grad_norm_(parameters, max_norm: float) -> float:
    """Scale all gradients by max_norm / (total_norm + 1e-6) when that is below 1, where total_norm is
    the L2 norm of all gradients together (as if concatenated). Returns total_norm (before clipping)."""
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    grads = [p.grad for p in _params(parameters)]
    total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clip every gradient element into [-clip_value, clip_value]."""
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for p in _params(parameters):
        np.clip(p.grad, -clip_value, clip_value, out=p.grad)
