"""What the CPU plan (cpu_plan.FusedStep) and the GPU plan (cuda_plan.CudaStep) share: which losses and
optimizers they take, the parameter list they give the native plan, and the optimizer state they follow.

The optimizer keeps owning its state. Arrays for parameters without state are made here as the
optimizer's own first update makes them (``NativeOptimizer.fresh_state``) but put into
``optimizer.state`` only once an update has run, so a refused step leaves the state as it was; Adam's
``state["step"]`` counts on in Python after each native update. state_dict(), load_state_dict() and
resuming therefore behave as with the per-layer path. Every step compares, by identity, the state the
plan points into with what ``optimizer.state`` holds, and a plan whose arrays were replaced is rebuilt.
"""
from __future__ import annotations

from .protocol import compile_chain

__all__ = ["PlanStep"]


def _form(obj):
    describe = getattr(obj, "_native_form", None)
    return describe() if describe is not None else None


class PlanStep:
    """train_step for one (loss_fn, optimizer) as one native call, while the model allows it. A subclass
    supplies the backend: how existing state is adopted, how new state is allocated, and the plan."""

    on_cuda = False

    def __init__(self, loss_fn, optimizer):
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.plan = None
        loss_form, self._opt = _form(loss_fn), _form(optimizer)
        self._loss_kind = loss_form[0] if loss_form is not None else None
        self._opt_kind = self._opt.kind if self._opt is not None else None
        self.why_not = None
        if self._loss_kind is None:
            self.why_not = (f"{type(loss_fn).__name__} has no fused form (CrossEntropyLoss, MSELoss, BCEWithLogitsLoss "
                            "do)")
        elif self._opt_kind is None:
            self.why_not = f"{type(optimizer).__name__} has no fused form (SGD, Adam, AdamW do)"
        self._adam = self._opt is not None and self._opt.counts_steps
        self._params = []
        self._watch, self._unpublished = [], []  # the optimizer state the plan points into (see _track_state)
        self._new_state = {}  # per parameter without state: what its first update puts into optimizer.state
        self._entries, self._steps = None, []

    @property
    def outputs_judged(self) -> int:
        """Per sample, the outputs plan.correct judges: 1 for cross-entropy (the argmax), every output for BCE
        with logits (each logit's sign), none for MSE."""
        if self._loss_kind == "cross_entropy":
            return 1
        return self._out_features if self._loss_kind == "bce_with_logits" else 0

    @property
    def fusable(self) -> bool:
        """The loss and the optimizer have a native form (the model is looked at per step)."""
        return self._loss_kind is not None and self._opt_kind is not None

    # -- the backend
    def _adopt_state(self, p, entry: dict, name: str):
        """An existing state entry of p, checked (and moved to the plan's device), in place."""
        raise NotImplementedError

    def _zeros(self, p):
        raise NotImplementedError

    def _empty(self, p):
        raise NotImplementedError

    # -- what the plan is built from
    def _chain_and_groups(self, model):
        """(chain, named parameters, {param: group index}), or None after setting why_not."""
        opt = self.optimizer
        named = list(model.named_parameters())
        chain = compile_chain(list(model.children()), [p for _, p in named])
        group_of = {p: gi for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        if isinstance(chain, str):
            self.plan, self.why_not = None, chain
            return None
        if len(group_of) != len(named) or len({id(p) for _, p in named}) != len(named) or any(
                p not in group_of for _, p in named):
            self.plan, self.why_not = None, "the optimizer's param groups do not hold exactly the model's parameters"
            return None
        return chain, named, group_of

    def _plan_params(self, named, group_of) -> list:
        """The parameter tuples the native plans take: (name, data, grad, state a, state b, group index).
        Parameters without state get new arrays, published into optimizer.state by their first update."""
        opt, form = self.optimizer, self._opt
        for g in opt.param_groups:
            opt._validate(g)  # the checks (and messages) of optimizer.step()
        old_new_state, self._new_state = self._new_state, {}
        params = []
        for name, p in named:
            group = opt.param_groups[group_of[p]]
            entry = opt.state.get(p)
            if entry:
                self._adopt_state(p, entry, name)
                arrays = [entry.get(k) for k in form.state_arrays]
            else:
                new = old_new_state.get(p)  # made by an earlier build and not used yet: keep it
                fresh = form.fresh_state(p, group, self._zeros, self._empty)
                if new is None or set(new) != set(fresh):
                    new = fresh
                arrays = [new.get(k) for k in form.state_arrays]
                self._new_state[p] = new
            a, b = (arrays + [None, None])[:2]
            params.append((name, p.data, p.grad, a, b, group_of[p]))
        self._params = [p for _, p in named]
        return params

    # -- the optimizer state the plan follows
    def _state_unchanged(self) -> bool:
        """optimizer.state still holds the arrays the plan points into, and nothing for the parameters
        whose state the plan keeps until their first update."""
        state = self.optimizer.state
        return (all(state.get(p) is e and e.get(ka) is a and e.get(kb) is b for p, e, ka, a, kb, b in self._watch)
                and (not self._unpublished or all(state.get(p) is e and not e for p, e in self._unpublished)))

    def _track_state(self):
        """What the per-step state check compares, and the step counts the plan is given."""
        state, keys = self.optimizer.state, self._opt.state_arrays
        ka, kb = keys[0], keys[-1]  # the plans take at most two state arrays (one: the same key twice)
        self._watch, self._unpublished = [], []
        for p in self._params:
            e = state.get(p)
            if p in self._new_state:
                self._unpublished.append((p, e))
            else:
                self._watch.append((p, e, ka, e.get(ka), kb, e.get(kb)))  # flat: this runs every step
        # Adam: each parameter's state dict, whose "step" the plan is given (+1) and then advanced.
        # SGD: 1 while a parameter has no state array yet (its first update), else 2.
        self._entries = [self._new_state.get(p) or state[p] for p in self._params] if self._adam else None
        self._steps = [1 if p in self._new_state or keys[0] not in state[p] else 2 for p in self._params]

    def _step_counts(self) -> list:
        return [e["step"] + 1 for e in self._entries] if self._adam else self._steps

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
