"""BatchNorm1d, BatchNorm2d and LayerNorm, shaped like torch.nn's: the same parameters and buffers
(weight, bias, running_mean, running_var, num_batches_tracked), defaults and eval-mode behaviour, so
state dicts trade with torch.nn as they are."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._arrays import Parameter, as_input, float_dtype
from ..engine.protocol import NO_EPILOGUE, NativeLayer
from .module import Module, cpu_only

__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm"]


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not 0 < eps < float("inf"):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    return float(eps)


class _Normalization(Module):
    """What the normalisation layers share: the tape (what backward needs from the forward) is used once
    when the layer has parameters, as Linear's."""

    def _take(self, grad_out):
        cpu_only(self, "backward")
        return self._kept(grad_out)

    def _used(self, done):
        if self._parameters:  # its gradients were added: a second backward would add them again
            self._spend()
        if done is not None:
            done(self)


class _BatchNorm(_Normalization):
    """Normalises each channel (axis 1) over the batch and every other axis: batch statistics in training
    (and the running ones updated in place, with the unbiased variance, as PyTorch), the running statistics
    in eval mode. momentum None averages all batches so far (PyTorch's cumulative average)."""

    _input_ndims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, *, dtype=np.float32):
        super().__init__()
        dt = float_dtype(dtype)
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = _eps(eps)
        if momentum is not None and (isinstance(momentum, bool) or not 0.0 <= float(momentum) <= 1.0):
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        C = self.num_features
        self.weight = Parameter(np.ones(C, dt)) if self.affine else None
        self.bias = Parameter(np.zeros(C, dt)) if self.affine else None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dt))
            self.register_buffer("running_var", np.ones(C, dt))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))
        self._dtype = dt
        self._saved = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def native_layer(self):
        """A segment opener: the activation after it is applied in the same pass over the data (Sequential
        runs BatchNorm + ReLU as one call each way). The native whole-step plans do not take it: a model with
        it trains layer by layer."""
        if type(self) not in (BatchNorm1d, BatchNorm2d):  # a subclass may compute something else
            return None
        params = (self.weight, self.bias) if self.affine else ()
        settings = dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine,
                        track_running_stats=self.track_running_stats)
        return NativeLayer("batch_norm", self, params, settings, keeps=("input", "output"))

    def forward(self, x):
        x, y, mean, invstd, batch_stats = self._normalize(x, NO_EPILOGUE)
        return self._keep(y, (x, mean, invstd, batch_stats))

    def _forward_epilogue(self, x, act):
        """forward with the activation act ({activation, negative_slope}) applied in the same pass (Sequential
        runs BatchNorm + activation so): (y, what _backward_epilogue needs)."""
        x, y, mean, invstd, batch_stats = self._normalize(x, act)
        return y, (x, y, mean, invstd, batch_stats, act)

    def _backward_epilogue(self, grad_out, saved, need_input_grad: bool):
        x, y, mean, invstd, batch_stats, act = saved
        return self._normalize_backward(grad_out, x, y, mean, invstd, batch_stats, act, need_input_grad)

    def _normalize(self, x, act):
        cpu_only(self, "forward")
        x = as_input(x, self._dtype, "x")
        if x.ndim not in self._input_ndims:
            raise ValueError(f"{type(self).__name__} expects a {' or '.join(f'{n}-D' for n in self._input_ndims)} "
                             f"input (N, {self.num_features}{', ...' if max(self._input_ndims) > 2 else ''}), got "
                             f"shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"x must have {self.num_features} channels along axis 1, got shape {x.shape}")
        batch_stats = self.training or not self.track_running_stats
        momentum = self.momentum
        if self.training and self.track_running_stats and momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked + 1)  # the cumulative average, this batch included
        y, mean, invstd = F.batch_norm_forward(
            x, self.weight.data if self.affine else None, self.bias.data if self.affine else None,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None, batch_stats, 0.0 if momentum is None else momentum,
            self.eps, act["activation"], act["negative_slope"])
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1  # after the kernel: a refused input changes nothing
        return x, y, mean, invstd, batch_stats

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool = True, done=None):
        x, mean, invstd, batch_stats = self._take(grad_out)
        grad_x = self._normalize_backward(grad_out, x, None, mean, invstd, batch_stats, NO_EPILOGUE, need_input_grad)
        self._used(done)
        return grad_x

    def _normalize_backward(self, grad_out, x, y, mean, invstd, batch_stats, act, need_input_grad):
        grad_out = as_input(grad_out, x.dtype, "grad_out")
        if grad_out.shape != x.shape:
            raise ValueError(f"grad_out must have shape {x.shape}, got {grad_out.shape}")
        grad_x, _, _ = F.batch_norm_backward(grad_out, x, self.weight.data if self.affine else None, mean, invstd,
                                             batch_stats, need_grad_x=need_input_grad,
                                             grad_weight=self.weight.grad if self.affine else None,
                                             grad_bias=self.bias.grad if self.affine else None, y=y,
                                             bias=self.bias.data if self.affine else None,
                                             activation=act["activation"], negative_slope=act["negative_slope"])
        return grad_x

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs (torch.nn.BatchNorm1d)."""

    _input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs, per channel (torch.nn.BatchNorm2d)."""

    _input_ndims = (4,)


class LayerNorm(_Normalization):
    """Normalises each sample over its last len(normalized_shape) axes (torch.nn.LayerNorm), then scales and
    shifts elementwise by weight and bias of shape normalized_shape (elementwise_affine)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True, *,
                 dtype=np.float32):
        super().__init__()
        dt = float_dtype(dtype)
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        if not shape or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in shape):
            raise ValueError(f"normalized_shape must be a positive int or a tuple of them, got {normalized_shape!r}")
        self.normalized_shape = tuple(int(n) for n in shape)
        self.eps = _eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = Parameter(np.ones(self.normalized_shape, dt)) if self.elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dt)) if self.elementwise_affine and bias else None
        self._dtype = dt
        self._saved = None

    def forward(self, x):
        cpu_only(self, "forward")
        x = as_input(x, self._dtype, "x")
        k = len(self.normalized_shape)
        if x.ndim < k or x.shape[x.ndim - k:] != self.normalized_shape:
            raise ValueError(f"x must end in the normalized shape {self.normalized_shape}, got shape {x.shape}")
        y, mean, rstd = F.layer_norm_forward(x, self.normalized_shape, self.weight.data if self.weight is not None else None,
                                             self.bias.data if self.bias is not None else None, self.eps)
        return self._keep(y, (x, mean, rstd))

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool = True, done=None):
        x, mean, rstd = self._take(grad_out)
        grad_out = as_input(grad_out, x.dtype, "grad_out")
        if grad_out.shape != x.shape:
            raise ValueError(f"grad_out must have shape {x.shape}, got {grad_out.shape}")
        grad_x, _, _ = F.layer_norm_backward(grad_out, x, self.normalized_shape,
                                             self.weight.data if self.weight is not None else None, mean, rstd,
                                             need_grad_x=need_input_grad,
                                             grad_weight=self.weight.grad if self.weight is not None else None,
                                             grad_bias=self.bias.grad if self.bias is not None else None)
        self._used(done)
        return grad_x

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
