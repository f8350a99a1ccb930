"""Layers shaped like torch.nn: Module, Linear, activations, Sequential.

Every module has forward (``__call__``) and backward: ``backward(grad_out)`` returns the gradient
with respect to the module's input and ACCUMULATES parameter gradients into ``param.grad`` (+=),
as PyTorch does, so gradients of several micro-batches add up until ``zero_grad()``.

Inputs are converted explicitly into new arrays when they are not already C-contiguous arrays of
the model's dtype (the caller's array is never modified). Parameters are never converted: their
``.data`` and ``.grad`` keep their dtype, shape and memory, and assigning an array of another
dtype, shape or layout raises.
"""
from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict

import numpy as np

from . import cuda as _cuda
from . import functional as F
from . import init
from . import _random

__all__ = ["Parameter", "Module", "Linear", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU",
           "Softmax", "LogSoftmax", "Dropout", "Sequential", "no_grad", "init", "utils"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Counts assignments that can change what a model computes with: public module attributes (layers,
# parameters, activation settings) and Parameter arrays. A native training plan (Sequential.train_step)
# records it when built and looks at the model again only when it has moved.
_generation = 0


# -- What a backward may use. A forward records what its backward needs (its tape), unless recording
# is off (no_grad: predict and evaluate run under it), and numbers its recorded forwards; a backward
# uses the tape once. The gradient a loss computes is tied to the forward whose output it came from
# (fuseprop.losses calls _tie_gradient), so a module's backward handed the gradient of its own output
# from another forward (a later one, or one under no_grad) raises instead of returning numbers computed
# from another batch's inputs. A gradient the caller made itself carries no tie and is trusted. Modules
# with parameters (Linear, Sequential) use a tape once: a second backward would add its gradients twice.
_state = threading.local()
_CONSUMED = "consumed"  # a tape whose backward has run
_OUTPUTS = {}  # id(output) -> (weakref to it, weakref to the module, its forward number or None under no_grad)
_GRADIENTS = {}  # id(gradient) -> (weakref to it, (weakref to the module, forward number) or None)


def _recording() -> bool:
    return getattr(_state, "recording", True)


class no_grad:
    """``with fuseprop.nn.no_grad(): ...`` runs forwards that record nothing for backward and leave the
    last recorded forward's tape as it was (as torch.no_grad); predict and evaluate run under it."""

    def __enter__(self):
        self._previous = _recording()
        _state.recording = False
        return self

    def __exit__(self, *exc):
        _state.recording = self._previous
        return False


def _remember(table, obj, value):
    """table[id(obj)] = (weakref to obj, value), dropped when obj is freed; silently skipped for objects
    that take no weak reference."""
    key = id(obj)
    try:
        ref = weakref.ref(obj, lambda _, key=key: table.pop(key, None))
    except TypeError:
        return
    table[key] = (ref, value)


def _recall(table, obj):
    entry = table.get(id(obj))
    return entry[1] if entry is not None and entry[0]() is obj else None


def _record_forward(module, output):
    """Numbers a forward of module and ties its output to it; returns the number (None under no_grad)."""
    number = None
    if _recording():
        number = module.__dict__.get("_forward_number", 0) + 1
        object.__setattr__(module, "_forward_number", number)
    _remember(_OUTPUTS, output, (weakref.ref(module), number))
    return number


def _tie_gradient(gradient, output):
    """A loss's gradient belongs to the forward that produced output (when a module's forward did)."""
    tie = _recall(_OUTPUTS, output)
    if tie is not None:
        _remember(_GRADIENTS, gradient, tie)


def _check_tape(module, tape, number, grad_out):
    """Raises unless module's backward may use its tape for grad_out."""
    name = type(module).__name__
    if tape is None:
        raise RuntimeError(f"{name}.backward called before forward")
    if tape is _CONSUMED:
        raise RuntimeError(f"{name}.backward called twice for one forward: its gradients were added already "
                           "(run the forward again before another backward)")
    tie = _recall(_GRADIENTS, grad_out)
    if tie is not None and tie[0]() is module and tie[1] != number:
        # The gradient of this module's own output, from a forward other than the one on the tape. (A
        # gradient tied to another module's output, such as a container's whose last layer this is, may
        # hold the right values, so it is trusted, as an untied one is.)
        why = ("by a forward that recorded nothing (under no_grad: predict, evaluate)" if tie[1] is None
               else "by another forward than the last recorded one")
        raise RuntimeError(f"{name}.backward was given the gradient of an output produced {why}: it would "
                           "combine that gradient with another batch's inputs. Run the forward again, then the "
                           "loss, then backward")


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def as_input(x, dtype, name="x", ndim=None, features=None) -> np.ndarray:
    """x as a C-contiguous array of ``dtype``: explicit conversion into a new array when needed.

    Only real numbers convert (bool, integers, floats); anything else raises TypeError.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if features is not None and arr.shape[-1] != features:
        raise ValueError(f"{name} must have {features} features in its last dimension, got shape {arr.shape}")
    return np.require(arr, dtype, ["C_CONTIGUOUS", "ALIGNED"])  # a new array only when needed


def _float_input(x, name, ndim=None) -> np.ndarray:
    """For modules without parameters: float32 and float64 inputs keep their dtype, others become float32."""
    dt = np.asarray(x).dtype
    return as_input(x, dt if dt in _FLOAT_DTYPES else np.float32, name, ndim=ndim)


class Parameter:
    """A trainable array: ``.data`` and ``.grad`` are C-contiguous float arrays of one shape; ``.name``."""

    __slots__ = ("_data", "_grad", "name")

    def __init__(self, data, name: str = "", dtype=None):
        arr = np.asarray(data)
        dt = _float_dtype(arr.dtype if dtype is None and arr.dtype in _FLOAT_DTYPES else (dtype or np.float32))
        self._data = np.array(arr, dtype=dt, order="C", copy=True)
        self._grad = np.zeros_like(self._data)
        self.name = name

    def _check(self, value, what: str) -> np.ndarray:
        # The kernels update these arrays in place: a converted copy would make updates vanish.
        if _cuda.is_device_array(self._data):
            if not _cuda.is_device_array(value):
                raise TypeError(f"{self.name or 'parameter'}.{what} is on the GPU: it must be a fuseprop DeviceArray, "
                                f"got {type(value).__name__}")
            if value.dtype != self._data.dtype or value.shape != self._data.shape:
                raise ValueError(f"{self.name or 'parameter'}.{what} must be a {self._data.dtype} DeviceArray of shape "
                                 f"{self._data.shape}, got {value.dtype} {value.shape}")
            if value.readonly:
                raise ValueError(f"{self.name or 'parameter'}.{what} must be writeable, got a read-only array")
            return value
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{self.name or 'parameter'}.{what} must be a numpy.ndarray, got {type(value).__name__}")
        if value.dtype != self._data.dtype:
            raise TypeError(f"{self.name or 'parameter'}.{what} must have dtype {self._data.dtype}, got {value.dtype}")
        if value.shape != self._data.shape:
            raise ValueError(f"{self.name or 'parameter'}.{what} must have shape {self._data.shape}, got {value.shape}")
        for flag, problem in (("C_CONTIGUOUS", "a strided or transposed view"), ("ALIGNED", "an unaligned buffer"),
                              ("WRITEABLE", "a read-only array")):
            if not value.flags[flag]:
                raise ValueError(f"{self.name or 'parameter'}.{what} must be a C-contiguous, aligned, writeable "
                                 f"array, got {problem}")
        return value

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value):
        global _generation
        self._data = self._check(value, "data")
        _generation += 1

    @property
    def grad(self) -> np.ndarray:
        return self._grad

    @grad.setter
    def grad(self, value):
        global _generation
        self._grad = self._check(value, "grad")
        _generation += 1

    @property
    def shape(self):
        return self._data.shape

    @property
    def device(self) -> str:
        """"cpu" (NumPy arrays) or "cuda" (DeviceArrays), as Module.to put it."""
        return "cuda" if _cuda.is_device_array(self._data) else "cpu"

    def _move(self, device: str):
        """data and grad to device ("cpu" or "cuda"), as new arrays there."""
        global _generation
        if device == self.device:
            return
        if device == "cuda":
            self._data, self._grad = _cuda.asarray(self._data), _cuda.asarray(self._grad)
        else:
            self._data, self._grad = self._data.numpy(), self._grad.numpy()
        _generation += 1

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def size(self) -> int:
        return self._data.size

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: owns parameters and submodules (registered by attribute assignment, as PyTorch)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        global _generation
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        # Private plain attributes are bookkeeping (_saved, _tape), not structure.
        if (not name.startswith("_") or isinstance(value, (Parameter, Module)) or name in self._parameters
                or name in self._modules):
            _generation += 1
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            value.name = name
            self._parameters[name] = value
        elif isinstance(value, Module):
            for sub, p in value.named_parameters():
                p.name = f"{name}.{sub}"
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # -- the computation
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x):
        return self.forward(x)

    # -- parameters and modes
    def named_parameters(self, prefix: str = ""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(prefix + name if not prefix else f"{prefix}.{name}")

    def children(self):
        return list(self._modules.values())

    def zero_grad(self):
        for p in self.parameters():
            if p.device == "cuda":
                p.grad.zero_()
            else:
                p.grad.fill(0)

    def to(self, device):
        """Move every parameter (data and grad) to ``device``: "cpu", or "cuda" / "cuda:0" (float32 models
        only). Returns the module. As in PyTorch, create the optimizer after moving the model; an optimizer's
        existing state moves to the GPU at its first step there. On the GPU the model trains with
        ``train_step`` / ``fit`` (the whole step runs there) and runs ``forward`` / ``predict`` /
        ``evaluate``; the per-layer ``backward`` is CPU-only."""
        target = _cuda.parse_device(device)
        params = self.parameters()
        if target == "cuda":
            if not _cuda.is_available():
                raise RuntimeError(f"cannot move the model to {device!r}: {_cuda.status()}")
            wrong = sorted({str(p.dtype) for p in params if p.dtype != np.float32})
            if wrong:
                raise TypeError(f"the CUDA backend is float32 only; this model has {', '.join(wrong)} parameters: "
                                "build it with dtype=np.float32")
        for p in params:
            p._move(target)
        return self

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    @property
    def device(self) -> str:
        """Where the parameters live: "cpu" or "cuda" ("cpu" for a module without parameters)."""
        # Cached until anything moves _generation (a parameter, its arrays or a submodule replaced, or
        # moved): walking every module costs microseconds, on every train_step.
        cached = self.__dict__.get("_device_seen")
        if cached is not None and cached[0] == _generation:
            return cached[1]
        params = self.parameters()
        device = params[0].device if params else "cpu"
        object.__setattr__(self, "_device_seen", (_generation, device))
        return device

    def train(self, mode: bool = True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    # -- the training loop (fuseprop.training): keras-shaped fit / evaluate / predict
    def fit(self, x, y, **kwargs):
        """Train on (x, y) for some epochs; returns a History. See fuseprop.training.fit."""
        from .training import fit  # here: training imports losses and optim, which import nn
        return fit(self, x, y, **kwargs)

    def evaluate(self, x, y, loss=None, batch_size: int = 256) -> dict:
        """{"loss": ..., "accuracy": ... (CrossEntropyLoss)} in eval mode. See fuseprop.training.evaluate."""
        from .training import evaluate
        return evaluate(self, x, y, loss=loss, batch_size=batch_size)

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """The model's outputs for x, in eval mode and in batches. See fuseprop.training.predict."""
        from .training import predict
        return predict(self, x, batch_size=batch_size)

    # -- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter, keyed as PyTorch keys them ("0.weight", "0.bias", ...)."""
        return OrderedDict((name, p.data.numpy() if p.device == "cuda" else p.data.copy())
                           for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy values into the parameters (in place). Every key, shape and dtype is checked before
        anything is written, so a refused state dict changes nothing. Values may be NumPy arrays or
        anything np.asarray accepts (a CPU torch tensor, for instance); floats convert to the
        parameter's dtype."""
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match the model: missing keys {missing}, unexpected keys {unexpected}")
        staged = []
        for name, p in params.items():
            if name not in state_dict:
                continue
            value = np.asarray(state_dict[name])
            if value.dtype.kind != "f":
                raise TypeError(f"state_dict[{name!r}] must hold floats, got dtype {value.dtype}")
            if value.shape != p.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the parameter has {p.shape}")
            staged.append((p, value))
        for p, value in staged:
            if p.device == "cuda":
                p.data.copy_(np.ascontiguousarray(value.astype(p.dtype, casting="same_kind")))
            else:
                np.copyto(p.data, value, casting="same_kind")
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


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
        dt = _float_dtype(dtype)
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

    def forward(self, x):
        if self.weight.device == "cuda":
            return _cuda_forward(self, [(self, None)], x)
        x = as_input(x, self.weight.dtype, "x", ndim=2, features=self.in_features)
        y, _ = F.linear_forward(x, self.weight.data, self.bias.data if self.bias is not None else None)
        number = _record_forward(self, y)
        if number is not None:
            self._saved, self._saved_number = x, number
        return y

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool):
        _cpu_only(self, "backward")
        _check_tape(self, self._saved, self.__dict__.get("_saved_number"), grad_out)
        x = self._saved
        grad_out = as_input(grad_out, self.weight.dtype, "grad_out", ndim=2, features=self.out_features)
        if grad_out.shape[0] != x.shape[0]:
            raise ValueError(f"grad_out must have shape {(x.shape[0], self.out_features)}, got {grad_out.shape}")
        self._saved = _CONSUMED
        grad_x, _, _ = F.linear_backward(grad_out, x, self.weight.data, None, None, "identity",
                                         has_bias=self.bias is not None, need_grad_x=need_input_grad,
                                         grad_weight=self.weight.grad,
                                         grad_bias=self.bias.grad if self.bias is not None else None)
        return grad_x

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _Activation(Module):
    """An elementwise activation: forward keeps (x, y) for backward."""

    activation = "identity"
    negative_slope = 0.01

    def __init__(self):
        super().__init__()
        self._saved = None

    def forward(self, x):
        x = _float_input(x, "x")
        y = F.activation_forward(x, self.activation, self.negative_slope)
        number = _record_forward(self, y)
        if number is not None:
            self._saved, self._saved_number = (x, y), number
        return y

    def backward(self, grad_out):
        _check_tape(self, self._saved, self.__dict__.get("_saved_number"), grad_out)
        x, y = self._saved
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
        x = _float_input(x, "x", ndim=2)
        y = type(self)._forward(x)
        self._saved = y
        return y

    def backward(self, grad_out):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        y = self._saved
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
        x = _float_input(x, "x")
        mask = None
        if self.training and self.p != 0.0:
            mask = _random.resolve(self._generator).random(x.shape, dtype=x.dtype) >= self.p
            mask = mask.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        y = x if mask is None else x * mask
        number = _record_forward(self, y)
        if number is not None:
            self._saved, self._saved_number = (mask,), number
        return y

    def backward(self, grad_out):
        _check_tape(self, self._saved, self.__dict__.get("_saved_number"), grad_out)
        mask, = self._saved
        grad_out = _float_input(grad_out, "grad_out")
        if mask is not None and grad_out.shape != mask.shape:
            raise ValueError(f"grad_out must have shape {mask.shape}, got {grad_out.shape}")
        return grad_out if mask is None else grad_out * mask  # no parameters: the tape stays

    def extra_repr(self):
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order, keyed "0", "1", ... as torch.nn.Sequential.

    A Linear followed by an elementwise activation runs as ONE fused native call (bias and
    activation applied while the GEMM's output tiles are in cache), and its backward as one fused
    call too. The result is the same as running the two modules one after the other.

    ``train_step`` runs the whole step (forward, loss, backward, update) as ONE native call when the
    model is a chain of Linear layers, each optionally followed by one elementwise activation, and
    the loss and optimizer are fuseprop's own (see ``fuseprop._train_plan``); otherwise, or with
    ``fused_train_step = False``, it runs layer by layer. Both compute the same step with the same
    kernels.
    """

    fused_train_step = True  # False: always take the per-layer path (to compare, or to debug)
    _fused = None  # the FusedStep of the last train_step's (loss_fn, optimizer)

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, got {type(m).__name__} at position {i}")
            setattr(self, str(i), m)
        self._tape = None

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append takes a Module, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def _segments(self):
        """[(linear, activation_module or None) | (module, None)], fusing Linear + elementwise activation."""
        mods, segs, i = list(self._modules.values()), [], 0
        while i < len(mods):
            m = mods[i]
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(m, Linear) and isinstance(nxt, _Activation):
                segs.append((m, nxt))
                i += 2
            else:
                segs.append((m, None))
                i += 1
        return segs

    def forward(self, x):
        if self.device == "cuda":
            from ._train_plan import layer_chain  # here: _train_plan imports nn
            chain = layer_chain(self)
            if isinstance(chain, str):
                raise NotImplementedError(f"on CUDA, a Sequential must be a chain of Linear layers, each optionally "
                                          f"followed by one elementwise activation: {chain}")
            self._tape = None
            return _cuda_forward(self, chain, x)
        tape = []
        for m, act in self._segments():
            if act is None:
                x = m(x)
                tape.append((m, None, None))
                continue
            x = as_input(x, m.weight.dtype, "x", ndim=2, features=m.in_features)
            y, z = F.linear_forward(x, m.weight.data, m.bias.data if m.bias is not None else None,
                                    act.activation, act.negative_slope)
            tape.append((m, act, (x, z, y)))
            x = y
        number = _record_forward(self, x)
        if number is not None:
            self._tape, self._tape_number = tape, number
        return x

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool, done=None):
        """done(module), if given, is called as soon as a module's parameter gradients are written, from
        the output back to the input (fuseprop.distributed starts each bucket's all-reduce there)."""
        _cpu_only(self, "backward")
        _check_tape(self, self._tape, self.__dict__.get("_tape_number"), grad_out)
        # A view of grad_out (the same memory, another object) for the layers: checked here once, it is
        # this forward's, and must not read as another module's gradient to the last layer's own check.
        tape, g = self._tape, grad_out.view() if isinstance(grad_out, np.ndarray) else grad_out
        for i in range(len(tape) - 1, -1, -1):
            m, act, saved = tape[i]
            need = need_input_grad or i > 0
            if act is None:
                g = m._backward(g, need) if isinstance(m, (Linear, Sequential)) else m.backward(g)
            else:
                x, z, y = saved
                g = as_input(g, y.dtype, "grad_out", ndim=2)
                if g.shape != y.shape:
                    raise ValueError(f"grad_out must have shape {y.shape}, got {g.shape}")
                g, _, _ = F.linear_backward(g, x, m.weight.data, z, y, act.activation, act.negative_slope,
                                            has_bias=m.bias is not None, need_grad_x=need, grad_weight=m.weight.grad,
                                            grad_bias=m.bias.grad if m.bias is not None else None)
            if i == len(tape) - 1:  # the output layer took grad_out and wrote its gradients: used once
                object.__setattr__(self, "_tape", _CONSUMED)
            if done is not None:
                done(m)
        return g

    @property
    def train_plan(self):
        """The native plan (``fuseprop._C.TrainPlan``: ``steps``, ``allocations``, ``capacity``) that
        ``train_step`` runs for the last loss and optimizer it was given, or None when it runs layer by layer."""
        return self._fused.plan if self.fused_train_step and self._fused is not None else None

    def __getstate__(self):  # copies and pickles leave the native plan behind; the next train_step rebuilds it
        state = self.__dict__.copy()
        state.pop("_fused", None)
        state.pop("_cuda_inference", None)
        return state

    def _fused_for(self, loss_fn, optimizer):
        """The FusedStep (on CUDA: CudaStep) of this loss and optimizer, made when they change; None when
        fused_train_step is off on the CPU."""
        on_cuda = self.device == "cuda"
        if not self.fused_train_step and not on_cuda:
            return None
        fused = self._fused
        if (fused is None or fused.loss_fn is not loss_fn or fused.optimizer is not optimizer
                or fused.on_cuda != on_cuda):
            if on_cuda:
                from ._cuda_step import CudaStep
                fused = self._fused = CudaStep(loss_fn, optimizer)
            else:
                from ._train_plan import FusedStep  # here: it imports losses and optim, which import nn
                fused = self._fused = FusedStep(loss_fn, optimizer)
        return fused

    def _fused_step(self, x, y, loss_fn, optimizer, max_grad_norm=None):
        """train_step as one native call (optionally clipping the gradients' global norm): its loss, or
        None when it needs the per-layer path."""
        fused = self._fused_for(loss_fn, optimizer)
        if fused is None:
            return None
        loss = fused.step(self, x, y, max_grad_norm)
        if loss is None and fused.on_cuda:
            raise NotImplementedError(f"this step cannot run on CUDA: {fused.why_not}")
        return loss

    def train_step(self, x, y, loss_fn, optimizer) -> float:
        """One training step: zero the gradients, forward, loss, backward, optimizer update. Returns the loss.

        Raises FloatingPointError, without touching the weights, when the loss or a gradient is not finite;
        and, after the fact, when the update itself overflowed (weights overwritten).
        """
        loss = self._fused_step(x, y, loss_fn, optimizer)
        if loss is not None:
            return loss
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"train_step needs a non-empty batch, got x of shape {x.shape}")
        self.zero_grad()
        out = self.forward(x)
        loss = loss_fn(out, y)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss}; the weights were not updated")
        self._backward(loss_fn.backward(), need_input_grad=False)
        for name, p in self.named_parameters():
            if not np.isfinite(p.grad).all():
                raise FloatingPointError(f"the gradient of {name} is not finite; the weights were not updated")
        optimizer.step()
        for name, p in self.named_parameters():
            if not np.isfinite(p.data).all():
                # The update is written in place: undoing it would cost a copy of every weight per step.
                raise FloatingPointError(f"the optimizer update made {name} non-finite (is the learning rate too "
                                         "large?); the weights were overwritten: reload them from a checkpoint")
        return loss


def _cpu_only(module, what: str):
    if module.device == "cuda":
        raise NotImplementedError(f"{type(module).__name__}.{what} runs on the CPU only; on CUDA the whole step runs in "
                                  "train_step / fit (or move the model back with .to('cpu'))")


def _cuda_forward(module, chain, x):
    """The output (a DeviceArray) of a chain [(Linear, activation or None)] on the GPU, for inference. The
    plan (only its forward is used) is cached on the module until the model changes."""
    from . import _C
    cached = module.__dict__.get("_cuda_inference")
    if cached is None or cached[0] != (_generation, _cuda.allow_tf32):
        layers, params = [], []
        for lin, act in chain:
            layers.append((act.activation if act is not None else "identity",
                           act.negative_slope if act is not None else 0.01, lin.bias is not None))
            for name, p in lin.named_parameters():
                params.append((f"{lin.__class__.__name__}.{name}", p.data, p.grad, None, None, 0))
        # A plan whose step never runs: "mse" and plain SGD need no optimizer state.
        plan = _C.CudaTrainPlan(layers, params, loss="mse", optimizer="sgd", tf32=bool(_cuda.allow_tf32))
        cached = ((_generation, _cuda.allow_tf32), plan)
        object.__setattr__(module, "_cuda_inference", cached)
    if not _cuda.is_device_array(x) and not hasattr(x, "__dlpack_device__"):
        x = as_input(x, np.float32, "x", ndim=2, features=chain[0][0].in_features)
    else:
        x = _cuda.asarray(x, np.float32)
    return cached[1].forward(x)


from . import _nn_utils as utils  # noqa: E402  (fuseprop.nn.utils.clip_grad_norm_ as torch.nn.utils)
