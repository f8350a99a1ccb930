"""Sequential.train_step on the GPU: the model's chain, loss and optimizer as ONE ``_C.CudaTrainPlan``.

The same contract as the CPU's fused step (``fuseprop._train_plan``): the same chains, losses and
optimizers; a refused step (non-finite loss or gradient, a label out of range) changes nothing; the
optimizer keeps owning its state. On the GPU that state is DeviceArrays in ``optimizer.state``: an
entry that is still NumPy (a loaded state dict, or an optimizer that stepped on the CPU) is copied
over at the first GPU step, and the state a parameter gets at its first update is put into
``optimizer.state`` only once that update has run. ``optimizer.state_dict()`` copies it back to NumPy.

Inputs: a DeviceArray (or any CUDA DLPack array) is used where it is; a NumPy batch is staged through
pinned memory by the plan. Per step the host waits once, for the loss and the step's flags.
"""
from __future__ import annotations

import numpy as np

from . import _C, cuda, nn
from ._train_plan import group_hyper, layer_chain, step_kinds
from .functional import as_labels

_F32 = np.dtype(np.float32)


class CudaStep:
    """train_step for one (loss_fn, optimizer) on the GPU."""

    on_cuda = True

    def __init__(self, loss_fn, optimizer):
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.plan = None
        self._loss_kind, self._opt_kind, self.why_not = step_kinds(loss_fn, optimizer)
        self._key = None
        self._watch = []     # (state entry, key, array) the plan points into
        self._new_state = {}  # per parameter without state yet: what its first update publishes

    def step(self, model, x, y, max_grad_norm=None):
        if self._loss_kind is None or self._opt_kind is None:
            return None
        opt, loss_fn = self.optimizer, self.loss_fn
        key = (nn._generation, cuda.allow_tf32, cuda.fused_mlp, loss_fn.reduction, getattr(loss_fn, "label_smoothing", 0.0),
               [(tuple(id(p) for p in g["params"]), g.get("momentum", 0) != 0) for g in opt.param_groups])
        if self.plan is None or key != self._key or not self._state_unchanged():
            self._build(model)
            self._key = key
        if self.plan is None:
            return None
        for g in opt.param_groups:
            opt._validate(g)  # schedules may have changed a hyper-parameter: check it as optimizer.step() would

        x = self._input(x, _F32, "x", ndim=2, features=self._in_features)
        if self._loss_kind == "cross_entropy":
            y = cuda.asarray(y, np.int64) if _on_device(y) else as_labels(np.asarray(y), "labels")
        else:
            y = self._input(y, _F32, "target")
        adam = self._opt_kind != "sgd"
        steps = ([e["step"] + 1 for e in self._entries] if adam else
                 [1 if p in self._new_state or "momentum_buffer" not in opt.state.get(p, {}) else 2 for p in self._params])
        hyper = group_hyper(opt.param_groups, adam)
        loss_fn._grad = loss_fn._grad_from = None
        try:
            loss = self.plan.step(x, y, hyper, steps, 0.0 if max_grad_norm is None else max_grad_norm)
        except FloatingPointError:
            if self.plan.updated:
                self._count_update(steps)
            raise
        self._count_update(steps)
        return loss

    @staticmethod
    def _input(x, dtype, name, ndim=None, features=None):
        if _on_device(x):
            return cuda.asarray(x, dtype)
        return nn.as_input(x, dtype, name, ndim=ndim, features=features)

    def _count_update(self, steps):
        if self._opt_kind != "sgd":
            for e, s in zip(self._entries, steps):
                e["step"] = s
        if self._new_state:
            state = self.optimizer.state
            for p, new in self._new_state.items():
                state.setdefault(p, {}).update(new)
            self._new_state = {}
            self._track_state()

    def _state_unchanged(self) -> bool:
        return all(entry.get(k) is a for entry, k, a in self._watch) and all(
            not self.optimizer.state.get(p) for p in self._new_state)

    def _build(self, model):
        opt = self.optimizer
        chain = layer_chain(model)
        named = list(model.named_parameters())
        group_of = {p: gi for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        if isinstance(chain, str):
            self.plan, self.why_not = None, chain
            return
        if len(group_of) != len(named) or any(p not in group_of for _, p in named):
            self.plan, self.why_not = None, "the optimizer's param groups do not hold exactly the model's parameters"
            return
        for g in opt.param_groups:
            opt._validate(g)
        adam = self._opt_kind != "sgd"
        keys = ("exp_avg", "exp_avg_sq") if adam else ("momentum_buffer",)
        old_new, self._new_state = self._new_state, {}
        params = []
        for name, p in named:
            entry = opt.state.get(p)
            if entry:
                opt._check_state(p, entry, name)
                for k in keys:  # NumPy state (loaded, or from CPU steps) moves to the GPU now, once
                    if k in entry and not cuda.is_device_array(entry[k]):
                        entry[k] = cuda.asarray(np.asarray(entry[k], dtype=_F32))
                a = entry["exp_avg"] if adam else entry.get("momentum_buffer")
                b = entry["exp_avg_sq"] if adam else None
            else:
                new = old_new.get(p)
                if adam:
                    new = new or dict(step=0, exp_avg=_zeros(p), exp_avg_sq=_zeros(p))
                    a, b = new["exp_avg"], new["exp_avg_sq"]
                elif opt.param_groups[group_of[p]]["momentum"] != 0:
                    new = new if new and "momentum_buffer" in new else dict(momentum_buffer=_zeros(p))
                    a, b = new["momentum_buffer"], None
                else:
                    new, a, b = {}, None, None
                self._new_state[p] = new
            params.append((name, p.data, p.grad, a, b, group_of[p]))
        layers = [(act.activation, act.negative_slope, lin.bias is not None) if act is not None
                  else ("identity", 0.01, lin.bias is not None) for lin, act in chain]
        self.plan = _C.CudaTrainPlan(layers, params, loss=self._loss_kind, optimizer=self._opt_kind,
                                     label_smoothing=getattr(self.loss_fn, "label_smoothing", 0.0),
                                     reduction=self.loss_fn.reduction, groups=len(opt.param_groups), tf32=bool(cuda.allow_tf32),
                                     fused=bool(cuda.fused_mlp))
        self.why_not = None
        self._in_features = chain[0][0].in_features
        self._params = [p for _, p in named]
        self._track_state()

    def _track_state(self):
        state = self.optimizer.state
        adam = self._opt_kind != "sgd"
        keys = ("exp_avg", "exp_avg_sq") if adam else ("momentum_buffer",)
        self._watch = [(state[p], k, state[p].get(k)) for p in self._params if p not in self._new_state and state.get(p)
                       for k in keys]
        self._entries = [self._new_state.get(p) or state[p] for p in self._params] if adam else None


def _on_device(x) -> bool:
    return cuda.is_device_array(x) or (hasattr(x, "__dlpack_device__") and not isinstance(x, np.ndarray)
                                       and x.__dlpack_device__()[0] == 2)


def _zeros(p):
    z = _C.cuda_empty(list(p.shape), "float32")
    z.zero_()
    return z

