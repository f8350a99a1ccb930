"""Module: the base of every layer, shaped like torch.nn.Module (parameters and submodules registered
by attribute assignment, train/eval modes, state dicts, devices), plus the protocol the rest of fuseprop
talks to a model through:

- ``forward`` / ``__call__`` and ``backward(grad_out)``: the gradient with respect to the input; parameter
  gradients ACCUMULATE into ``param.grad`` (+=), as in PyTorch, until ``zero_grad()``;
- ``_backward(grad_out, need_input_grad, done)``: the backward the training step calls (done(module) once
  the module's parameter gradients are written; DataParallel starts all-reduces there);
- ``native_layer()``: how the layer runs inside a native plan (fuseprop.engine.protocol), or None;
- ``train_step`` (THE per-layer step, fuseprop.engine.step, unless a native plan takes the step), and
  keras' ``fit`` / ``evaluate`` / ``predict`` (fuseprop.training).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import cuda
from .. import training as _training
from .._arrays import Parameter, generation, touch
from .._tape import CONSUMED, check_tape, record_forward
from ..engine.step import per_layer_step

__all__ = ["Module"]


class Module:
    """Base class: owns parameters and submodules (registered by attribute assignment, as PyTorch)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        # Private plain attributes are bookkeeping (_saved, _tape), not structure.
        if (not name.startswith("_") or isinstance(value, (Parameter, Module)) or name in self._parameters
                or name in self._modules):
            touch()
        if name in self.__dict__.get("_buffers", ()):
            touch()
            self._buffers[name] = _checked_buffer(name, value, self._buffers[name])
            object.__setattr__(self, name, self._buffers[name])
            return
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

    def _backward(self, grad_out, need_input_grad: bool = True, done=None):
        """backward as the training step calls it: need_input_grad False lets a layer skip the input's
        gradient (the first layer's); done(self), if given, once this module's parameter gradients are written."""
        grad = self.backward(grad_out)
        if done is not None:
            done(self)
        return grad

    def native_layer(self):
        """This layer as a native plan runs it (a fuseprop.engine.NativeLayer), or None: it has no native form."""
        return None

    # -- the tape (fuseprop._tape): what a layer's forward keeps for its backward
    def _keep(self, y, saved):
        """Numbers this forward of output y and, unless recording is off (no_grad), keeps saved for the
        backward; returns y."""
        number = record_forward(self, y)
        if number is not None:
            self._saved, self._saved_number = saved, number
        return y

    def _kept(self, grad_out):
        """What the forward kept, once check_tape allows a backward with grad_out."""
        check_tape(self, self.__dict__.get("_saved"), self.__dict__.get("_saved_number"), grad_out)
        return self._saved

    def _spend(self):
        """This backward added parameter gradients: a second one for the same forward would add them again."""
        self._saved = CONSUMED

    # -- the step: one native call where a plan takes it (Sequential), else layer by layer
    train_plan = None  # the native plan train_step runs (Sequential), or None

    def _fused_for(self, loss_fn, optimizer):
        """The native plan step for this loss and optimizer, or None (layer by layer)."""
        return None

    def _fused_step(self, x, y, loss_fn, optimizer, max_grad_norm=None):
        """train_step as one native call: its loss, or None when it runs layer by layer."""
        return None

    def _forget_tape(self):
        """A native step ran: what the last per-layer forward recorded is stale (a container drops it)."""

    def train_step(self, x, y, loss_fn, optimizer) -> float:
        """One training step: zero the gradients, forward, loss, backward, optimizer update. Returns the loss.

        Raises FloatingPointError, without touching the weights, when the loss or a gradient is not finite;
        and, after the fact, when the update itself overflowed (weights overwritten).
        """
        loss = self._fused_step(x, y, loss_fn, optimizer)
        if loss is not None:
            return loss
        return per_layer_step(self, np.asarray(x), y, loss_fn, optimizer)[0]

    # -- parameters and modes
    def named_parameters(self, prefix: str = ""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def register_buffer(self, name: str, array):
        """State that is not trained but belongs to the model (BatchNorm's running statistics): a NumPy
        array, in state_dict() and checkpoints under its dotted name, as torch's buffers."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"buffer {name!r} must be a numpy.ndarray, got {type(array).__name__}")
        if name in self._parameters or name in self._modules:
            raise KeyError(f"{name!r} is already a parameter or a submodule of {type(self).__name__}")
        touch()
        self._buffers[name] = np.require(array, None, ["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"])
        object.__setattr__(self, name, self._buffers[name])

    def named_buffers(self, prefix: str = ""):
        for name, b in self._buffers.items():
            yield prefix + name, b
        for name, m in self._modules.items():
            yield from m.named_buffers(prefix + name + ".")

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def _state_items(self, prefix: str = ""):
        """(name, array, what) in PyTorch's state-dict order: a module's parameters, its buffers, then its
        children's, depth first."""
        for name, p in self._parameters.items():
            yield prefix + name, p, "parameter"
        for name, b in self._buffers.items():
            yield prefix + name, b, "buffer"
        for name, m in self._modules.items():
            yield from m._state_items(prefix + name + ".")

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
        target = cuda.parse_device(device)
        params = self.parameters()
        if target == "cuda":
            if not cuda.is_available():
                raise RuntimeError(f"cannot move the model to {device!r}: {cuda.status()}")
            wrong = sorted({str(p.dtype) for p in params if p.dtype != np.float32})
            if wrong:
                raise TypeError(f"the CUDA backend is float32 only; this model has {', '.join(wrong)} parameters: "
                                "build it with dtype=np.float32")
            with_state = [f"{name or type(self).__name__} ({type(m).__name__})" for name, m in self.named_modules()
                          if m._buffers]
            if with_state:  # running statistics have no device form yet: the model would be half on the GPU
                raise NotImplementedError(f"cannot move the model to {device!r}: {', '.join(with_state)} keeps "
                                          "buffers, which run on the CPU only")
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
        # Cached until anything moves the model generation (a parameter, its arrays or a submodule replaced, or
        # moved): walking every module costs microseconds, on every train_step.
        cached = self.__dict__.get("_device_seen")
        if cached is not None and cached[0] == generation():
            return cached[1]
        params = self.parameters()
        device = params[0].device if params else "cpu"
        object.__setattr__(self, "_device_seen", (generation(), device))
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
        return _training.fit(self, x, y, **kwargs)

    def evaluate(self, x, y, loss=None, batch_size: int = 256) -> dict:
        """{"loss": ..., "accuracy": ... (CrossEntropyLoss)} in eval mode. See fuseprop.training.evaluate."""
        return _training.evaluate(self, x, y, loss=loss, batch_size=batch_size)

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """The model's outputs for x, in eval mode and in batches. See fuseprop.training.predict."""
        return _training.predict(self, x, batch_size=batch_size)

    # -- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed and ordered as PyTorch keys them ("0.weight",
        "0.bias", "1.running_mean", ...)."""
        out = OrderedDict()
        for name, value, what in self._state_items():
            if what == "buffer":
                out[name] = value.copy()
            else:
                out[name] = value.data.numpy() if value.device == "cuda" else value.data.copy()
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy values into the parameters (in place). Every key, shape and dtype is checked before
        anything is written, so a refused state dict changes nothing.

        Values may be NumPy arrays or torch tensors (any device, with or without ``requires_grad``: so
        ``dict(torch_model.named_parameters())`` loads too). A value that carries a dtype must have the
        parameter's dtype exactly: a float64 value for a float32 parameter, or an integer array, raises
        TypeError naming the key and both dtypes instead of being cast (cast it yourself, knowing what
        it loses). Plain Python lists and numbers carry no dtype: they convert to the parameter's, and
        one too large for it raises ValueError."""
        targets = {name: (value, what) for name, value, what in self._state_items()}
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict does not match the model: missing keys {missing}, unexpected keys {unexpected}")
        staged = []
        for name, (target, what) in targets.items():
            if name in state_dict:
                like = target if what == "buffer" else target.data
                staged.append((target, what, _state_value(name, state_dict[name], like, what)))
        for target, what, value in staged:
            if what == "buffer":
                np.copyto(target, value)  # in place: a layer's own reference to it stays valid
            elif target.device == "cuda":
                target.data.copy_(np.ascontiguousarray(value))
            else:
                np.copyto(target.data, value)
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _checked_buffer(name: str, value, old) -> np.ndarray:
    """A new value assigned to a registered buffer: an ndarray of the old one's dtype (a layer keeps its
    buffers' dtypes: float statistics, int64 counts); any shape (torch allows resizing a buffer)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"buffer {name!r} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype != old.dtype:
        raise TypeError(f"buffer {name!r} must have dtype {old.dtype}, got {value.dtype}")
    return np.require(value, None, ["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"])


def _state_value(name: str, value, p, what: str = "parameter") -> np.ndarray:
    """state_dict[name] as a NumPy array of p's dtype and shape (p: a parameter's data or a buffer), or
    the reason it is refused."""
    if not isinstance(value, np.ndarray) and callable(getattr(value, "detach", None)) and hasattr(value, "numpy"):
        try:  # a torch tensor: its values, whatever its device or requires_grad
            value = value.detach().cpu().numpy()
        except TypeError:  # a dtype NumPy has no twin for (bfloat16)
            raise TypeError(f"state_dict[{name!r}] has dtype {value.dtype}, the {what} has dtype {p.dtype}: "
                            "load_state_dict does not cast (convert it first)") from None
    if isinstance(value, (list, tuple, int, float)) and not isinstance(value, bool):
        # No dtype to disagree with: the numbers, in the parameter's dtype.
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"state_dict[{name!r}] must hold real numbers, got {arr.dtype} values")
        with np.errstate(over="ignore"):
            converted = arr.astype(p.dtype)
        if np.isfinite(arr).all() and not np.isfinite(converted).all():
            raise ValueError(f"state_dict[{name!r}] holds values too large for the {what}'s dtype {p.dtype}")
        value = converted
    value = np.asarray(value)
    if value.dtype != p.dtype:
        raise TypeError(f"state_dict[{name!r}] has dtype {value.dtype}, the {what} has dtype {p.dtype}: "
                        f"load_state_dict does not cast (convert it first, e.g. .astype(np.{p.dtype}))")
    if value.shape != p.shape:
        raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the {what} has {p.shape}")
    return value


def cpu_only(module, what: str):
    if module.device == "cuda":
        raise NotImplementedError(f"{type(module).__name__}.{what} runs on the CPU only; on CUDA the whole step runs in "
                                  "train_step / fit (or move the model back with .to('cpu'))")
