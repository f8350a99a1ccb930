"""Dropout, shaped like torch.nn.Dropout (inverted dropout)."""
from __future__ import annotations

from .. import _random
from .._arrays import float_input
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """Inverted dropout: in training mode each element is kept with probability 1 - p and scaled by
    1 / (1 - p), so the expected output is the input; the identity in eval mode. The mask is drawn from
    ``generator`` (a numpy.random.Generator) or fuseprop's generator, and backward multiplies by the
    same mask. A model with Dropout trains on Sequential's per-layer path."""

    def __init__(self, p: float = 0.5, generator=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        _random.resolve(generator)  # checks its type
        self.p = float(p)
        self._generator = generator
        self._saved = None  # (mask,) after a forward; mask None where the forward was the identity

    def forward(self, x):
        x = float_input(x, "x")
        mask = None
        if self.training and self.p != 0.0:
            mask = _random.resolve(self._generator).random(x.shape, dtype=x.dtype) >= self.p
            mask = mask.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        y = x if mask is None else x * mask
        return self._keep(y, (mask,))

    def backward(self, grad_out):
        mask, = self._kept(grad_out)
        grad_out = float_input(grad_out, "grad_out")
        if mask is not None and grad_out.shape != mask.shape:
            raise ValueError(f"grad_out must have shape {mask.shape}, got {grad_out.shape}")
        return grad_out if mask is None else grad_out * mask  # no parameters: the tape stays

    def extra_repr(self):
        return f"p={self.p}"
