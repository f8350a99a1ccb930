"""MaxPool2d, AvgPool2d and Flatten, shaped like torch.nn's, over (N, C, H, W) inputs."""
from __future__ import annotations

import math

from .. import functional as F
from .._arrays import as_input, float_input
from .conv import output_size, pair
from .module import Module, cpu_only

__all__ = ["MaxPool2d", "AvgPool2d", "Flatten"]


class _Pool2d(Module):
    """A 2-D pooling window: kernel_size, stride (None: the kernel size) and padding, each an int or a pair.
    As PyTorch requires, padding is at most half the kernel; ceil_mode is not supported."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        if ceil_mode:
            raise NotImplementedError(f"{type(self).__name__}(ceil_mode=True) is not supported: the output size "
                                      "rounds down")
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding should be at most half of the kernel size, got padding={self.padding} and "
                             f"kernel_size={self.kernel_size}")
        self.ceil_mode = False
        self._saved = None

    def _input(self, x):
        cpu_only(self, "forward")
        x = float_input(x, "x", ndim=4)
        out = output_size(x.shape[2:], self.kernel_size, self.stride, self.padding)
        if min(out) < 1:
            raise ValueError(f"{type(self).__name__}: the {self.kernel_size} window (padding {self.padding}) does not "
                             f"fit an input of size {x.shape[2:]} (x of shape {x.shape})")
        return x, out

    def _grad_out(self, grad_out, shape, dtype):
        grad_out = as_input(grad_out, dtype, "grad_out", ndim=4)
        if grad_out.shape != shape:
            raise ValueError(f"grad_out must have shape {shape}, got {grad_out.shape}")
        return grad_out

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """The largest value in each window (padding counts as -inf); backward routes each gradient to the
    position of its window's maximum (the first one on ties), as torch.nn.MaxPool2d. dilation and
    return_indices are not supported."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        if dilation != 1 or return_indices:
            raise NotImplementedError("MaxPool2d supports dilation=1 and return_indices=False only")
        super().__init__(kernel_size, stride, padding, ceil_mode)

    def forward(self, x):
        x, _ = self._input(x)
        y, indices = F.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return self._keep(y, (indices, x.shape[2:], x.dtype))

    def backward(self, grad_out):
        indices, size, dtype = self._kept(grad_out)
        grad_out = self._grad_out(grad_out, indices.shape, dtype)
        return F.max_pool2d_backward(grad_out, indices, size)  # no parameters: the tape stays


class AvgPool2d(_Pool2d):
    """The mean of each window, as torch.nn.AvgPool2d: with count_include_pad (the default) padded zeros
    count in the divisor. divisor_override is not supported."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        if divisor_override is not None:
            raise NotImplementedError("AvgPool2d(divisor_override=...) is not supported")
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        x, _ = self._input(x)
        y = F.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)
        return self._keep(y, (y.shape, x.shape[2:], x.dtype))

    def backward(self, grad_out):
        shape, size, dtype = self._kept(grad_out)
        grad_out = self._grad_out(grad_out, shape, dtype)
        return F.avg_pool2d_backward(grad_out, size, self.kernel_size, self.stride, self.padding,
                                     self.count_include_pad)

    def extra_repr(self):
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")


class Flatten(Module):
    """Dimensions start_dim .. end_dim joined into one (torch.nn.Flatten: (N, C, H, W) -> (N, C*H*W) by
    default). The output is a view of the input where it can be (no copy)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)
        self._saved = None

    def _span(self, ndim):
        lo, hi = self.start_dim % max(ndim, 1), self.end_dim % max(ndim, 1)
        if not (-ndim <= self.start_dim < ndim and -ndim <= self.end_dim < ndim) or lo > hi:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an input "
                             f"of {ndim} dimensions")
        return lo, hi

    def forward(self, x):
        x = float_input(x, "x")
        lo, hi = self._span(x.ndim)
        y = x.reshape(*x.shape[:lo], math.prod(x.shape[lo:hi + 1]), *x.shape[hi + 1:])
        return self._keep(y, x.shape)

    def backward(self, grad_out):
        shape = self._kept(grad_out)
        grad_out = float_input(grad_out, "grad_out")
        if grad_out.size != math.prod(shape):
            raise ValueError(f"grad_out must hold one value per input element ({shape}), got shape {grad_out.shape}")
        return grad_out.reshape(shape)  # no parameters: the tape stays

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
