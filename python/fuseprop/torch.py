"""fuseprop.torch: fuseprop models in PyTorch and PyTorch models in fuseprop (needs torch: the ``torch`` extra).

- ``to_torch(model)``: the torch.nn twin of a fuseprop model (a ``torch.nn.Sequential`` for a Sequential),
  with copies of its weights, in its dtype, with the same state-dict keys and training modes;
- ``from_torch(module)``: the fuseprop twin of a torch.nn module built from the layers fuseprop has;
- ``state_dict_to_torch(state_dict)``: ``model.state_dict()`` (NumPy arrays) as torch tensors, for
  ``torch_model.load_state_dict``. The other way needs nothing: ``model.load_state_dict`` takes torch
  tensors (``torch_model.state_dict()``, or ``dict(torch_model.named_parameters())``) of the model's dtype;
- ``TorchModule(model)``: a ``torch.nn.Module`` whose forward and backward run fuseprop's kernels, so a
  fuseprop network trains inside a larger PyTorch model (see its docstring for the rules).

The twins, both ways: Sequential (nested too), Linear, Conv2d (groups 1, zero padding), BatchNorm1d,
BatchNorm2d, LayerNorm (parameters and buffers), RNN, LSTM and GRU (one direction, no dropout or projection;
their torch twins are subclasses of torch.nn.RNN / LSTM / GRU, with the same keys, whose forward returns the
whole output or its last step as ours does: return_sequences), MaxPool2d, AvgPool2d, Flatten, Identity, ReLU, LeakyReLU,
Sigmoid, Tanh, GELU ("none" or "tanh"), Softmax and LogSoftmax (over the last axis of a 2-D input: dim -1
or 1), Dropout.
Anything else (a subclass included: it may compute something else) raises TypeError naming the module.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from . import nn
from ._tape import enable_grad, last_forward

__all__ = ["to_torch", "from_torch", "state_dict_to_torch", "TorchModule"]

_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

# The parameterless layers, as (fuseprop type, torch type, fuseprop -> torch, torch -> fuseprop).
_ACTIVATIONS = [
    (nn.Identity, torch.nn.Identity, lambda m: torch.nn.Identity(), lambda t: nn.Identity()),
    (nn.ReLU, torch.nn.ReLU, lambda m: torch.nn.ReLU(), lambda t: nn.ReLU()),
    (nn.LeakyReLU, torch.nn.LeakyReLU, lambda m: torch.nn.LeakyReLU(m.negative_slope),
     lambda t: nn.LeakyReLU(t.negative_slope)),
    (nn.Sigmoid, torch.nn.Sigmoid, lambda m: torch.nn.Sigmoid(), lambda t: nn.Sigmoid()),
    (nn.Tanh, torch.nn.Tanh, lambda m: torch.nn.Tanh(), lambda t: nn.Tanh()),
    (nn.GELU, torch.nn.GELU, lambda m: torch.nn.GELU(approximate=m.approximate), lambda t: nn.GELU(t.approximate)),
    (nn.Softmax, torch.nn.Softmax, lambda m: torch.nn.Softmax(dim=m.dim), lambda t: nn.Softmax(_dim(t))),
    (nn.LogSoftmax, torch.nn.LogSoftmax, lambda m: torch.nn.LogSoftmax(dim=m.dim), lambda t: nn.LogSoftmax(_dim(t))),
    (nn.Dropout, torch.nn.Dropout, lambda m: torch.nn.Dropout(m.p), lambda t: nn.Dropout(t.p)),
]
_ACTIVATIONS += [
    (nn.MaxPool2d, torch.nn.MaxPool2d, lambda m: torch.nn.MaxPool2d(m.kernel_size, m.stride, m.padding),
     lambda t: nn.MaxPool2d(t.kernel_size, t.stride, t.padding, t.dilation, t.return_indices, t.ceil_mode)),
    (nn.AvgPool2d, torch.nn.AvgPool2d,
     lambda m: torch.nn.AvgPool2d(m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad),
     lambda t: nn.AvgPool2d(t.kernel_size, t.stride, t.padding, t.ceil_mode, t.count_include_pad, t.divisor_override)),
    (nn.Flatten, torch.nn.Flatten, lambda m: torch.nn.Flatten(m.start_dim, m.end_dim),
     lambda t: nn.Flatten(t.start_dim, t.end_dim)),
]


def _conv_from_torch(t, dtype, generator):
    if t.groups != 1 or t.padding_mode != "zeros" or isinstance(t.padding, str):
        raise ValueError("fuseprop's Conv2d has groups=1, zero padding given as numbers (no 'same' / 'valid', "
                         f"no padding_mode {t.padding_mode!r})")
    return nn.Conv2d(t.in_channels, t.out_channels, t.kernel_size, t.stride, t.padding, t.dilation,
                     bias=t.bias is not None, dtype=dtype, generator=generator)


def _batch_norm_args(m):
    return dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                track_running_stats=m.track_running_stats)


# The layers with state (parameters, buffers), as (fuseprop type, torch type, fuseprop -> torch (made with
# skip_init: no random draws), torch -> fuseprop (a throwaway generator for the values the state overwrites)).
_STATEFUL = [
    (nn.Linear, torch.nn.Linear,
     lambda m, dtype: torch.nn.utils.skip_init(torch.nn.Linear, m.in_features, m.out_features,
                                               bias=m.bias is not None, dtype=dtype),
     lambda t, dtype, gen: nn.Linear(t.in_features, t.out_features, bias=t.bias is not None, dtype=dtype,
                                     generator=gen)),
    (nn.Conv2d, torch.nn.Conv2d,
     lambda m, dtype: torch.nn.utils.skip_init(torch.nn.Conv2d, m.in_channels, m.out_channels, m.kernel_size,
                                               stride=m.stride, padding=m.padding, dilation=m.dilation,
                                               bias=m.bias is not None, dtype=dtype),
     _conv_from_torch),
    (nn.BatchNorm1d, torch.nn.BatchNorm1d,
     lambda m, dtype: torch.nn.utils.skip_init(torch.nn.BatchNorm1d, **_batch_norm_args(m), dtype=dtype),
     lambda t, dtype, gen: nn.BatchNorm1d(**_batch_norm_args(t), dtype=dtype)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d,
     lambda m, dtype: torch.nn.utils.skip_init(torch.nn.BatchNorm2d, **_batch_norm_args(m), dtype=dtype),
     lambda t, dtype, gen: nn.BatchNorm2d(**_batch_norm_args(t), dtype=dtype)),
    (nn.LayerNorm, torch.nn.LayerNorm,
     lambda m, dtype: torch.nn.utils.skip_init(torch.nn.LayerNorm, m.normalized_shape, eps=m.eps,
                                               elementwise_affine=m.elementwise_affine,
                                               bias=m.bias is not None or not m.elementwise_affine, dtype=dtype),
     lambda t, dtype, gen: nn.LayerNorm(t.normalized_shape, eps=t.eps, elementwise_affine=t.elementwise_affine,
                                        bias=t.bias is not None or not t.elementwise_affine, dtype=dtype)),
]


# The recurrent layers. torch.nn.RNN / LSTM / GRU return (output, state), which no torch.nn.Sequential can pass
# on; their twins are subclasses (the same parameters and state-dict keys) whose forward returns what ours
# returns: the whole output with return_sequences, else its last step (the last layer's final state).
def _recurrent_twin(base):
    class Twin(base):
        def __init__(self, *args, return_sequences: bool = False, device=None, **kwargs):  # device: skip_init's
            super().__init__(*args, device=device, **kwargs)
            self.return_sequences = return_sequences

        def forward(self, x, hx=None):
            out, _ = super().forward(x, hx)
            if self.return_sequences:
                return out
            return out[:, -1] if self.batch_first else out[-1]

    Twin.__name__ = Twin.__qualname__ = base.__name__
    Twin.__module__ = __name__
    return Twin


_RECURRENT_TWINS = {nn.RNN: _recurrent_twin(torch.nn.RNN), nn.LSTM: _recurrent_twin(torch.nn.LSTM),
                    nn.GRU: _recurrent_twin(torch.nn.GRU)}


def _recurrent_to_torch(m, dtype):
    kwargs = dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
                  return_sequences=m.return_sequences, dtype=dtype)
    if type(m) is nn.RNN:
        kwargs["nonlinearity"] = m.nonlinearity
    return torch.nn.utils.skip_init(_RECURRENT_TWINS[type(m)], m.input_size, m.hidden_size, **kwargs)


def _recurrent_from_torch(ours):
    def make(t, dtype, gen):
        if t.bidirectional or t.dropout or getattr(t, "proj_size", 0):
            raise ValueError("fuseprop's recurrent layers are one-directional, without dropout between layers or "
                             f"projections (got bidirectional={t.bidirectional}, dropout={t.dropout}, "
                             f"proj_size={getattr(t, 'proj_size', 0)})")
        # torch's own layer returns its whole output: return_sequences=True, unless it is our twin
        kwargs = dict(num_layers=t.num_layers, bias=t.bias, batch_first=t.batch_first,
                      return_sequences=getattr(t, "return_sequences", True), dtype=dtype, generator=gen)
        if ours is nn.RNN:
            kwargs["nonlinearity"] = t.nonlinearity
        return ours(t.input_size, t.hidden_size, **kwargs)
    return make


_STATEFUL += [(ours, twin, _recurrent_to_torch, _recurrent_from_torch(ours)) for ours, twin in _RECURRENT_TWINS.items()]

_TO_TORCH = {ours: make for ours, _, make, _ in _ACTIVATIONS}
_FROM_TORCH = {theirs: make for _, theirs, _, make in _ACTIVATIONS}
_STATEFUL_TO = {ours: make for ours, _, make, _ in _STATEFUL}
_STATEFUL_FROM = {theirs: make for _, theirs, _, make in _STATEFUL}
# torch's own recurrent layers too (their whole output: return_sequences)
_STATEFUL_FROM.update({getattr(torch.nn, ours.__name__): _recurrent_from_torch(ours) for ours in _RECURRENT_TWINS})
_SUPPORTED = "Sequential, " + ", ".join(ours.__name__ for ours, *_ in _STATEFUL + _ACTIVATIONS)


def _where(path: str) -> str:
    return f"module {path!r}" if path else "the model"


def _dim(t):
    """The axis of a torch Softmax / LogSoftmax, refusing the implicit one (dim=None)."""
    if t.dim is None:
        raise ValueError(f"torch.nn.{type(t).__name__}(dim=None) picks its axis from the input's rank; fuseprop "
                         "needs it stated: dim=-1 or dim=1 (the last axis of a 2-D input)")
    return t.dim


def to_torch(model):
    """The torch.nn twin of ``model``: a ``torch.nn.Sequential`` for a Sequential (nested ones nested, the
    same keys, so the state dicts match key for key), ``torch.nn.Linear`` for a Linear, and so on; with
    copies of the weights, in the model's dtype, on the CPU, and each module's training mode. Raises
    TypeError for a module that has no twin (a subclass included: it may compute something else)."""
    return _to_torch(model, "")


def _to_torch(m, path: str):
    kind = type(m)
    if kind is nn.Sequential:
        twin = torch.nn.Sequential(OrderedDict(
            (name, _to_torch(child, f"{path}.{name}" if path else name)) for name, child in m._modules.items()))
    elif kind in _STATEFUL_TO:
        state = m.state_dict()
        dtype = _TORCH_DTYPES[np.dtype(getattr(m, "_dtype", None) or m.weight.dtype)]
        # skip_init: no random initialisation to overwrite, and torch's generator is left where it was.
        twin = _STATEFUL_TO[kind](m, dtype)
        twin.load_state_dict(state_dict_to_torch(state))
    elif kind in _TO_TORCH:
        twin = _TO_TORCH[kind](m)
    else:
        raise TypeError(f"to_torch: {_where(path)} is a {kind.__module__}.{kind.__qualname__}, which has no "
                        f"torch.nn twin here (supported: {_SUPPORTED})")
    twin.training = m.training
    return twin


def from_torch(module):
    """The fuseprop twin of a torch.nn module built of the layers fuseprop has (``torch.nn.Sequential``
    nested as it is, its children numbered "0", "1", ... as fuseprop's Sequential keys them), with copies
    of the weights (float32 or float64, as the torch layer's), and each module's training mode. Raises
    TypeError naming the first module fuseprop has no layer for."""
    return _from_torch(module, "")


def _from_torch(t, path: str):
    kind = type(t)
    if kind is torch.nn.Sequential:
        ours = nn.Sequential(*(_from_torch(child, f"{path}.{name}" if path else name)
                               for name, child in t.named_children()))
    elif kind in _STATEFUL_FROM:
        floats = [v.dtype for v in t.state_dict().values() if v.is_floating_point()] or [torch.float32]
        if floats[0] not in (torch.float32, torch.float64):
            raise TypeError(f"from_torch: {_where(path)} (torch.nn.{kind.__name__}) is {floats[0]}; fuseprop layers "
                            "are float32 or float64")
        state = {k: v.detach().cpu().numpy() for k, v in t.state_dict().items()}
        dtype = np.dtype(np.float32) if floats[0] == torch.float32 else np.dtype(np.float64)
        try:
            # A throwaway generator for the initial values load_state_dict overwrites: fuseprop's stream is untouched.
            ours = _STATEFUL_FROM[kind](t, dtype, np.random.default_rng(0))
        except (ValueError, NotImplementedError) as e:
            raise ValueError(f"from_torch: {_where(path)} (torch.nn.{kind.__name__}): {e}") from None
        ours.load_state_dict(state)
    elif kind in _FROM_TORCH:
        try:
            ours = _FROM_TORCH[kind](t)
        except (ValueError, NotImplementedError) as e:
            raise ValueError(f"from_torch: {_where(path)} (torch.nn.{kind.__name__}): {e}") from None
    else:
        raise TypeError(f"from_torch: {_where(path)} is a {kind.__module__}.{kind.__qualname__}, which fuseprop has "
                        f"no layer for (supported: torch.nn.{_SUPPORTED.replace(', ', ', torch.nn.')})")
    ours.training = t.training
    return ours


def state_dict_to_torch(state_dict) -> "OrderedDict[str, torch.Tensor]":
    """A fuseprop state dict (or a model's: pass the model) as CPU torch tensors of the same dtypes, sharing
    the arrays' memory (``model.state_dict()`` returns copies), ready for ``torch_model.load_state_dict``."""
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    out = OrderedDict()
    for name, value in state_dict.items():
        arr = np.asarray(value)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, order="C")  # torch.from_numpy takes only writeable memory
        out[name] = torch.from_numpy(arr)
    return out


# -------------------------------------------------------------------------------------------------
# A fuseprop model as a torch.nn.Module

_DETERMINISTIC = (nn.Sequential, nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Softmax, nn.LogSoftmax, nn.RNN, nn.LSTM,
                  nn.GRU) + tuple(
    ours for ours, *_ in _ACTIVATIONS if ours is not nn.Dropout)


def _replay_refusal(model) -> str | None:
    """Why running model's forward again on the same input could give another result (None: it cannot)."""
    for path, m in model.named_modules():
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) and not (m.training and m.track_running_stats):
            continue  # no running statistics to update twice
        if type(m) is nn.Dropout and (not m.training or m.p == 0.0):
            continue
        if type(m) not in _DETERMINISTIC:
            what = ("draws a new dropout mask" if type(m) is nn.Dropout else
                    "would update its running statistics twice" if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) else
                    "is not known to compute the same twice")
            return f"{_where(path)} ({type(m).__name__}) {what}"
    return None


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """t's values as a NumPy array: its own memory when t is contiguous, else a contiguous copy."""
    return t.detach().contiguous().numpy()


