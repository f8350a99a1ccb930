"""Every native op against the NumPy reference, through one registry.

Each case draws float64 inputs, rounds them to the dtype under test, runs the native op in that
dtype and the reference in float64 on the same values, and compares every output (shape first,
then values) with fuseprop.testing's tolerances: float64 at ~1e-10, float32 at rtol 1e-5 with
atol scaled by sqrt(K) for reductions of length K. In-place ops are compared through the arrays
they update. The worst errors seen are collected and printed by test_report_worst_errors.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import fuseprop
from fuseprop import _C, functional, reference, testing

DTYPES = [np.float32, np.float64]
WORST: dict[str, dict] = {}


@dataclass
class Op:
    name: str
    make: Callable  # (rng, shape) -> args: float64 arrays, int arrays, python values
    run: Callable  # (module, *args) -> tuple of outputs (arrays, floats or None)
    shapes: list
    k: Callable = field(default=lambda shape: 1)  # reduction length behind each output element
    covers: str = ""  # the fuseprop.functional function it checks


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


def normal(rng, *shape, scale=1.0):
    return rng.normal(scale=scale, size=shape)


ELEMENTWISE_SHAPES = [(1, 1), (7, 13), (0, 5), (2, 3, 5), (64, 257)]
ROW_SHAPES = [(1, 1), (7, 13), (0, 5), (4, 1000), (33, 10)]
LINEAR_SHAPES = [(1, 1, 1), (7, 13, 5), (32, 784, 16), (0, 5, 3), (5, 3, 1), (130, 300, 97), (2, 40, 3100)]
MATMUL_SHAPES = [(1, 1, 1), (7, 13, 5), (32, 16, 784), (16, 784, 32), (0, 5, 3), (5, 0, 3), (4, 6, 0),
                 (97, 65, 300), (130, 40, 520), (3, 3100, 5)]  # 3100 > every level's nc
ACTS = [("identity", 0.01), ("relu", 0.01), ("leaky_relu", 0.01), ("leaky_relu", 0.3), ("sigmoid", 0.01),
        ("tanh", 0.01), ("gelu", 0.01), ("gelu_tanh", 0.01)]


def matmul_case(trans_a, trans_b, with_c, module_name="functional"):
    def make(rng, shape):
        m, n, k = shape
        # scaled so outputs are O(1): the sqrt(K) in the tolerance is for the rounding of the sum
        a = normal(rng, *((k, m) if trans_a else (m, k)), scale=max(k, 1) ** -0.5)
        b = normal(rng, *((n, k) if trans_b else (k, n)))
        return (a, b, normal(rng, m, n) if with_c else None)

    def run(mod, a, b, c):
        mm = _C.matmul_reference if (module_name == "C_reference" and mod is functional) else mod.matmul
        if c is None:
            return mm(a, b, trans_a, trans_b)
        mm(a, b, trans_a, trans_b, c, 1.5, -0.5)
        return c

    tag = f"{'T' if trans_a else 'N'}{'T' if trans_b else 'N'}{'+c' if with_c else ''}"
    return Op(f"matmul_{module_name}_{tag}", make, run, MATMUL_SHAPES, k=lambda s: s[2],
              covers="matmul" if module_name == "functional" else "_C.matmul_reference")


def activation_case(act, slope):
    return [
        Op(f"activation_forward_{act}_{slope}", lambda rng, s: (normal(rng, *s, scale=2.0),),
           lambda mod, x: mod.activation_forward(x, act, slope), ELEMENTWISE_SHAPES, covers="activation_forward"),
        Op(f"activation_backward_{act}_{slope}",
           lambda rng, s: (normal(rng, *s), normal(rng, *s, scale=2.0), rng.uniform(-0.99, 0.99, size=s)),
           lambda mod, dy, x, y: mod.activation_backward(dy, x, y, act, slope), ELEMENTWISE_SHAPES,
           covers="activation_backward"),
    ]


def linear_cases(act, slope, bias):
    def make_fwd(rng, s):
        b, i, o = s
        return normal(rng, b, i), normal(rng, o, i, scale=i ** -0.5), normal(rng, o) if bias else None

    def make_bwd(rng, s):
        b, i, o = s
        x, w, bb = make_fwd(rng, s)
        y, z = reference.linear_forward(x, w, bb, act, slope)
        # grad_y scaled so grad_weight = dz^T x (a sum over the batch) is O(1), as the sqrt(K) tolerance assumes
        return normal(rng, b, o, scale=max(b, 1) ** -0.5), x, w, z, y, normal(rng, o, i), normal(rng, o) if bias else None

    def run_bwd(mod, dy, x, w, z, y, dw, db):
        fresh = mod.linear_backward(dy, x, w, z, y, act, slope, has_bias=bias)
        mod.linear_backward(dy, x, w, z, y, act, slope, has_bias=bias, grad_weight=dw, grad_bias=db)
        return fresh + (dw, db)  # new gradients, then the accumulated ones

    tag = f"{act}_{slope}_{'bias' if bias else 'nobias'}"
    return [
        Op(f"linear_forward_{tag}", make_fwd, lambda mod, x, w, b: mod.linear_forward(x, w, b, act, slope),
           LINEAR_SHAPES, k=lambda s: s[1], covers="linear_forward"),
        Op(f"linear_backward_{tag}", make_bwd, run_bwd, LINEAR_SHAPES, k=lambda s: max(s), covers="linear_backward"),
    ]


def loss_cases():
    cases = []
    for smoothing, reduction in itertools.product([0.0, 0.1], ["mean", "sum"]):
        cases.append(Op(
            f"cross_entropy_{smoothing}_{reduction}",
            lambda rng, s: (normal(rng, *s, scale=3.0), rng.integers(0, s[1], size=s[0])),
            lambda mod, lg, lb, sm=smoothing, r=reduction: mod.cross_entropy_loss(lg, lb, sm, r),
            [(1, 1), (7, 13), (32, 10), (200, 3)], k=lambda s: s[0] * s[1], covers="cross_entropy_loss"))
    for reduction in ["mean", "sum"]:
        cases.append(Op(f"mse_{reduction}", lambda rng, s: (normal(rng, *s), normal(rng, *s)),
                        lambda mod, p, t, r=reduction: mod.mse_loss(p, t, r), [(1, 1), (7, 13), (3, 4, 5)],
                        k=lambda s: int(np.prod(s)), covers="mse_loss"))
        cases.append(Op(f"bce_with_logits_{reduction}",
                        lambda rng, s: (normal(rng, *s, scale=4.0), rng.uniform(0, 1, size=s)),
                        lambda mod, p, t, r=reduction: mod.bce_with_logits_loss(p, t, r), [(1, 1), (7, 13), (3, 4, 5)],
                        k=lambda s: int(np.prod(s)), covers="bce_with_logits_loss"))
    for reduction in ["sum"]:  # an empty batch is defined for "sum" only
        cases.append(Op(f"cross_entropy_empty_{reduction}", lambda rng, s: (normal(rng, *s), np.zeros(0, np.int64)),
                        lambda mod, lg, lb: mod.cross_entropy_loss(lg, lb, 0.0, "sum"), [(0, 4)],
                        covers="cross_entropy_loss"))
    return cases


def optimizer_cases():
    sgd_configs = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
                   dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.01)]
    adam_configs = [dict(), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
                    dict(lr=0.003, beta1=0.5, beta2=0.9, eps=1e-6)]
    cases = []
    for i, cfg in enumerate(sgd_configs):
        def run(mod, p, grads, buf, cfg=cfg):
            for step, g in enumerate(grads, start=1):  # several steps: the buffer's first and later updates
                mod.sgd_step(p, g, buf, step=step, **cfg)
            return p, buf
        cases.append(Op(f"sgd_step_{i}", lambda rng, s: (normal(rng, *s), [normal(rng, *s) for _ in range(4)],
                                                         np.zeros(s)), run, [(1,), (7, 13), (300,)],
                        covers="sgd_step"))
    for i, cfg in enumerate(adam_configs):
        def run(mod, p, grads, m, v, cfg=cfg):
            for step, g in enumerate(grads, start=1):
                mod.adam_step(p, g, m, v, step=step, **cfg)
            return p, m, v
        cases.append(Op(f"adam_step_{i}", lambda rng, s: (normal(rng, *s), [normal(rng, *s) for _ in range(4)],
                                                          np.zeros(s), np.zeros(s)), run, [(1,), (7, 13), (300,)],
                        covers="adam_step"))
    return cases


REGISTRY: list[Op] = (
    [matmul_case(ta, tb, c) for ta, tb, c in itertools.product([False, True], [False, True], [False, True])]
    + [matmul_case(ta, tb, False, "C_reference") for ta, tb in itertools.product([False, True], repeat=2)]
    + [op for act, slope in ACTS for op in activation_case(act, slope)]
    + [Op("softmax_forward", lambda rng, s: (normal(rng, *s, scale=3.0),), lambda m, x: m.softmax_forward(x), ROW_SHAPES,
          covers="softmax_forward"),
       Op("softmax_backward", lambda rng, s: (normal(rng, *s), reference.softmax_forward(normal(rng, *s))),
          lambda m, dy, y: m.softmax_backward(dy, y), ROW_SHAPES, k=lambda s: s[1], covers="softmax_backward"),
       Op("log_softmax_forward", lambda rng, s: (normal(rng, *s, scale=3.0),), lambda m, x: m.log_softmax_forward(x),
          ROW_SHAPES, k=lambda s: s[1], covers="log_softmax_forward"),
       Op("log_softmax_backward", lambda rng, s: (normal(rng, *s), reference.log_softmax_forward(normal(rng, *s))),
          lambda m, dy, y: m.log_softmax_backward(dy, y), ROW_SHAPES, k=lambda s: s[1], covers="log_softmax_backward")]
    + [op for act, slope in ACTS for bias in (True, False) for op in linear_cases(act, slope, bias)]
    + loss_cases()
    + optimizer_cases()
)
CASES = [(op, shape) for op in REGISTRY for shape in op.shapes]


def cast(value, dtype):
    if isinstance(value, (list, tuple)):
        return type(value)(cast(v, dtype) for v in value)
    if isinstance(value, np.ndarray) and value.dtype == np.float64:
        return np.ascontiguousarray(value.astype(dtype))
    return value


def upcast(value):
    if isinstance(value, (list, tuple)):
        return type(value)(upcast(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float64)  # always a copy
    return value


# float32 runs on every instruction set this machine has; float64 always uses the portable kernels.
LEVELS = list(_C.cpu_levels_available())
CONFIGS = [(np.float32, level) for level in LEVELS] + [(np.float64, "generic")]


@pytest.fixture
def cpu_level(request):
    """Runs the test with the float kernels of one instruction set, then restores the default."""
    default = fuseprop.cpu_level()
    fuseprop.set_cpu_level(request.param)
    yield request.param
    fuseprop.set_cpu_level(default)


@pytest.fixture
def gemm_path(request):
    """Forces one GEMM path (auto, packed, direct or dot), then restores auto."""
    _C._set_gemm_path(request.param)
    yield request.param
    _C._set_gemm_path("auto")


@pytest.mark.parametrize("dtype,cpu_level", CONFIGS, indirect=["cpu_level"],
                         ids=[f"{np.dtype(d).name}-{lv}" for d, lv in CONFIGS])
@pytest.mark.parametrize("op,shape", CASES, ids=[f"{op.name}-{'x'.join(map(str, s))}" for op, s in CASES])
def test_native_matches_reference(op, shape, dtype, cpu_level):
    check_case(op, shape, dtype)


# Every matmul case, and the fused linear layer with two epilogues (the epilogue does not depend on the path).
GEMM_OPS = [op for op in REGISTRY if op.covers == "matmul" or (
    op.covers in ("linear_forward", "linear_backward") and op.name.endswith(("gelu_tanh_0.01_bias", "relu_0.01_nobias")))]
GEMM_CASES = [(op, shape) for op in GEMM_OPS for shape in op.shapes]


@pytest.mark.parametrize("gemm_path", ["packed", "direct", "dot"], indirect=True)
@pytest.mark.parametrize("cpu_level", LEVELS, indirect=True)
@pytest.mark.parametrize("op,shape", GEMM_CASES, ids=[f"{op.name}-{'x'.join(map(str, s))}" for op, s in GEMM_CASES])
def test_every_gemm_path_matches_reference(op, shape, cpu_level, gemm_path):
    check_case(op, shape, np.float32)


def check_case(op, shape, dtype):
    # A stable seed per case: hash() of a str changes from process to process (PYTHONHASHSEED).
    rng = np.random.default_rng(zlib.crc32(f"{op.name}{shape}".encode()))
    args = cast(op.make(rng, shape), dtype)  # values representable in dtype, so both sides see the same inputs
    reference_args = upcast(args)  # copies, taken before in-place ops update args
    native = outputs(op.run(functional, *args))
    expected = outputs(op.run(reference, *reference_args))
    assert len(native) == len(expected)
    for i, (got, want) in enumerate(zip(native, expected)):
        label = f"{op.name}{shape}[{i}]"
        if want is None:
            assert got is None, label
            continue
        if isinstance(want, float):
            assert isinstance(got, float), label
            got, want = np.array(got), np.array(want)
        else:
            assert isinstance(got, np.ndarray) and got.dtype == dtype, f"{label}: dtype {getattr(got, 'dtype', None)}"
        errors = testing.assert_parity(got, want, dtype=dtype, reduction_length=op.k(shape), name=label)
        worst = WORST.setdefault(np.dtype(dtype).name, {"max_abs_err": 0.0, "tolerance_used": 0.0, "where": ""})
        if errors["tolerance_used"] > worst["tolerance_used"]:
            worst.update(tolerance_used=errors["tolerance_used"], where=label)
        worst["max_abs_err"] = max(worst["max_abs_err"], errors["max_abs_err"])


def test_registry_covers_every_functional_op():
    ops = {n for n in dir(functional) if not n.startswith("_") and callable(getattr(functional, n))}
    ops -= {"as_labels"}  # a conversion helper, not an op
    assert ops == {op.covers for op in REGISTRY} - {"_C.matmul_reference"}
    assert set(functional.ACTIVATIONS) == set(reference.ACTIVATIONS) == {a for a, _ in ACTS}
