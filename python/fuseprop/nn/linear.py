"""Linear: y = x @ weight.T + bias, shaped like torch.nn.Linear, and how it runs in a native plan."""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import init
from .. import _random
from .._arrays import Parameter, as_input, float_dtype
from ..engine.protocol import NativeLayer
from .cuda_inference import cuda_forward
from .module import Module, cpu_only

__all__ = ["Linear"]


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features) as PyTorch.

    init: "default" (PyTorch's: weight and bias uniform in +-1/sqrt(in_features)), "xavier_uniform",
    "xavier_normal", "he_uniform" or "he_normal" (these last four with a zero bias).
    """

    _INITS = ("default", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, init: str = "default",
                 dtype=np.float32, generator=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if init not in self._INITS:
            raise ValueError(f"init must be one of {self._INITS}, got {init!r}")
        dt = float_dtype(dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dt))
        self.bias = Parameter(np.empty(self.out_features, dt)) if bias else None
        self.reset_parameters(init, generator)
        self._saved = None

    def reset_parameters(self, init_name: str = "default", generator=None):
        gen = _random.resolve(generator)
        if init_name == "default":
            init.kaiming_uniform_(self.weight, a=math.sqrt(5.0), generator=gen)
            bound = 1.0 / math.sqrt(self.in_features)
            if self.bias is not None:
                init.uniform_(self.bias, -bound, bound, generator=gen)
            return
        if init_name == "xavier_uniform":
            init.xavier_uniform_(self.weight, generator=gen)
        elif init_name == "xavier_normal":
            init.xavier_normal_(self.weight, generator=gen)
        elif init_name == "he_uniform":
            init.kaiming_uniform_(self.weight, nonlinearity="relu", generator=gen)
        else:
            init.kaiming_normal_(self.weight, nonlinearity="relu", generator=gen)
        if self.bias is not None:
            init.zeros_(self.bias)

    def native_layer(self):
        """A segment opener: the GEMM, with the bias and an activation after it in its epilogue. The native
        backward keeps this layer's input (for the weight gradient)."""
        if type(self) is not Linear:  # a subclass may compute something else
            return None
        params = (self.weight,) if self.bias is None else (self.weight, self.bias)
        return NativeLayer("linear", self, params, dict(in_features=self.in_features, out_features=self.out_features,
                                                        bias=self.bias is not None), keeps=("input",))

    def forward(self, x):
        if self.weight.device == "cuda":
            return cuda_forward(self, [self], x)
        x = as_input(x, self.weight.dtype, "x", ndim=2, features=self.in_features)
        y, _ = F.linear_forward(x, self.weight.data, self.bias.data if self.bias is not None else None)
        return self._keep(y, x)

    def _forward_epilogue(self, x, act):
        """forward with the activation act ({activation, negative_slope}) applied in the GEMM's epilogue, as
        one call (Sequential runs Linear + activation so): (y, what _backward_epilogue needs)."""
        x = as_input(x, self.weight.dtype, "x", ndim=2, features=self.in_features)
        y, z = F.linear_forward(x, self.weight.data, self.bias.data if self.bias is not None else None,
                                act["activation"], act["negative_slope"])
        return y, (x, z, y, act)

    def _backward_epilogue(self, grad_out, saved, need_input_grad: bool):
        """The backward of _forward_epilogue (the activation's and this layer's, in one call)."""
        x, z, y, act = saved
        grad_out = as_input(grad_out, y.dtype, "grad_out", ndim=2)
        if grad_out.shape != y.shape:
            raise ValueError(f"grad_out must have shape {y.shape}, got {grad_out.shape}")
        grad_x, _, _ = F.linear_backward(grad_out, x, self.weight.data, z, y, act["activation"], act["negative_slope"],
                                         has_bias=self.bias is not None, need_grad_x=need_input_grad,
                                         grad_weight=self.weight.grad,
                                         grad_bias=self.bias.grad if self.bias is not None else None)
        return grad_x

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool = True, done=None):
        cpu_only(self, "backward")
        x = self._kept(grad_out)
        grad_out = as_input(grad_out, self.weight.dtype, "grad_out", ndim=2, features=self.out_features)
        if grad_out.shape[0] != x.shape[0]:
            raise ValueError(f"grad_out must have shape {(x.shape[0], self.out_features)}, got {grad_out.shape}")
        self._spend()
        grad_x, _, _ = F.linear_backward(grad_out, x, self.weight.data, None, None, "identity",
                                         has_bias=self.bias is not None, need_grad_x=need_input_grad,
                                         grad_weight=self.weight.grad,
                                         grad_bias=self.bias.grad if self.bias is not None else None)
        if done is not None:
            done(self)
        return grad_x

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