def _as_tensor(arr: np.ndarray, *inputs: np.ndarray) -> torch.Tensor:
    """arr as a tensor on its memory; a copy when that memory is read-only or may belong to one of inputs
    (an identity layer hands its input back): an output must not alias what autograd holds elsewhere."""
    if not arr.flags.writeable or any(np.may_share_memory(arr, a) for a in inputs):
        arr = arr.copy()
    return torch.from_numpy(arr)


class _FuseropFunction(torch.autograd.Function):
    """y = model(x): forward runs model.forward (recording its tape), backward runs model.backward."""

    @staticmethod
    def forward(ctx, x, wrapper, *params):
        x_np = _as_numpy(x)
        with enable_grad():
            y = wrapper.model(x_np)
        out = _as_tensor(y, x_np)
        wrapper._forwards += 1
        ctx.wrapper, ctx.x_np = wrapper, x_np
        ctx.tape = (wrapper._forwards, last_forward(wrapper.model))
        wrapper._live = ctx.tape if ctx.tape[1] is not None else None
        # Saved so that torch refuses this backward when any of them was changed in place since (an optimizer
        # step on the weights, an in-place op on the input or output): the tape would not match them.
        ctx.save_for_backward(x, out, *params)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        wrapper = ctx.wrapper
        model = wrapper.model
        _ = ctx.saved_tensors  # raises if the input, the output or a weight was modified in place since the forward
        if wrapper._live != ctx.tape or last_forward(model) != ctx.tape[1]:
            # The model's tape holds another forward (the wrapper ran again, or its backward ran already): run
            # this forward again, on the same input and weights, when that is sure to give the same result.
            why = _replay_refusal(model)
            if why is not None:
                raise RuntimeError(
                    "fuseprop.torch.TorchModule: this backward belongs to an earlier forward than the model's last "
                    f"one (or its backward ran already), and its forward cannot be run again because {why}. Run "
                    "each forward's backward before the next forward (or use eval mode)")
            with enable_grad():
                model(ctx.x_np)
        wrapper._live = None  # the tape is used: a further backward runs the forward again
        g = _as_numpy(grad_out)
        params = [p for _, p, _ in wrapper._pairs]
        for p in params:  # fuseprop accumulates into p.grad: from zero, it holds this backward's gradient alone
            p.grad.fill(0)
        need_x = ctx.needs_input_grad[0]
        grad_x = model._backward(g, need_x)
        # torch accumulates what backward returns into each Parameter's .grad: copies, as p.grad is reused.
        grads = [torch.from_numpy(p.grad.copy()) if need else None
                 for p, need in zip(params, ctx.needs_input_grad[2:])]
        return (_as_tensor(np.asarray(grad_x), g) if need_x else None, None, *grads)


