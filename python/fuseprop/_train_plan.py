"""Sequential.train_step as ONE native call (``_C.TrainPlan``) when the model, loss and optimizer allow it.

Fused: a Sequential of Linear layers, each optionally followed by one elementwise activation
(Identity, ReLU, LeakyReLU, Sigmoid, Tanh, GELU), every parameter of one dtype; CrossEntropyLoss,
MSELoss or BCEWithLogitsLoss; SGD, Adam or AdamW whose param groups hold exactly the model's
parameters. Anything else takes Sequential's per-layer path, which runs the same kernels on the
same arrays and so computes the same step.

The plan points into the model's and the optimizer's own arrays. It is built once and rebuilt only
when something it points into is replaced. Every step checks, by identity and cheap comparisons:
``nn._generation`` (moved by any assignment of a module attribute or a Parameter array), the param
groups (their params lists and hyper-parameters), the loss's settings, and the optimizer's state
dict with every state array in it.

The optimizer keeps owning its state. Arrays for parameters without state are created here as
optim.py creates them (SGD's momentum_buffer with np.empty_like, Adam's zeroed moments) but put into
``optimizer.state`` only once an update has run, so a refused step leaves the state as it was; Adam's
``state["step"]`` counts on in Python after each native update. state_dict(), load_state_dict() and
resuming therefore behave as with the per-layer path.
"""
from __future__ import annotations

from operator import itemgetter

import numpy as np

from . import _C, losses, nn, optim
from .functional import as_labels

_ACTIVATIONS = (nn.Identity, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU)
_LOSSES = {losses.CrossEntropyLoss: "cross_entropy", losses.MSELoss: "mse", losses.BCEWithLogitsLoss: "bce_with_logits"}
_OPTIMIZERS = {optim.SGD: "sgd", optim.Adam: "adam", optim.AdamW: "adamw"}
# What a step reads from each param group: its params, then the hyper-parameters the plan takes.
_GROUP_KEYS = {"sgd": itemgetter("params", "lr", "momentum", "dampening", "nesterov", "weight_decay"),
               "adam": itemgetter("params", "lr", "betas", "eps", "weight_decay")}
_GROUP_KEYS["adamw"] = _GROUP_KEYS["adam"]
_INT64 = np.dtype(np.int64)


def layer_chain(model):
    """[(Linear, activation module or None)] when model is a chain of Linear layers, each optionally
    followed by one elementwise activation, with every parameter of one dtype; else why not (a str)."""
    mods = list(model._modules.values())
    chain, i = [], 0
    while i < len(mods):
        if type(mods[i]) is not nn.Linear:
            return f"module {i} ({type(mods[i]).__name__}) is not a Linear layer or one activation after it"
        act = mods[i + 1] if i + 1 < len(mods) and type(mods[i + 1]) in _ACTIVATIONS else None
        chain.append((mods[i], act))
        i += 1 if act is None else 2
    if not chain:
        return "the model is empty"
    if len({p.dtype for p in model.parameters()}) != 1:
        return "the parameters have different dtypes"
    return chain


def step_kinds(loss_fn, optimizer):
    """(loss kind, optimizer kind, None) when a native plan (CPU or CUDA) takes them; else why not as the third."""
    loss_kind, opt_kind = _LOSSES.get(type(loss_fn)), _OPTIMIZERS.get(type(optimizer))
    if loss_kind is None:
        return None, None, f"{type(loss_fn).__name__} has no fused form (CrossEntropyLoss, MSELoss, BCEWithLogitsLoss do)"
    if opt_kind is None:
        return None, None, f"{type(optimizer).__name__} has no fused form (SGD, Adam, AdamW do)"
    return loss_kind, opt_kind, None


def group_hyper(groups, adam: bool):
    """Per param group, the hyper-parameter tuple TrainPlan.step (and CudaTrainPlan.step) takes."""
    if adam:
        return [(g["lr"], g["betas"][0], g["betas"][1], g["eps"], g["weight_decay"]) for g in groups]
    return [(g["lr"], g["momentum"], g["dampening"], g["nesterov"], g["weight_decay"]) for g in groups]


