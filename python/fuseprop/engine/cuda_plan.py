"""Sequential.train_step on the GPU: the model's chain, loss and optimizer as ONE ``_C.CudaTrainPlan``.

The same contract as the CPU's fused step (cpu_plan.FusedStep, through plan_step.PlanStep): the same
chains, losses and optimizers; a refused step (non-finite loss or gradient, a label out of range)
changes nothing; the optimizer keeps owning its state. On the GPU that state is DeviceArrays in
``optimizer.state``: an entry that is still NumPy (a loaded state dict, or an optimizer that stepped on
the CPU) is copied over at the first GPU step. ``optimizer.state_dict()`` copies it back to NumPy.

Inputs: a DeviceArray (or any CUDA DLPack array) is used where it is; a NumPy batch is staged through
pinned memory by the plan. Per step the host waits once, for the loss and the step's flags.
"""
from __future__ import annotations

import numpy as np

from .. import _C, cuda
from .._arrays import as_input, generation
from .plan_step import PlanStep
from .protocol import plan_layers

__all__ = ["CudaStep", "forward_plan"]

_F32 = np.dtype(np.float32)


class CudaStep(PlanStep):
    """train_step for one (loss_fn, optimizer) on the GPU."""

    on_cuda = True

    def __init__(self, loss_fn, optimizer):
        super().__init__(loss_fn, optimizer)
        self._key = None

    def step(self, model, x, y, max_grad_norm=None):
        if not self.fusable:
            return None
        opt, form = self.optimizer, self._opt
        key = (generation(), cuda.allow_tf32, cuda.fused_mlp, self.loss_fn._native_form(),
               [(tuple(id(p) for p in g["params"]), form.needs_state(g)) for g in opt.param_groups])
        if self.plan is None or key != self._key or not self._state_unchanged():
            found = self._chain_and_groups(model)
            if found is not None:
                self._build(*found)
            self._key = key
        if self.plan is None:
            return None
        for g in opt.param_groups:
            opt._validate(g)  # schedules may have changed a hyper-parameter: check it as optimizer.step() would

        x = _input(x, "x", ndim=2, features=self._in_features)
        if _on_device(y):
            y = cuda.asarray(y, np.int64 if self._loss_kind == "cross_entropy" else _F32)
        else:  # the loss's own conversion, as on the CPU
            y = self.loss_fn._target(y, _F32, (x.shape[0], self._out_features))
        steps = self._step_counts()
        hyper = [form.hyper(g) for g in opt.param_groups]
        loss_fn = self.loss_fn
        loss_fn._grad = loss_fn._grad_from = None
        try:
            loss = self.plan.step(x, y, hyper, steps, 0.0 if max_grad_norm is None else max_grad_norm)
        except FloatingPointError:
            if self.plan.updated:
                self._count_update(steps)
            raise
        self._count_update(steps)
        return loss

    def _build(self, chain, named, group_of):
        params = self._plan_params(named, group_of)
        kind, reduction, smoothing = self.loss_fn._native_form()
        self.plan = _C.CudaTrainPlan(plan_layers(chain), params, loss=kind, optimizer=self._opt_kind,
                                     label_smoothing=smoothing, reduction=reduction,
                                     groups=len(self.optimizer.param_groups), tf32=bool(cuda.allow_tf32),
                                     fused=bool(cuda.fused_mlp))
        self.why_not = None
        self._in_features, self._out_features = chain[0].in_features, chain[-1].out_features
        self._track_state()

    def _adopt_state(self, p, entry, name):
        self.optimizer._check_state(p, entry, name)
        for k in self._opt.state_arrays:  # NumPy state (loaded, or from CPU steps) moves to the GPU now, once
            if k in entry and not cuda.is_device_array(entry[k]):
                entry[k] = cuda.asarray(np.asarray(entry[k], dtype=_F32))

    def _zeros(self, p):
        z = _C.cuda_empty(list(p.shape), "float32")
        z.zero_()
        return z

    _empty = _zeros  # new state on the GPU always starts from zeros


def forward_plan(chain, named):
    """A device plan for inference over chain (only its forward is used; "mse" and plain SGD need no
    optimizer state)."""
    params = [(name, p.data, p.grad, None, None, 0) for name, p in named]
    return _C.CudaTrainPlan(plan_layers(chain), params, loss="mse", optimizer="sgd", tf32=bool(cuda.allow_tf32))


def _input(x, name, ndim=None, features=None):
    if _on_device(x):
        return cuda.asarray(x, _F32)
    return as_input(x, _F32, name, ndim=ndim, features=features)


def _on_device(x) -> bool:
    return cuda.is_device_array(x) or (hasattr(x, "__dlpack_device__") and not isinstance(x, np.ndarray)
                                       and x.__dlpack_device__()[0] == 2)
