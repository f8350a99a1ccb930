"""How layers, losses and optimizers describe themselves to the native plans, and the chain a plan compiles.

The plans import no layer, loss or optimizer class. Each object says what it is to a plan through one
method of its own:

- a layer: ``module.native_layer()`` -> ``NativeLayer`` (its kind, its parameters, the settings its
  kernel takes, what its backward keeps from the forward), or None when it has no native form;
- a loss: ``loss_fn._native_form()`` -> ``(kind, reduction, label_smoothing)`` or None;
- an optimizer: ``optimizer._native_form()`` -> ``NativeOptimizer`` or None.

A plan is a chain of segments. A segment is one layer whose kind opens a segment (Linear, Conv2d: the
GEMM; BatchNorm: the normalisation's pass over the data) and, optionally, one layer whose kind the opener's
epilogue applies (an elementwise activation, applied while the output is in cache). A new layer type with a native form describes itself in its
own ``native_layer()`` and registers its kind in ``SEGMENT_OPENERS`` or ``EPILOGUES`` below, and in
``PLAN_KINDS`` once the native plan (csrc/plan) runs it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

__all__ = ["NativeLayer", "NativeOptimizer", "SEGMENT_OPENERS", "EPILOGUES", "PLAN_KINDS", "NO_EPILOGUE", "Segment",
           "compile_chain", "segments", "plan_layers"]


class NativeLayer(NamedTuple):
    """A layer as a native plan runs it."""
    kind: str  # a key of SEGMENT_OPENERS or EPILOGUES
    module: object  # the layer itself
    params: tuple  # (Parameter, ...) the plan reads and updates in place, in the layer's state-dict order
    settings: dict  # what the kernel takes: linear {in_features, out_features, bias}; activation {activation, negative_slope}
    keeps: tuple  # what the layer's backward needs from its forward: "input", "output", "pre_activation"


class NativeOptimizer(NamedTuple):
    """An update rule as the native plans run it (the optimizer keeps owning its state)."""
    kind: str  # "sgd", "adam" or "adamw": the plans' name of the rule
    state_arrays: tuple  # the per-parameter state arrays the plan updates in place, in the order it takes them
    counts_steps: bool  # the state holds an update count "step" (Adam): the plan is given step + 1
    group_key: Callable  # group -> (its params list, then the hyper-parameters a step reads): a change is looked at
    needs_state: Callable  # group -> whether its parameters' first update creates state arrays (SGD: momentum != 0)
    hyper: Callable  # group -> the hyper-parameter tuple TrainPlan.step takes for it
    fresh_state: Callable  # (param, group, zeros, empty) -> the state entry its first update creates ({} for none)


# Registration: the kinds of NativeLayer that open a segment (their epilogue can apply an activation: the
# per-layer path runs such a pair as one call), the kinds applied in an epilogue, and, of these, the kinds
# the native whole-step plans take (a model with any other trains layer by layer).
SEGMENT_OPENERS = {"linear", "conv2d", "batch_norm"}
EPILOGUES = {"activation"}
PLAN_KINDS = {"linear", "activation"}


# The epilogue settings of a segment opener with no activation after it.
NO_EPILOGUE = {"activation": "identity", "negative_slope": 0.01}


class Segment(NamedTuple):
    """One layer of a plan: the opener (a NativeLayer) and the epilogue applied to its output (or None)."""
    opener: NativeLayer
    epilogue: NativeLayer | None

    @property
    def in_features(self) -> int:
        return self.opener.settings["in_features"]

    @property
    def out_features(self) -> int:
        return self.opener.settings["out_features"]


def _native(module):
    describe = getattr(module, "native_layer", None)
    return describe() if describe is not None else None


def segments(modules) -> list:
    """[(module or NativeLayer opener, NativeLayer epilogue or None)]: the modules in order, an opener
    followed by an epilogue paired (Sequential's per-layer path runs such a pair as one fused call). A
    module without a native form, or an opener with no epilogue after it, stands alone."""
    mods, described = list(modules), [_native(m) for m in modules]
    out, i = [], 0
    while i < len(mods):
        here = described[i]
        after = described[i + 1] if i + 1 < len(mods) else None
        if here is not None and here.kind in SEGMENT_OPENERS and after is not None and after.kind in EPILOGUES:
            out.append((here, after))
            i += 2
        else:
            out.append((here if here is not None and here.kind in SEGMENT_OPENERS else mods[i], None))
            i += 1
    return out


def compile_chain(modules, parameters) -> list | str:
    """[Segment] when modules form a chain the plans take (each an opener, optionally followed by one
    epilogue) with every parameter of one dtype; else why not (a str)."""
    chain, position = [], 0
    for first, epilogue in segments(modules):
        if not isinstance(first, NativeLayer) or first.kind not in PLAN_KINDS:
            module = first.module if isinstance(first, NativeLayer) else first
            return f"module {position} ({type(module).__name__}) is not a Linear layer or one activation after it"
        chain.append(Segment(first, epilogue))
        position += 1 if epilogue is None else 2
    if not chain:
        return "the model is empty"
    if len({p.dtype for p in parameters}) != 1:
        return "the parameters have different dtypes"
    return chain


def plan_layers(chain) -> list:
    """The layer tuples the native plans take: (activation, negative_slope, has_bias) per segment."""
    layers = []
    for seg in chain:
        act = seg.epilogue.settings if seg.epilogue is not None else NO_EPILOGUE
        layers.append((act["activation"], act["negative_slope"], seg.opener.settings["bias"]))
    return layers
