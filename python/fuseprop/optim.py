"""Optimizers shaped like torch.optim: SGD, Adam, AdamW with param groups, step(), zero_grad(),
state_dict() / load_state_dict() (PyTorch's layout: {"state": {index: {...}}, "param_groups": [...]}).
Each update runs natively, in place, with PyTorch's formulas.
"""
from __future__ import annotations

import copy
import math
from operator import itemgetter

import numpy as np

from . import cuda
from . import functional as F
from ._arrays import Parameter
from .engine.protocol import NativeOptimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _check_hyper(name: str, value, lo: float = 0.0, hi: float = math.inf, hi_open: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: expected a finite number, got {value!r}")
    if value < lo or value > hi or (hi_open and value == hi):
        raise ValueError(f"Invalid {name}: {value} is outside [{lo}, {hi}{')' if hi_open else ']'}")


def state_to_host(entry: dict):
    """A parameter's state entry with its GPU arrays (after steps on CUDA) replaced by NumPy copies, in place."""
    for k, v in entry.items():
        if cuda.is_device_array(v):
            entry[k] = v.numpy()


class Optimizer:
    """Holds parameter groups (each a dict of hyper-parameters plus "params") and per-parameter state."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[Parameter, dict] = {}
        groups = list(params) if not isinstance(params, Parameter) else [params]
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a param group must be a dict with a 'params' entry")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be fuseprop.nn.Parameter objects, got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError("some parameters appear more than once in the optimizer's param groups")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown hyper-parameters in param group: {sorted(unknown)}")
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}, "params": params}
        self._validate(full)
        self.param_groups.append(full)

    def _validate(self, group: dict):
        raise NotImplementedError

    def zero_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.device == "cuda":
                    p.grad.zero_()
                else:
                    p.grad.fill(0)

    def step(self):
        # Hyper-parameters may have been edited (schedules) and state replaced: check everything before
        # the first update, so a refused step changes nothing.
        for g in self.param_groups:
            self._validate(g)
            for p in g["params"]:
                if p.device == "cuda":
                    raise NotImplementedError(f"{type(self).__name__}.step() runs on the CPU only; on CUDA the update "
                                              "runs inside model.train_step / fit")
                if self.state.get(p):
                    state_to_host(self.state[p])
                    self._check_state(p, self.state[p], p.name or "parameter")
        for g in self.param_groups:
            for p in g["params"]:
                self._update(p, g, self.state.setdefault(p, {}))

    def _update(self, p: Parameter, group: dict, state: dict):
        raise NotImplementedError

    _native = None  # the update rule as the native plans run it (engine.protocol), set by the class that defines it

    def _native_form(self):
        """The NativeOptimizer of this rule, or None: a subclass may change the update, so only the class
        that defines the form has it."""
        return type(self).__dict__.get("_native")

    def _state_to_host(self, entry: dict):
        state_to_host(entry)

    # Per-parameter state: arrays of the parameter's shape, and an optional update count.
    _state_arrays: tuple = ()
    _state_counts: tuple = ()

    def _check_state(self, p: Parameter, entry: dict, where: str) -> dict:
        """entry with arrays of p's dtype (new arrays) and counts as ints; ValueError if it does not fit."""
        expected = set(self._state_arrays) | set(self._state_counts)
        if set(entry) != expected:
            raise ValueError(f"state of {where} must have the entries {sorted(expected)}, got {sorted(entry)}")
        checked = {}
        for k in self._state_arrays:
            v = entry[k]
            if cuda.is_device_array(v):  # state the GPU step keeps (fuseprop.engine.cuda_plan)
                if v.shape != p.shape or v.dtype != np.float32:
                    raise ValueError(f"state {k!r} of {where} must be a float32 array of shape {p.shape}, "
                                     f"got shape {v.shape} and dtype {v.dtype}")
                checked[k] = v
                continue
            v = np.asarray(v)
            if v.shape != p.shape or v.dtype.kind != "f":
                raise ValueError(f"state {k!r} of {where} must be a float array of shape {p.shape}, "
                                 f"got shape {v.shape} and dtype {v.dtype}")
            checked[k] = v
        for k in self._state_counts:
            v = entry[k]
            count = np.asarray(v).item() if np.ndim(v) == 0 and not isinstance(v, bool) else None
            if not isinstance(count, (int, float)) or isinstance(count, bool) or count != int(count) or count < 1:
                raise ValueError(f"state {k!r} of {where} must be a whole number >= 1, got {v!r}")
            checked[k] = int(count)
        return checked

    # -- state, in PyTorch's layout: parameters are numbered in group order
    def state_dict(self) -> dict:
        index = {}
        groups = []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index[p] = len(index)
                ids.append(index[p])
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[p]: {k: v.numpy() if cuda.is_device_array(v) else copy.deepcopy(v) for k, v in s.items()}
                 for p, s in self.state.items() if s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict):
        """Restore hyper-parameters and state; everything is checked before anything changes."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("loaded state dict has a different number of param groups or parameters")
        params = [p for g in self.param_groups for p in g["params"]]
        new_state = {}
        for i, entry in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"loaded state dict refers to parameter {i}, the optimizer has {len(params)}")
            p = params[i]
            checked = self._check_state(p, entry, f"parameter {i}")
            new_state[p] = {k: np.array(v, dtype=p.dtype, order="C") if isinstance(v, np.ndarray) else v
                            for k, v in checked.items()}
        new_groups = []
        for loaded, current in zip(groups, self.param_groups):
            g = {**{k: v for k, v in loaded.items() if k != "params"}, "params": current["params"]}
            self._validate(g)
            new_groups.append(g)
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay (torch.optim.SGD)."""

    _state_arrays = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay))

    def _validate(self, g):
        _check_hyper("learning rate", g["lr"])
        _check_hyper("momentum value", g["momentum"])
        _check_hyper("dampening value", g["dampening"])
        _check_hyper("weight_decay value", g["weight_decay"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    _native = NativeOptimizer(
        kind="sgd", state_arrays=("momentum_buffer",), counts_steps=False,
        group_key=itemgetter("params", "lr", "momentum", "dampening", "nesterov", "weight_decay"),
        needs_state=lambda g: g["momentum"] != 0,
        hyper=lambda g: (g["lr"], g["momentum"], g["dampening"], g["nesterov"], g["weight_decay"]),
        # as _update: the buffer is written whole by the first update, so it starts uninitialised
        fresh_state=lambda p, g, zeros, empty: dict(momentum_buffer=empty(p)) if g["momentum"] != 0 else {})

    def _update(self, p, g, state):
        buf = None
        first = "momentum_buffer" not in state
        if g["momentum"] != 0:
            if first:
                state["momentum_buffer"] = np.empty_like(p.data)
            buf = state["momentum_buffer"]
        F.sgd_step(p.data, p.grad, buf, lr=g["lr"], momentum=g["momentum"], dampening=g["dampening"],
                   nesterov=g["nesterov"], weight_decay=g["weight_decay"], step=1 if first else 2)


class Adam(Optimizer):
    """Adam with bias correction; weight_decay adds an L2 term to the gradient (torch.optim.Adam)."""

    _decoupled = False
    _state_arrays = ("exp_avg", "exp_avg_sq")
    _state_counts = ("step",)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _validate(self, g):
        _check_hyper("learning rate", g["lr"])
        _check_hyper("epsilon value", g["eps"])
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: expected two numbers, got {betas!r}")
        _check_hyper("beta parameter at index 0", betas[0], 0.0, 1.0, hi_open=True)
        _check_hyper("beta parameter at index 1", betas[1], 0.0, 1.0, hi_open=True)
        _check_hyper("weight_decay value", g["weight_decay"])

    _native = NativeOptimizer(
        kind="adam", state_arrays=("exp_avg", "exp_avg_sq"), counts_steps=True,
        group_key=itemgetter("params", "lr", "betas", "eps", "weight_decay"),
        needs_state=lambda g: True,
        hyper=lambda g: (g["lr"], g["betas"][0], g["betas"][1], g["eps"], g["weight_decay"]),
        fresh_state=lambda p, g, zeros, empty: dict(step=0, exp_avg=zeros(p), exp_avg_sq=zeros(p)))

    def _update(self, p, g, state):
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
        step = state["step"] + 1
        beta1, beta2 = g["betas"]
        F.adam_step(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], step=step, lr=g["lr"], beta1=beta1,
                    beta2=beta2, eps=g["eps"], weight_decay=g["weight_decay"], decoupled_weight_decay=self._decoupled)
        state["step"] = step


class AdamW(Adam):
    """Adam with decoupled weight decay: param *= 1 - lr*weight_decay before the update (torch.optim.AdamW)."""

    _decoupled = True
    _native = Adam._native._replace(kind="adamw")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