class FusedStep:
    """train_step for one (loss_fn, optimizer) as one native call, while the model allows it."""

    on_cuda = False

    def __init__(self, loss_fn, optimizer):
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.plan = None
        self._loss_kind, self._opt_kind, self.why_not = step_kinds(loss_fn, optimizer)
        if self.why_not is None:
            self._group_key = _GROUP_KEYS[self._opt_kind]
        self._seen = None  # (nn._generation, loss settings, per group (params + hyper-parameters, len(params)))
        self._signature = None  # the arrays and settings the plan was built on (ids: the plan keeps them alive)
        self._watch, self._unpublished = [], []  # the optimizer state the plan points into (see _track_state)
        self._new_state = {}  # per parameter without state: what its first update puts into optimizer.state

    def ready(self, model):
        """The plan the next step runs, looked at again (and rebuilt) as every step does; None when this
        model, loss and optimizer have no fused form."""
        if self._loss_kind is None or self._opt_kind is None:
            return None
        opt, loss_fn = self.optimizer, self.loss_fn
        seen = (nn._generation, loss_fn.reduction, getattr(loss_fn, "label_smoothing", 0.0),
                [(self._group_key(g), len(g["params"])) for g in opt.param_groups])
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
            x = nn.as_input(x, dtype, "x", ndim=2, features=self._in_features)
        if self._loss_kind == "cross_entropy":
            if not (type(y) is np.ndarray and y.dtype is _INT64 and y.flags.carray):
                y = as_labels(np.asarray(y), "labels")
        elif not (type(y) is np.ndarray and y.dtype is dtype and y.flags.carray):
            y = nn.as_input(y, dtype, "target")

        steps = [e["step"] + 1 for e in self._entries] if self._adam else self._steps
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
        if model._tape is not None:  # the per-layer tape is stale now: Sequential.backward must not use it
            object.__setattr__(model, "_tape", None)
        return loss

    def run_batches(self, model, x, y, order, batch_size, first, count, lrs=None, max_grad_norm=None):
        """Batches first .. first+count-1 of an epoch as ONE native call (TrainPlan.run_batches), right after
        ready() returned the plan: x (N, IN) and y (labels (N,) or targets (N, OUT)) in the plan's dtypes,
        C-contiguous; order the epoch's rows (None: unshuffled); lrs None or (count, param groups): each
        batch's lr. Returns (losses, correct) per batch, and leaves the plan, the optimizer's state, the loss
        and the model as ``count`` step() calls on the same batches leave them: also when a batch is refused
        (FloatingPointError, as step()) or an interrupt arrives as the call returns."""
        plan, loss_fn = self.plan, self.loss_fn
        steps = [e["step"] + 1 for e in self._entries] if self._adam else self._steps
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
            if done and model._tape is not None:  # as after step(): the per-layer tape is stale
                object.__setattr__(model, "_tape", None)

    def _state_unchanged(self) -> bool:
        """optimizer.state still holds the arrays the plan points into, and nothing for the parameters
        whose state the plan keeps until their first update."""
        state = self.optimizer.state
        return (all(state.get(p) is e and e.get(ka) is a and e.get(kb) is b for p, e, ka, a, kb, b in self._watch)
                and (not self._unpublished or all(state.get(p) is e and not e for p, e in self._unpublished)))

    def _count_update(self, steps):
        """After an update: Adam's step counts move on; new state goes into optimizer.state."""
        if self._adam:
            for e, s in zip(self._entries, steps):
                e["step"] = s
        if self._new_state:
            state = self.optimizer.state
            for p, new in self._new_state.items():
                state.setdefault(p, {}).update(new)
            self._new_state = {}
            self._track_state()

    def _refresh(self, model, seen):
        """Look at the model, the param groups, the loss and the optimizer state again: rebuild the plan
        if anything it points into changed; fall back (plan None) if they no longer allow a fused step."""
        opt, last = self.optimizer, self._seen
        if (self.plan is not None and last is not None and seen[:3] == last[:3] and len(seen[3]) == len(last[3])
                and all(a[0][0] is b[0][0] and a[1] == b[1] for a, b in zip(seen[3], last[3]))
                and self._state_unchanged()):
            # Only hyper-parameters changed (a schedule): check them as optimizer.step() would, and hand them over,
            # unless a group's momentum now needs buffers its parameters do not have.
            for g in opt.param_groups:
                opt._validate(g)
            if not any(opt.param_groups[gi]["momentum"] != 0 for gi in self._bufferless_groups):
                self._hyper = self._hyper_of(opt.param_groups)
                self._seen = seen
                return
        chain = layer_chain(model)
        named = list(model.named_parameters())
        group_of = {p: gi for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        if isinstance(chain, str):
            self.plan, self.why_not = None, chain
        elif len(group_of) != len(named) or len({id(p) for _, p in named}) != len(named) or any(
                p not in group_of for _, p in named):
            self.plan, self.why_not = None, "the optimizer's param groups do not hold exactly the model's parameters"
        else:
            self._build(chain, named, group_of)
        if self.plan is None:
            self._watch, self._unpublished = [], []
        self._seen = seen

    def _build(self, chain, named, group_of):
        opt, loss_fn, kind = self.optimizer, self.loss_fn, self._opt_kind
        for g in opt.param_groups:
            opt._validate(g)  # the checks (and messages) of optimizer.step()
        adam = kind != "sgd"
        state = opt.state
        old_new_state, self._new_state = self._new_state, {}
        params = []
        for name, p in named:
            group = opt.param_groups[group_of[p]]
            entry = state.get(p)
            if entry:
                optim.state_to_host(entry)  # state from steps on the GPU comes back with the model
                opt._check_state(p, entry, name)
                a, b = (entry["exp_avg"], entry["exp_avg_sq"]) if adam else (entry.get("momentum_buffer"), None)
            else:
                new = old_new_state.get(p)  # made by an earlier refresh and not used yet: keep it
                if adam:
                    new = new or dict(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
                    a, b = new["exp_avg"], new["exp_avg_sq"]
                else:
                    if group["momentum"] != 0:
                        new = new if new and "momentum_buffer" in new else dict(momentum_buffer=np.empty_like(p.data))
                    else:
                        new = {}
                    a, b = new.get("momentum_buffer"), None
                self._new_state[p] = new
            params.append((name, p.data, p.grad, a, b, group_of[p]))
        layers = [(act.activation, act.negative_slope, lin.bias is not None) if act is not None
                  else ("identity", 0.01, lin.bias is not None) for lin, act in chain]
        reduction, smoothing = loss_fn.reduction, getattr(loss_fn, "label_smoothing", 0.0)
        signature = (layers, [(n, id(d), id(g), id(a), id(b), gi) for n, d, g, a, b, gi in params], reduction,
                     smoothing, len(opt.param_groups))
        if self.plan is None or signature != self._signature:
            self.plan = _C.TrainPlan(layers, params, loss=self._loss_kind, optimizer=kind, label_smoothing=smoothing,
                                     reduction=reduction, groups=len(opt.param_groups))
            self._signature = signature
        self.why_not = None
        self._adam = adam
        self._dtype = named[0][1].dtype
        self._in_features, self._out_features = chain[0][0].in_features, chain[-1][0].out_features
        self._params = [p for _, p in named]
        self._hyper = self._hyper_of(opt.param_groups)
        self._bufferless_groups = {gi for _, _, _, a, _, gi in params if a is None} if not adam else set()
        self._track_state()

    def _hyper_of(self, groups):
        return group_hyper(groups, self._adam)

    def _track_state(self):
        """What the per-step state check compares, and the step counts the plan is given."""
        state = self.optimizer.state
        self._watch, self._unpublished = [], []
        ka, kb = ("exp_avg", "exp_avg_sq") if self._adam else ("momentum_buffer", "momentum_buffer")
        for p in self._params:
            e = state.get(p)
            if p in self._new_state:
                self._unpublished.append((p, e))
            else:
                self._watch.append((p, e, ka, e.get(ka), kb, e.get(kb)))
        # Adam: each parameter's state dict, whose "step" the plan is given (+1) and then advanced.
        # SGD: 1 while a parameter has no momentum_buffer in optimizer.state (its first update), else 2.
        self._entries = [self._new_state.get(p) or state[p] for p in self._params] if self._adam else None
        self._steps = [1 if p in self._new_state or "momentum_buffer" not in state[p] else 2 for p in self._params]
