"""Conv2d, shaped like torch.nn.Conv2d: (N, C, H, W) input, weight (out_channels, in_channels, kh, kw)."""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import init
from .. import _random
from .._arrays import Parameter, as_input, float_dtype
from ..engine.protocol import NO_EPILOGUE, NativeLayer
from .module import Module, cpu_only

__all__ = ["Conv2d"]


def pair(value, name: str, minimum: int) -> tuple:
    """An int or a pair of ints (each >= minimum) as a pair, as torch.nn takes kernel_size, stride, padding."""
    values = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if (not isinstance(values, (tuple, list)) or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(values[0]), int(values[1])


def output_size(size, kernel, stride, padding, dilation=(1, 1)) -> tuple:
    """(Ho, Wo) of a window of kernel sliding over size (H, W): PyTorch's formula, floor rounding."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))


class Conv2d(Module):
    """y = conv(x, weight) + bias over (N, in_channels, H, W), as torch.nn.Conv2d (cross-correlation; no groups).
    kernel_size, stride, padding (zeros), dilation: an int or a pair. The output is (N, out_channels, Ho, Wo)
    with Ho = (H + 2 padding - dilation (kernel - 1) - 1) // stride + 1. Initialised as PyTorch initialises it
    (weight and bias uniform in +-1/sqrt(in_channels kh kw)). Followed by an elementwise activation in a
    Sequential, the activation runs in the convolution's GEMM epilogue."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, *, dtype=np.float32, generator=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a pair of ints (no 'same' / 'valid' strings), got {padding!r}")
        dt = float_dtype(dtype)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        self.dilation = pair(dilation, "dilation", 1)
        self.weight = Parameter(np.empty((self.out_channels, self.in_channels, *self.kernel_size), dt))
        self.bias = Parameter(np.empty(self.out_channels, dt)) if bias else None
        self.reset_parameters(generator)
        self._saved = None

    def reset_parameters(self, generator=None):
        """PyTorch's: kaiming_uniform_(a=sqrt(5)) on the weight, the bias uniform in +-1/sqrt(fan_in)."""
        gen = _random.resolve(generator)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5.0), generator=gen)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
            init.uniform_(self.bias, -bound, bound, generator=gen)

    def native_layer(self):
        """A segment opener (its GEMM's epilogue applies the bias and an activation after it). The native
        whole-step plans do not take it yet: a model with it trains layer by layer."""
        if type(self) is not Conv2d:  # a subclass may compute something else
            return None
        params = (self.weight,) if self.bias is None else (self.weight, self.bias)
        settings = dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
                        stride=self.stride, padding=self.padding, dilation=self.dilation, bias=self.bias is not None)
        return NativeLayer("conv2d", self, params, settings, keeps=("input",))

    def _conv(self, x, act=None):
        cpu_only(self, "forward")
        x = as_input(x, self.weight.dtype, "x", ndim=4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (N, {self.in_channels}, H, W), got shape {x.shape}")
        act = act or NO_EPILOGUE
        y, z = F.conv2d_forward(x, self.weight.data, self.bias.data if self.bias is not None else None, self.stride,
                                self.padding, self.dilation, act["activation"], act["negative_slope"])
        return x, y, z

    def forward(self, x):
        x, y, _ = self._conv(x)
        return self._keep(y, x)

    def _forward_epilogue(self, x, act):
        """forward with the activation act applied in the GEMM's epilogue (Sequential runs Conv2d + activation
        so): (y, what _backward_epilogue needs)."""
        x, y, z = self._conv(x, act)
        return y, (x, z, y, act)

    def _backward_epilogue(self, grad_out, saved, need_input_grad: bool):
        x, z, y, act = saved
        return self._conv_backward(grad_out, x, z, y, act, need_input_grad)

    def _conv_backward(self, grad_out, x, z, y, act, need_input_grad):
        grad_out = as_input(grad_out, self.weight.dtype, "grad_out", ndim=4)
        expected = (x.shape[0], self.out_channels) + output_size(x.shape[2:], self.kernel_size, self.stride,
                                                                   self.padding, self.dilation)
        if grad_out.shape != expected:
            raise ValueError(f"grad_out must have shape {expected}, got {grad_out.shape}")
        grad_x, _, _ = F.conv2d_backward(grad_out, x, self.weight.data, z, y, self.stride, self.padding, self.dilation,
                                         act["activation"], act["negative_slope"], has_bias=self.bias is not None,
                                         need_grad_x=need_input_grad, grad_weight=self.weight.grad,
                                         grad_bias=self.bias.grad if self.bias is not None else None)
        return grad_x

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool = True, done=None):
        cpu_only(self, "backward")
        x = self._kept(grad_out)
        grad_x = self._conv_backward(grad_out, x, None, None, NO_EPILOGUE, need_input_grad)
        self._spend()  # after the checks: a refused grad_out leaves the tape for a corrected call
        if done is not None:
            done(self)
        return grad_x

    def extra_repr(self):
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}", f"stride={self.stride}"]
        if self.padding != (0, 0):
            parts.append(f"padding={self.padding}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)
