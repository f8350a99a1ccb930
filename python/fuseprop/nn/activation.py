"""Activations shaped like torch.nn's: the elementwise ones (Identity, ReLU, LeakyReLU, Sigmoid, Tanh,
GELU), which a native plan applies in the epilogue of the layer before them, and the row-wise Softmax and
LogSoftmax."""
from __future__ import annotations

import math

from .. import functional as F
from .._arrays import as_input, float_input
from ..engine.protocol import NativeLayer
from .module import Module

__all__ = ["Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax", "LogSoftmax"]


class _Activation(Module):
    """An elementwise activation: forward keeps (x, y) for backward."""

    activation = "identity"
    negative_slope = 0.01

    def __init__(self):
        super().__init__()
        self._saved = None

    def native_layer(self):
        """An epilogue: applied to the output tiles of the segment opener before it (the GEMM's). The native
        backward keeps the pre-activation and the output."""
        kind = type(self)
        if kind.forward is not _Activation.forward or kind.backward is not _Activation.backward:
            return None  # a subclass that computes something else
        return NativeLayer("activation", self, (), dict(activation=self.activation, negative_slope=self.negative_slope),
                           keeps=("pre_activation", "output"))

    def forward(self, x):
        x = float_input(x, "x")
        y = F.activation_forward(x, self.activation, self.negative_slope)
        return self._keep(y, (x, y))

    def backward(self, grad_out):
        x, y = self._kept(grad_out)
        grad_out = as_input(grad_out, x.dtype, "grad_out")
        if grad_out.shape != x.shape:
            raise ValueError(f"grad_out must have shape {x.shape}, got {grad_out.shape}")
        # No parameters, so nothing to add twice: the tape stays for further backwards.
        return F.activation_backward(grad_out, x, y, self.activation, self.negative_slope)


class Identity(_Activation):
    activation = "identity"


class ReLU(_Activation):
    activation = "relu"


class Sigmoid(_Activation):
    activation = "sigmoid"


class Tanh(_Activation):
    activation = "tanh"


class LeakyReLU(_Activation):
    activation = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        if not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be finite, got {negative_slope}")
        self.negative_slope = float(negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class GELU(_Activation):
    """GELU, exact (approximate="none") or PyTorch's tanh approximation (approximate="tanh")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.activation = "gelu" if approximate == "none" else "gelu_tanh"

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class _RowSoftmax(Module):
    """Softmax or log-softmax over the last axis of a (B, C) input."""

    _forward = None
    _backward_fn = None

    def __init__(self, dim: int = -1):
        super().__init__()
        if dim not in (-1, 1):
            raise ValueError(f"{type(self).__name__} works over the last axis of a 2-D input: dim must be -1 or 1, got {dim}")
        self.dim = dim
        self._saved = None

    def forward(self, x):
        x = float_input(x, "x", ndim=2)
        y = type(self)._forward(x)
        return self._keep(y, y)  # its backward needs the output (under no_grad nothing is kept)

    def backward(self, grad_out):
        y = self._kept(grad_out)  # no parameters: the tape stays for further backwards
        grad_out = as_input(grad_out, y.dtype, "grad_out", ndim=2)
        if grad_out.shape != y.shape:
            raise ValueError(f"grad_out must have shape {y.shape}, got {grad_out.shape}")
        return type(self)._backward_fn(grad_out, y)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_RowSoftmax):
    _forward = staticmethod(F.softmax_forward)
    _backward_fn = staticmethod(F.softmax_backward)


class LogSoftmax(_RowSoftmax):
    _forward = staticmethod(F.log_softmax_forward)
    _backward_fn = staticmethod(F.log_softmax_backward)