class TorchModule(torch.nn.Module):
    """A fuseprop model as a ``torch.nn.Module``: its forward and backward run fuseprop's kernels on CPU
    tensors, so the fuseprop network trains inside a larger PyTorch model, with torch optimizers.

    - Its parameters are ``torch.nn.Parameter``s on the fuseprop parameters' memory (``torch.from_numpy``),
      keyed as ``model.state_dict()`` keys them: a torch optimizer updates fuseprop's weights in place, and
      ``wrapper.state_dict()`` / ``load_state_dict`` read and write them. Replacing either side's array
      (``param.data = ...`` in fuseprop, ``.data =`` / ``.to()`` / ``.double()`` in torch, ``model.to("cuda")``)
      ends the sharing: the next forward raises instead of computing with weights torch no longer sees.
    - The input must be a CPU tensor of the model's dtype (no silent cast). A contiguous input reaches the
      kernels as it is (``tensor.numpy()``: no copy), a non-contiguous one as a contiguous copy, as torch's
      own kernels take it. The output is a tensor on the array fuseprop wrote (no copy).
    - Backward follows torch's rules: it returns this backward's gradients, and torch accumulates them into
      each Parameter's ``.grad`` (``optimizer.zero_grad()`` clears them). fuseprop's ``param.grad`` arrays
      are its scratch space: zeroed before each backward, they hold the last backward's gradient.
    - fuseprop's model keeps ONE tape: that of its last forward. A backward whose forward is no longer the
      last one (the wrapper called twice before backward, or ``backward(retain_graph=True)`` run twice)
      runs that forward again, on the same input and weights, then its backward: the same numbers, at the
      cost of one more forward. Where running it again could give other numbers (a Dropout in training
      mode, a module fuseprop cannot vouch for), that backward raises RuntimeError instead. torch refuses
      any backward whose input, output or weights were changed in place after its forward.
    - ``train()`` / ``eval()`` set the fuseprop model's mode too. Under ``torch.no_grad()`` (or when nothing
      needs a gradient) the forward records no tape, as ``predict`` does.
    """

    def __init__(self, model):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"TorchModule wraps a fuseprop.nn.Module, got {type(model).__name__}")
        if model.device != "cpu":
            raise ValueError("TorchModule runs fuseprop's CPU kernels: move the model with model.to('cpu') first")
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
        if len(dtypes) > 1:
            raise TypeError(f"TorchModule needs parameters of one dtype, the model has {', '.join(dtypes)}")
        self.model = model
        self._dtype = _TORCH_DTYPES[np.dtype(dtypes[0])] if dtypes else None
        self._pairs = []  # (name, fuseprop Parameter, torch Parameter on its memory)
        for name, p in model.named_parameters():
            holder, leaf = self._holder(name)
            tp = torch.nn.Parameter(torch.from_numpy(p.data))
            holder.register_parameter(leaf, tp)
            self._pairs.append((name, p, tp))
        for name, b in model.named_buffers():  # BatchNorm's running statistics, on fuseprop's memory too
            holder, leaf = self._holder(name)
            holder.register_buffer(leaf, torch.from_numpy(b))
        self._forwards = 0  # forwards run through the autograd function
        self._live = None  # (forward, model's forward number) whose tape the model holds unused, or None
        super().train(model.training)

    def _holder(self, name):
        """The (nested, empty) torch module a dotted state-dict name lives in, and its last part."""
        holder = self
        *path, leaf = name.split(".")
        for part in path:
            if part not in holder._modules:
                holder.add_module(part, torch.nn.Module())
            holder = holder._modules[part]
        return holder, leaf

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode)
        return self

    def _check_shared(self):
        for name, p, tp in self._pairs:
            data = p.data
            if (not isinstance(data, np.ndarray) or tp.dtype != _TORCH_DTYPES.get(data.dtype)
                    or tuple(tp.shape) != data.shape or tp.data_ptr() != data.__array_interface__["data"][0]
                    or not tp.is_contiguous()):
                raise RuntimeError(f"TorchModule: the torch Parameter {name!r} no longer shares memory with the "
                                   f"fuseprop parameter (one side's array was replaced: .data assigned, .to(), "
                                   f"a dtype or device change); wrap the model again")

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TorchModule takes a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"TorchModule runs on the CPU: the input is on {x.device}")
        if self._dtype is not None and x.dtype != self._dtype:
            raise TypeError(f"the input has dtype {x.dtype}, the fuseprop model's parameters are {self._dtype}: "
                            f"convert it first (x.to({self._dtype}))")
        self._check_shared()
        params = [tp for _, _, tp in self._pairs]
        if torch.is_grad_enabled() and (x.requires_grad or any(tp.requires_grad for tp in params)):
            return _FuseropFunction.apply(x, self, *params)
        with nn.no_grad():  # nothing will call backward: no tape recorded, the last one left as it was
            x_np = _as_numpy(x)
            return _as_tensor(self.model(x_np), x_np)

    def extra_repr(self):
        return "model=" + repr(self.model).replace("\n", "\n  ")
