"""The CUDA kernels op by op against the NumPy reference, through the _C.cuda_* entries (host arrays
in, one op on the device, host arrays out).

Inputs are drawn in float64 and rounded to float32; the kernel runs in float32 and the reference in
float64 on the same rounded values; outputs are compared with fuseprop.testing.assert_parity at the
float32 tolerances (rtol 1e-5, atol 1e-6 sqrt(K) for sums of length K), except TF32 GEMMs (see
tf32_atol). The parity tests need a GPU and skip without one; the tests at the end run anywhere the
backend is compiled: arguments are checked first, and then, without a device, every entry raises
RuntimeError "no CUDA device: ...".
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fuseprop import _C, cuda, reference, testing
from fuseprop.reference import ACTIVATIONS

needs_gpu = [pytest.mark.cuda, pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device")]
needs_backend_without_gpu = pytest.mark.skipif(not cuda.is_compiled() or cuda.is_available(),
                                               reason="needs the CUDA backend compiled and no device present")


def apply(marks):
    def decorate(f):
        for mark in marks:
            f = mark(f)
        return f
    return decorate


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def f64(a):
    return a.astype(np.float64)


def tf32_atol(a, b, K):
    """TF32 keeps 10 of float32's 23 mantissa bits: each input is rounded to nearest with unit roundoff
    u = 2^-11, so each product a_ik b_kj carries a relative error of at most 2u = 2^-10 (about 1e-3),
    and the float accumulation of K terms adds at most about K 2^-23 more. The sum of the errors is then
    bounded by (2^-10 + K 2^-23) sum_k |a_ik b_kj|; the tolerance is that bound at its largest element."""
    bound = np.abs(f64(a)) @ np.abs(f64(b)) if a.size and b.size else np.zeros(1)
    return (2.0**-10 + K * 2.0**-23) * float(np.max(bound, initial=0.0))


# ---------------------------------------------------------------- matmul
MATMUL_SHAPES = [(1, 1, 1), (1, 7, 3), (17, 33, 9), (130, 129, 31), (128, 128, 128), (255, 17, 300),
                 (0, 5, 4), (5, 0, 4), (5, 4, 0)]  # (M, N, K)


@apply(needs_gpu)
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M,N,K", MATMUL_SHAPES)
def test_matmul(M, N, K, trans_a, trans_b, tf32):
    rng = np.random.default_rng(M * 10007 + N * 101 + K)
    a = f32(rng, *((K, M) if trans_a else (M, K)))
    b = f32(rng, *((N, K) if trans_b else (K, N)))
    want = reference.matmul(f64(a), f64(b), trans_a, trans_b)
    got = _C.cuda_matmul(a, b, trans_a, trans_b, tf32)
    assert got.dtype == np.float32
    if tf32:
        op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
        testing.assert_parity(got, want, rtol=1e-5, atol=tf32_atol(op_a, op_b, K), name="tf32 matmul")
    else:
        testing.assert_parity(got, want, reduction_length=K, name="matmul")


# ---------------------------------------------------------------- linear
LINEAR_SHAPES = [(1, 1, 1), (0, 5, 3), (7, 13, 5), (33, 130, 17), (130, 64, 129)]  # (B, IN, OUT)


@apply(needs_gpu)
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("B,IN,OUT", LINEAR_SHAPES)
def test_linear_forward(B, IN, OUT, activation, has_bias, tf32):
    rng = np.random.default_rng(B * 1009 + IN * 31 + OUT)
    x, w = f32(rng, B, IN), f32(rng, OUT, IN, scale=IN**-0.5)
    b = f32(rng, OUT) if has_bias else None
    want_y, want_z = reference.linear_forward(f64(x), f64(w), None if b is None else f64(b), activation, 0.1)
    y, z = _C.cuda_linear_forward(x, w, b, activation, 0.1, tf32)
    if tf32:
        # z's error is the GEMM's (the bias add is exact enough); |act'| <= 1.13 (gelu), so y's is at most 1.2 times z's.
        atol = tf32_atol(x, w.T, IN) + 1e-6
        testing.assert_parity(z, want_z, rtol=1e-5, atol=atol, name="tf32 z")
        testing.assert_parity(y, want_y, rtol=1e-5, atol=1.2 * atol, name="tf32 y")
    else:
        testing.assert_parity(z, want_z, reduction_length=IN, name="z")
        testing.assert_parity(y, want_y, reduction_length=IN, name="y")


@apply(needs_gpu)
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("B,IN,OUT", LINEAR_SHAPES)
def test_linear_backward(B, IN, OUT, activation, has_bias):
    rng = np.random.default_rng(B * 7919 + IN * 17 + OUT)
    x, w, dy = f32(rng, B, IN), f32(rng, OUT, IN, scale=IN**-0.5), f32(rng, B, OUT)
    y, z = (a.astype(np.float32) for a in reference.linear_forward(f64(x), f64(w), None, activation, 0.1))
    want = reference.linear_backward(f64(dy), f64(x), f64(w), f64(z), f64(y), activation, 0.1, has_bias)
    got = _C.cuda_linear_backward(dy, x, w, z, y, activation, 0.1, has_bias)
    for name, g, e, k in zip(("grad_x", "grad_weight", "grad_bias"), got, want, (OUT, B, B)):
        if e is None:
            assert g is None
        else:
            testing.assert_parity(g, e, reduction_length=k, name=name)


# ---------------------------------------------------------------- activations
ELEMENTWISE_SHAPES = [(1,), (0,), (7, 13), (3, 1000), (100003,)]


@apply(needs_gpu)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=str)
def test_activation_forward_and_backward(shape, activation):
    rng = np.random.default_rng(len(shape) * 1000 + sum(shape))
    x, dy = f32(rng, *shape, scale=3.0), f32(rng, *shape)
    y = _C.cuda_activation_forward(x, activation, 0.1)
    testing.assert_parity(y, reference.activation_forward(f64(x), activation, 0.1), name=f"{activation} forward")
    dx = _C.cuda_activation_backward(dy, x, y, activation, 0.1)
    want = reference.activation_backward(f64(dy), f64(x), f64(y), activation, 0.1)
    testing.assert_parity(dx, want, name=f"{activation} backward")


# ---------------------------------------------------------------- cross-entropy
@apply(needs_gpu)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("B,C", [(1, 1), (1, 10), (7, 3), (33, 100), (64, 1000), (0, 5)])
def test_cross_entropy(B, C, label_smoothing, reduction):
    if B == 0 and reduction == "mean":
        pytest.skip("an empty batch has no mean loss (a ValueError, tested below)")
    rng = np.random.default_rng(B * 131 + C)
    logits, labels = f32(rng, B, C, scale=3.0), rng.integers(0, C, B).astype(np.int64)
    want_loss, want_grad = reference.cross_entropy_loss(f64(logits), labels, label_smoothing, reduction)
    loss, grad = _C.cuda_cross_entropy_loss(logits, labels, label_smoothing, reduction)
    testing.assert_parity(np.float64(loss), np.float64(want_loss), dtype=np.float32, reduction_length=B * C, name="loss")
    testing.assert_parity(grad, want_grad, reduction_length=C, name="grad_logits")


@apply(needs_gpu)
def test_cross_entropy_total_is_deterministic():
    rng = np.random.default_rng(5)
    logits, labels = f32(rng, 4099, 37), rng.integers(0, 37, 4099).astype(np.int64)
    losses = {_C.cuda_cross_entropy_loss(logits, labels, 0.1, "sum")[0] for _ in range(5)}
    assert len(losses) == 1


# ---------------------------------------------------------------- optimizers
OPTIM_SHAPES = [(1,), (0,), (7, 13), (100003,)]
SGD_CONFIGS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
               dict(momentum=0.9, nesterov=True, weight_decay=0.01), dict(weight_decay=0.1)]


@apply(needs_gpu)
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("shape", OPTIM_SHAPES, ids=str)
def test_sgd_steps(shape, config):
    rng = np.random.default_rng(sum(shape) + 3)
    param = f32(rng, *shape)
    buf = np.zeros_like(param) if config["momentum"] else None
    want_param, want_buf = f64(param), None if buf is None else f64(buf)
    for step in (1, 2, 3):  # the first step initialises the momentum buffer, the later ones update it
        grad = f32(rng, *shape)
        reference.sgd_step(want_param, f64(grad), want_buf, lr=0.1, step=step, **config)
        _C.cuda_sgd_step(param, grad, buf, lr=0.1, step=step, **config)
        testing.assert_parity(param, want_param, rtol=1e-5 * step, atol=1e-6 * step, name=f"param after step {step}")
        if buf is not None:
            testing.assert_parity(buf, want_buf, rtol=1e-5 * step, atol=1e-6 * step, name=f"buffer after step {step}")
        # the next step starts from the float32 state on both sides
        want_param[...] = param
        if buf is not None:
            want_buf[...] = buf


@apply(needs_gpu)
@pytest.mark.parametrize("decoupled,weight_decay", [(False, 0.0), (False, 0.01), (True, 0.01)],
                         ids=["adam", "adam-l2", "adamw"])
@pytest.mark.parametrize("shape", OPTIM_SHAPES, ids=str)
def test_adam_steps(shape, decoupled, weight_decay):
    rng = np.random.default_rng(sum(shape) + 11)
    param = f32(rng, *shape)
    m, v = np.zeros_like(param), np.zeros_like(param)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled_weight_decay=decoupled)
    for step in (1, 2, 3):
        grad = f32(rng, *shape)
        want = [f64(param), f64(m), f64(v)]
        reference.adam_step(want[0], f64(grad), want[1], want[2], step=step, **hyper)
        _C.cuda_adam_step(param, grad, m, v, step=step, **hyper)
        for name, got, w in zip(("param", "exp_avg", "exp_avg_sq"), (param, m, v), want):
            testing.assert_parity(got, w, name=f"{name} after step {step}")


# ---------------------------------------------------------------- without a device; argument checks first
def valid_calls():
    """Every cuda_* entry with valid float32 arguments: (name, function, args, kwargs)."""
    a, x, w = np.ones((3, 4), np.float32), np.ones((2, 4), np.float32), np.ones((5, 4), np.float32)
    z, labels, p = np.ones((2, 5), np.float32), np.zeros(2, np.int64), np.ones(6, np.float32)
    return [
        ("cuda_matmul", _C.cuda_matmul, (a, a, False, True, True), {}),
        ("cuda_linear_forward", _C.cuda_linear_forward, (x, w, np.ones(5, np.float32), "gelu"), {}),
        ("cuda_linear_backward", _C.cuda_linear_backward, (z, x, w, z, z, "relu"), {}),
        ("cuda_activation_forward", _C.cuda_activation_forward, (a, "tanh"), {}),
        ("cuda_activation_backward", _C.cuda_activation_backward, (a, a, a, "sigmoid"), {}),
        ("cuda_cross_entropy_loss", _C.cuda_cross_entropy_loss, (z, labels, 0.1, "mean"), {}),
        ("cuda_sgd_step", _C.cuda_sgd_step, (p, p.copy(), p.copy()), dict(lr=0.1, momentum=0.9)),
        ("cuda_adam_step", _C.cuda_adam_step, (p, p.copy(), p.copy(), p.copy()), dict(step=1)),
        ("cuda_matmul_time_ms", _C.cuda_matmul_time_ms, (64, 64, 64), {}),
    ] if cuda.is_compiled() else []


@needs_backend_without_gpu
@pytest.mark.parametrize("name,fn,args,kwargs", valid_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_entry_says_there_is_no_device(name, fn, args, kwargs):
    with pytest.raises(RuntimeError, match="^no CUDA device: ") as info:
        fn(*args, **kwargs)
    assert str(info.value) == cuda.status()


@needs_backend_without_gpu
@pytest.mark.parametrize("name,fn,args,kwargs", valid_calls()[:-1], ids=lambda v: v if isinstance(v, str) else "")
def test_float64_is_a_type_error_before_the_device_is_asked(name, fn, args, kwargs):
    args = (args[0].astype(np.float64),) + args[1:]
    with pytest.raises(TypeError, match="must have dtype float32"):
        fn(*args, **kwargs)


@needs_backend_without_gpu
def test_a_list_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        _C.cuda_activation_forward([1.0, 2.0], "relu")


@needs_backend_without_gpu
def test_mixed_dtypes_are_a_type_error():
    with pytest.raises(TypeError, match="b must have the same dtype as a"):
        _C.cuda_matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float64))


@needs_backend_without_gpu
def test_bad_shapes_and_values_are_value_errors():
    f = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        _C.cuda_matmul(f, f)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        _C.cuda_matmul(f.T, f.T)
    with pytest.raises(ValueError, match=r"weight must have shape \(out_features, 4\)"):
        _C.cuda_linear_forward(f, np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="activation must be one of"):
        _C.cuda_activation_forward(f, "swish")
    with pytest.raises(ValueError, match=r"grad_y must have shape \(3, 3\)"):
        _C.cuda_linear_backward(f, f, np.ones((3, 4), np.float32), None, None)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        _C.cuda_cross_entropy_loss(f, np.array([0, 4, 1], np.int64))
    with pytest.raises(ValueError, match="an empty batch has no mean loss"):
        _C.cuda_cross_entropy_loss(np.ones((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="nesterov momentum requires"):
        _C.cuda_sgd_step(f, f.copy(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="step must be >= 1"):
        _C.cuda_adam_step(f, f.copy(), f.copy(), f.copy(), step=0)
    with pytest.raises(ValueError, match="must not share memory"):
        _C.cuda_adam_step(f, f, f.copy(), f.copy(), step=1)
    with pytest.raises(ValueError, match="must be >= 1"):
        _C.cuda_matmul_time_ms(0, 64, 64)
