"""Sequential.train_step as ONE native call on the CPU (``_C.TrainPlan``) when the model, loss and
optimizer allow it.

Fused: a chain of segments (engine.protocol: today a Linear layer, each optionally followed by one
elementwise activation), every parameter of one dtype; a loss and an optimizer with a native form
(CrossEntropyLoss, MSELoss, BCEWithLogitsLoss; SGD, Adam, AdamW) whose param groups hold exactly the
model's parameters. Anything else takes the per-layer step (engine.step), which runs the same kernels on
the same arrays and so computes the same step.

The plan points into the model's and the optimizer's own arrays. It is built once and rebuilt only
when something it points into is replaced. Every step checks, by identity and cheap comparisons: the
model generation (moved by any assignment of a module attribute or a Parameter array), the param
groups (their params lists and hyper-parameters), the loss's settings, and the optimizer's state
(plan_step.PlanStep).
"""
from __future__ import annotations

import numpy as np

from .. import _C
from .._arrays import as_input, generation
from .plan_step import PlanStep
from .protocol import plan_layers

__all__ = ["FusedStep"]

_INT64 = np.dtype(np.int64)


class FusedStep(PlanStep):
    """train_step for one (loss_fn, optimizer) as one native call on the CPU, while the model allows it."""

    def __init__(self, loss_fn, optimizer):
        super().__init__(loss_fn, optimizer)
        self._seen = None  # (generation, loss settings, per group (params + hyper-parameters, len(params)))
        self._signature = None  # the arrays and settings the plan was built on (ids: the plan keeps them alive)

    def ready(self, model):
        """The plan the next step runs, looked at again (and rebuilt) as every step does; None when this
        model, loss and optimizer have no fused form."""
        if self._loss_kind is None or self._opt_kind is None:
            return None
        group_key = self._opt.group_key
        seen = (generation(), self.loss_fn._native_form(),
                [(group_key(g), len(g["params"])) for g in self.optimizer.param_groups])
        if seen != self._seen or not self._state_unchanged():
            self._refresh(model, seen)
        return self.plan

    def step(self, model, x, y, max_grad_norm=None):
        """The loss of one fused step, or None when this model, loss and optimizer have no fused form.
        max_grad_norm: clip all gradients together to that L2 norm before the update (as clip_grad_norm_)."""
        plan = self.ready(model)
        if plan is None:
            return None
        loss_fn = self.loss_fn

        # Inputs, converted as the per-layer path converts them (a new array only when needed). The test
        # here is the quick one; an array it sends on that needs nothing comes back from as_input as it was.
        dtype = self._dtype
        if not (type(x) is np.ndarray and x.dtype is dtype and x.flags.carray and x.ndim == 2 and x.shape[0]
                and x.shape[1] == self._in_features):
            x = np.asarray(x)
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(f"train_step needs a non-empty batch, got x of shape {x.shape}")
            x = as_input(x, dtype, "x", ndim=2, features=self._in_features)
        if self._loss_kind == "cross_entropy":
            if not (type(y) is np.ndarray and y.dtype is _INT64 and y.flags.carray):
                y = loss_fn._target(y, dtype, (len(x), self._out_features))
        elif not (type(y) is np.ndarray and y.dtype is dtype and y.flags.carray and y.ndim == 2):
            y = loss_fn._target(y, dtype, (len(x), self._out_features))  # the loss's own conversion

        steps = self._step_counts()
        loss_fn._grad = loss_fn._grad_from = None
        try:
            loss = plan.step(x, y, self._hyper, steps, 0.0 if max_grad_norm is None else max_grad_norm)
        except FloatingPointError:
            loss_fn._grad_from = plan
            if plan.updated:
                self._count_update(steps)
            raise
        loss_fn._grad_from = plan
        self._count_update(steps)
        model._forget_tape()  # the per-layer tape is stale now: backward must not use it
        return loss

    def run_batches(self, model, x, y, order, batch_size, first, count, lrs=None, max_grad_norm=None):
        """Batches first .. first+count-1 of an epoch as ONE native call (TrainPlan.run_batches), right after
        ready() returned the plan: x (N, IN) and y (labels (N,) or targets (N, OUT)) in the plan's dtypes,
        C-contiguous; order the epoch's rows (None: unshuffled); lrs None or (count, param groups): each
        batch's lr. Returns (losses, correct) per batch, and leaves the plan, the optimizer's state, the loss
        and the model as ``count`` step() calls on the same batches leave them: also when a batch is refused
        (FloatingPointError, as step()) or an interrupt arrives as the call returns."""
        plan, loss_fn = self.plan, self.loss_fn
        steps = self._step_counts()
        before = plan.steps
        loss_fn._grad = loss_fn._grad_from = None
        try:
            return plan.run_batches(x, y, order, batch_size, first, count, self._hyper, steps,
                                    0.0 if max_grad_norm is None else max_grad_norm, lrs)
        finally:
            done, ran = plan.batches_done, plan.steps - before
            if ran:
                loss_fn._grad_from = plan
            updates = done + (ran > done and plan.updated)
            if updates:
                self._count_update([s + updates - 1 for s in steps] if self._adam else steps)
            if done:  # as after step(): the per-layer tape is stale
                model._forget_tape()

    def _refresh(self, model, seen):
        """Look at the model, the param groups, the loss and the optimizer state again: rebuild the plan
        if anything it points into changed; fall back (plan None) if they no longer allow a fused step."""
        opt, last = self.optimizer, self._seen
        if (self.plan is not None and last is not None and seen[:2] == last[:2] and len(seen[2]) == len(last[2])
                and all(a[0][0] is b[0][0] and a[1] == b[1] for a, b in zip(seen[2], last[2]))
                and self._state_unchanged()):
            # Only hyper-parameters changed (a schedule): check them as optimizer.step() would, and hand them over,
            # unless a group now needs state arrays its parameters do not have (SGD's momentum switched on).
            for g, now, before in zip(opt.param_groups, seen[2], last[2]):
                if now[0][1:] != before[0][1:]:  # the groups whose hyper-parameters changed
                    opt._validate(g)
            if not any(self._opt.needs_state(opt.param_groups[gi]) for gi in self._bufferless_groups):
                self._hyper = self._hyper_of(opt.param_groups)
                self._seen = seen
                return
        found = self._chain_and_groups(model)
        if found is not None:
            self._build(*found)
        if self.plan is None:
            self._watch, self._unpublished = [], []
        self._seen = seen

    def _build(self, chain, named, group_of):
        opt, loss_fn = self.optimizer, self.loss_fn
        params = self._plan_params(named, group_of)
        layers = plan_layers(chain)
        kind, reduction, smoothing = loss_fn._native_form()
        signature = (layers, [(n, id(d), id(g), id(a), id(b), gi) for n, d, g, a, b, gi in params], reduction,
                     smoothing, len(opt.param_groups))
        if self.plan is None or signature != self._signature:
            self.plan = _C.TrainPlan(layers, params, loss=kind, optimizer=self._opt_kind, label_smoothing=smoothing,
                                     reduction=reduction, groups=len(opt.param_groups))
            self._signature = signature
        self.why_not = None
        self._dtype = named[0][1].dtype
        self._in_features, self._out_features = chain[0].in_features, chain[-1].out_features
        self._hyper = self._hyper_of(opt.param_groups)
        self._bufferless_groups = {gi for _, _, _, a, _, gi in params if a is None}
        self._track_state()

    def _hyper_of(self, groups):
        return [self._opt.hyper(g) for g in groups]

    def _adopt_state(self, p, entry, name):
        self.optimizer._state_to_host(entry)  # state from steps on the GPU comes back with the model
        self.optimizer._check_state(p, entry, name)

    def _zeros(self, p):
        return np.zeros_like(p.data)

    def _empty(self, p):
        return np.empty_like(p.data)
