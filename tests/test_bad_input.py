"""Bad input gets a clear error and changes nothing.

Wrong type, dtype, layout, shape or ndim, labels out of range, empty batches, invalid
hyper-parameters and non-finite values where they matter: each raises TypeError / ValueError
(FloatingPointError for a non-finite training step) whose message names the argument, and every
array that could have been written is compared with a copy taken before the call. Non-finite
values where they do not matter propagate as NumPy propagates them.

fuseprop.functional is strict (float32/float64, one dtype per call, C-contiguous, aligned;
in-place outputs writeable and not overlapping the inputs). nn modules and losses convert their
INPUTS explicitly into new arrays; parameters, optimizer state and in-place outputs are never
converted.
"""

import math
import re

import numpy as np
import pytest

import fuseprop
from fuseprop import functional as F
from fuseprop import losses, nn, optim, reference

# ---------------------------------------------------------------------------------------------
# helpers


def _rng(seed=0):
    return np.random.default_rng(seed)


def _randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _unaligned(arr):
    """A writeable copy of arr whose data starts one byte past an aligned address."""
    buf = bytearray(arr.nbytes + 1)
    out = np.frombuffer(buf, dtype=np.uint8, offset=1).view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    assert not out.flags.aligned and out.flags.c_contiguous and out.flags.writeable
    return out


def _strided(arr):
    """Same shape and values as arr, every other element of a wider buffer (x[..., ::2])."""
    out = np.repeat(arr, 2, axis=-1)[..., ::2]
    assert not out.flags.c_contiguous
    return out


def _transposed(arr):
    """Same shape and values as the 2-D arr, but a transposed (Fortran-ordered) view."""
    out = np.ascontiguousarray(arr.T).T
    assert not out.flags.c_contiguous
    return out


def _negative_stride(arr):
    """Same shape and values as arr, viewed through a negative first stride."""
    out = np.flip(np.flip(arr, 0).copy(), 0)
    assert out.strides[0] < 0
    return out


def _snapshot(args):
    return {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}


def _assert_unchanged(args, snap):
    for k, before in snap.items():
        np.testing.assert_array_equal(args[k], before, err_msg=f"{k} was modified by a call that raised")


def _params_snapshot(model):
    return [p.data.copy() for p in model.parameters()]


def _assert_params_unchanged(model, snap):
    for p, before in zip(model.parameters(), snap):
        np.testing.assert_array_equal(p.data, before, err_msg=f"{p.name} changed")


def _mlp(dtype=np.float32):
    fuseprop.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, dtype=dtype), nn.ReLU(), nn.Linear(4, 2, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# functional: every float array argument of every op, in every wrong form
#
# Each op is listed with good float32 arguments (arrays first, in the order the op checks them;
# the first array defines the call's dtype). Each test replaces ONE array by a bad version.

_OPS = {
    "matmul": (F.matmul, lambda r: dict(a=_randn(r, 4, 3), b=_randn(r, 3, 2), c=_randn(r, 4, 2), beta=1.0)),
    "activation_forward": (F.activation_forward, lambda r: dict(x=_randn(r, 4, 3), activation="relu")),
    "activation_backward": (F.activation_backward,
                            lambda r: dict(grad_y=_randn(r, 4, 3), x=_randn(r, 4, 3), y=_randn(r, 4, 3),
                                           activation="tanh")),
    "softmax_forward": (F.softmax_forward, lambda r: dict(x=_randn(r, 4, 3))),
    "softmax_backward": (F.softmax_backward, lambda r: dict(grad_y=_randn(r, 4, 3), y=_randn(r, 4, 3))),
    "log_softmax_forward": (F.log_softmax_forward, lambda r: dict(x=_randn(r, 4, 3))),
    "log_softmax_backward": (F.log_softmax_backward, lambda r: dict(grad_y=_randn(r, 4, 3), y=_randn(r, 4, 3))),
    "linear_forward": (F.linear_forward,
                       lambda r: dict(x=_randn(r, 4, 3), weight=_randn(r, 2, 3), bias=_randn(r, 2))),
    "linear_backward": (F.linear_backward,
                        lambda r: dict(grad_y=_randn(r, 4, 2), x=_randn(r, 4, 3), weight=_randn(r, 2, 3),
                                       z=_randn(r, 4, 2), y=_randn(r, 4, 2), grad_weight=_randn(r, 2, 3),
                                       grad_bias=_randn(r, 2), activation="relu")),
    "cross_entropy_loss": (F.cross_entropy_loss, lambda r: dict(logits=_randn(r, 4, 3), labels=np.array([0, 2, 1, 2]))),
    "mse_loss": (F.mse_loss, lambda r: dict(pred=_randn(r, 4, 3), target=_randn(r, 4, 3))),
    "bce_with_logits_loss": (F.bce_with_logits_loss,
                             lambda r: dict(logits=_randn(r, 4, 3), target=r.uniform(size=(4, 3)).astype(np.float32))),
    "sgd_step": (F.sgd_step,
                 lambda r: dict(param=_randn(r, 2, 3), grad=_randn(r, 2, 3), momentum_buffer=_randn(r, 2, 3),
                                lr=0.1, momentum=0.9, step=2)),
    "adam_step": (F.adam_step,
                  lambda r: dict(param=_randn(r, 2, 3), grad=_randn(r, 2, 3), exp_avg=_randn(r, 2, 3),
                                 exp_avg_sq=np.abs(_randn(r, 2, 3)), step=3)),
}


def _call(op, **override):
    fn, build = _OPS[op]
    args = build(_rng())
    args.update(override)
    return fn, args


def _float_args(op):
    """Names of the float array arguments of op, the dtype-defining one first."""
    _, args = _call(op)
    return [k for k, v in args.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]


# (transform, exception, message after "<name> ", applies to the dtype-defining argument, needs 2-D)
_BAD_FORMS = {
    "list": (lambda a: a.tolist(), TypeError, r"must be a numpy\.ndarray, got list", True, False),
    "int64": (lambda a: a.astype(np.int64), TypeError, r"must .*float32.*got int64", True, False),
    "float16": (lambda a: a.astype(np.float16), TypeError, r"must .*float32.*got float16", True, False),
    "complex64": (lambda a: a.astype(np.complex64), TypeError, r"must .*float32.*got complex64", True, False),
    "object": (lambda a: a.astype(object), TypeError, r"must .*float32.*got object", True, False),
    "big_endian_f4": (lambda a: a.astype(">f4"), TypeError, r"must .*float32.*got >f4", True, False),
    "mixed_float64": (lambda a: a.astype(np.float64), TypeError,
                      r"must have the same dtype as \w+ \(float32\), got float64", False, False),
    "strided": (_strided, ValueError, r"must be C-contiguous", True, False),
    "transposed": (_transposed, ValueError, r"must be C-contiguous", True, True),
    "negative_stride": (_negative_stride, ValueError, r"must be C-contiguous", True, False),
    "unaligned": (_unaligned, ValueError, r"must be aligned", True, False),
}


def _bad_form_cases():
    for op in _OPS:
        names = _float_args(op)
        _, good = _call(op)
        for i, name in enumerate(names):
            for form, (_, _, _, first_ok, needs_2d) in _BAD_FORMS.items():
                if (i == 0 and not first_ok) or (needs_2d and good[name].ndim != 2):
                    continue
                yield pytest.param(op, name, form, id=f"{op}-{name}-{form}")


@pytest.mark.parametrize("op", list(_OPS))
def test_good_arguments_are_accepted(op):
    # The baseline every bad-form case starts from: each failure below is caused by the one bad argument.
    fn, args = _call(op)
    fn(**args)


@pytest.mark.parametrize("op, name, form", list(_bad_form_cases()))
def test_functional_rejects_bad_array_and_writes_nothing(op, name, form):
    transform, exc, message, _, _ = _BAD_FORMS[form]
    fn, args = _call(op)
    args[name] = transform(args[name])
    snap = _snapshot(args)
    with pytest.raises(exc, match=rf"^{name} {message}"):
        fn(**args)
    _assert_unchanged(args, snap)


def test_big_endian_float32_is_not_converted_silently():
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    with pytest.raises(TypeError, match=r"^x must have dtype float32 or float64 \(native byte order\), got >f4"):
        F.activation_forward(x, "relu")


# ---------------------------------------------------------------------------------------------
# functional: ndim and shapes


@pytest.mark.parametrize("op, name, shape", [
    pytest.param("matmul", "a", (3,), id="matmul-a-1d"),
    pytest.param("matmul", "b", (3, 2, 1), id="matmul-b-3d"),
    pytest.param("softmax_forward", "x", (12,), id="softmax-x-1d"),
    pytest.param("softmax_forward", "x", (2, 2, 3), id="softmax-x-3d"),
    pytest.param("log_softmax_forward", "x", (12,), id="log_softmax-x-1d"),
    pytest.param("softmax_backward", "grad_y", (2, 2, 3), id="softmax_backward-grad_y-3d"),
    pytest.param("linear_forward", "x", (3,), id="linear_forward-x-1d"),
    pytest.param("linear_forward", "x", (4, 1, 3), id="linear_forward-x-3d"),
    pytest.param("linear_forward", "weight", (6,), id="linear_forward-weight-1d"),
    pytest.param("linear_backward", "x", (12,), id="linear_backward-x-1d"),
    pytest.param("cross_entropy_loss", "logits", (12,), id="cross_entropy-logits-1d"),
])
def test_functional_rejects_wrong_ndim(op, name, shape):
    fn, args = _call(op)
    args[name] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"^{name} must be \d-D, got a {len(shape)}-D array"):
        fn(**args)


def test_matmul_rejects_mismatched_inner_dimensions():
    with pytest.raises(ValueError, match=r"inner dimensions differ: op\(a\) is \(4, 3\) and op\(b\) is \(2, 2\)"):
        F.matmul(np.zeros((4, 3), np.float32), np.zeros((2, 2), np.float32))


def test_matmul_inner_dimensions_follow_the_transpose_flags():
    a, b = np.zeros((4, 3), np.float32), np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"op\(a\) is \(3, 4\) and op\(b\) is \(3, 2\)"):
        F.matmul(a, b, trans_a=True)


@pytest.mark.parametrize("op, name, shape, message", [
    pytest.param("matmul", "c", (2, 4), r"^c must have shape \(4, 2\), got \(2, 4\)", id="matmul-c"),
    pytest.param("linear_forward", "weight", (2, 4), r"^weight must have shape \(out_features, 3\).*got \(2, 4\)",
                 id="linear_forward-weight-vs-x"),
    pytest.param("linear_forward", "bias", (3,), r"^bias must have shape \(2,\), got \(3,\)", id="linear_forward-bias"),
    pytest.param("linear_backward", "grad_y", (4, 3), r"^grad_y must have shape \(4, 2\), got \(4, 3\)",
                 id="linear_backward-grad_y"),
    pytest.param("linear_backward", "z", (4, 3), r"^z must have shape \(4, 2\), got \(4, 3\)",
                 id="linear_backward-z-vs-grad_y"),
    pytest.param("linear_backward", "y", (3, 2), r"^y must have shape \(4, 2\), got \(3, 2\)", id="linear_backward-y"),
    pytest.param("linear_backward", "grad_weight", (3, 2), r"^grad_weight must have shape \(2, 3\), got \(3, 2\)",
                 id="linear_backward-grad_weight"),
    pytest.param("linear_backward", "grad_bias", (3,), r"^grad_bias must have shape \(2,\), got \(3,\)",
                 id="linear_backward-grad_bias"),
    pytest.param("activation_backward", "x", (3, 4), r"^x must have the same shape as grad_y \(4, 3\), got \(3, 4\)",
                 id="activation_backward-x-vs-grad_y"),
    pytest.param("softmax_backward", "y", (4, 2), r"^y must have the same shape as grad_y \(4, 3\), got \(4, 2\)",
                 id="softmax_backward-y-vs-grad_y"),
    pytest.param("mse_loss", "target", (4, 1), r"^target must have the same shape as pred \(4, 3\), got \(4, 1\)",
                 id="mse-target-vs-pred"),
    pytest.param("bce_with_logits_loss", "target", (12,), r"^target must have the same shape as logits",
                 id="bce-target-vs-logits"),
    pytest.param("sgd_step", "grad", (3, 2), r"^grad must have the same shape as param \(2, 3\), got \(3, 2\)",
                 id="sgd-grad-vs-param"),
    pytest.param("sgd_step", "momentum_buffer", (6,), r"^momentum_buffer must have the same shape as param",
                 id="sgd-momentum_buffer-vs-param"),
    pytest.param("adam_step", "exp_avg", (2, 2), r"^exp_avg must have the same shape as param", id="adam-exp_avg"),
    pytest.param("adam_step", "exp_avg_sq", (3, 2), r"^exp_avg_sq must have the same shape as param",
                 id="adam-exp_avg_sq"),
])
def test_functional_rejects_mismatched_shape_and_writes_nothing(op, name, shape, message):
    fn, args = _call(op)
    args[name] = np.ones(shape, np.float32)
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=message):
        fn(**args)
    _assert_unchanged(args, snap)


# ---------------------------------------------------------------------------------------------
# functional: class labels


_LOGITS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


@pytest.mark.parametrize("labels, message", [
    pytest.param(np.array([0.0, 1.0, 2.0, 1.0]), r"^labels must be integer class indices, got dtype float64",
                 id="float64"),
    pytest.param(np.array([0, 1, 2, 1], np.float32), r"^labels must be integer class indices, got dtype float32",
                 id="float32"),
    pytest.param(np.array([True, False, True, False]), r"^labels must be integer class indices, got dtype bool",
                 id="bool"),
    pytest.param([0, 1, 2, 1], r"^labels must be a numpy\.ndarray .*got list", id="list"),
])
def test_cross_entropy_rejects_non_integer_labels(labels, message):
    with pytest.raises(TypeError, match=message):
        F.cross_entropy_loss(_LOGITS, labels)


@pytest.mark.parametrize("labels, message", [
    pytest.param(np.array([0, -1, 2, 1]), r"^labels must be in \[0, 3\) .*labels\[1\] is -1", id="negative"),
    pytest.param(np.array([0, 1, 3, 1]), r"^labels must be in \[0, 3\) .*labels\[2\] is 3", id="equal_to_C"),
    pytest.param(np.array([0, 1, 2, 2**63], np.uint64), r"^labels holds a value too large.*9223372036854775808",
                 id="huge_uint64"),
    pytest.param(np.array([0, 1, 2, 255], np.uint8), r"^labels must be in \[0, 3\)", id="uint8_out_of_range"),
    pytest.param(np.array([0, 1, 2]), r"^labels must have shape \(4,\), got \(3,\)", id="too_short"),
    pytest.param(np.array([[0], [1], [2], [1]]), r"^labels must have shape \(4,\), got \(4, 1\)", id="column"),
])
def test_cross_entropy_rejects_bad_label_values_and_shapes(labels, message):
    with pytest.raises(ValueError, match=message):
        F.cross_entropy_loss(_LOGITS, labels)


@pytest.mark.parametrize("batch", [4, 1])
def test_cross_entropy_rejects_0d_labels(batch):
    with pytest.raises(ValueError, match=rf"^labels must have shape \({batch},\), got \(\)"):
        F.cross_entropy_loss(_LOGITS[:batch], np.array(1))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint16, np.uint64])
def test_cross_entropy_converts_any_integer_labels_explicitly(dtype):
    labels = np.array([0, 2, 1, 2], dtype)
    before = labels.copy()
    loss, grad = F.cross_entropy_loss(_LOGITS, labels)
    loss64, grad64 = F.cross_entropy_loss(_LOGITS, labels.astype(np.int64))
    assert loss == loss64
    np.testing.assert_array_equal(grad, grad64)
    np.testing.assert_array_equal(labels, before)
    assert labels.dtype == dtype


def test_cross_entropy_rejects_zero_classes():
    with pytest.raises(ValueError, match=r"^logits must have at least one class.*got shape \(2, 0\)"):
        F.cross_entropy_loss(np.zeros((2, 0), np.float32), np.zeros(2, np.int64))


# ---------------------------------------------------------------------------------------------
# functional: empty batches and names of modes


@pytest.mark.parametrize("fn, args, message", [
    pytest.param(F.cross_entropy_loss, (np.zeros((0, 3), np.float32), np.zeros(0, np.int64)),
                 r"cross_entropy_loss: an empty batch has no mean loss \(logits has shape \(0, 3\)\)",
                 id="cross_entropy"),
    pytest.param(F.mse_loss, (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)),
                 r"mse_loss: an empty batch has no mean loss \(pred has shape \(0, 3\)\)", id="mse"),
    pytest.param(F.bce_with_logits_loss, (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)),
                 r"bce_with_logits_loss: an empty batch has no mean loss \(logits has shape", id="bce"),
])
def test_mean_loss_of_an_empty_batch_is_an_error(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)


@pytest.mark.parametrize("fn, args", [
    pytest.param(F.cross_entropy_loss, (np.zeros((0, 3), np.float32), np.zeros(0, np.int64)), id="cross_entropy"),
    pytest.param(F.mse_loss, (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)), id="mse"),
    pytest.param(F.bce_with_logits_loss, (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)), id="bce"),
])
def test_summed_loss_of_an_empty_batch_is_zero_with_an_empty_gradient(fn, args):
    loss, grad = fn(*args, reduction="sum")
    assert loss == 0.0
    assert grad.shape == (0, 3) and grad.dtype == np.float32


@pytest.mark.parametrize("fn, args", [
    pytest.param(F.activation_forward, (np.zeros((2, 3), np.float32), "Relu"), id="activation_forward"),
    pytest.param(F.activation_backward, (np.zeros(3, np.float32),) * 3 + ("swish",), id="activation_backward"),
    pytest.param(F.linear_forward, (np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), None, "softplus"),
                 id="linear_forward"),
    pytest.param(F.linear_backward, (np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32),
                                     np.zeros((4, 3), np.float32), None, None, ""), id="linear_backward"),
])
def test_unknown_activation_is_an_error(fn, args):
    with pytest.raises(ValueError, match=r"^activation must be one of identity, relu, .*; got '"):
        fn(*args)


@pytest.mark.parametrize("fn, args", [
    pytest.param(F.cross_entropy_loss, (_LOGITS, np.array([0, 1, 2, 0])), id="cross_entropy"),
    pytest.param(F.mse_loss, (_LOGITS, _LOGITS), id="mse"),
    pytest.param(F.bce_with_logits_loss, (_LOGITS, _LOGITS), id="bce"),
])
@pytest.mark.parametrize("reduction", ["avg", "none", "MEAN"])
def test_unknown_reduction_is_an_error(fn, args, reduction):
    with pytest.raises(ValueError, match=rf"^reduction must be 'mean' or 'sum', got '{reduction}'"):
        fn(*args, reduction=reduction)


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.5, math.nan, math.inf])
def test_cross_entropy_rejects_label_smoothing_outside_0_1(label_smoothing):
    with pytest.raises(ValueError, match=r"^label_smoothing must be"):
        F.cross_entropy_loss(_LOGITS, np.array([0, 1, 2, 0]), label_smoothing=label_smoothing)


@pytest.mark.parametrize("slope", [math.nan, math.inf])
def test_non_finite_negative_slope_is_an_error(slope):
    with pytest.raises(ValueError, match=r"^negative_slope must be finite"):
        F.activation_forward(np.zeros(3, np.float32), "leaky_relu", slope)


# ---------------------------------------------------------------------------------------------
# functional: arrays written in place


def _ab():
    r = _rng()
    return _randn(r, 4, 3), _randn(r, 3, 4)


def test_matmul_read_only_c_is_an_error_and_unchanged():
    a, b = _ab()
    c = np.ones((4, 4), np.float32)
    c.flags.writeable = False
    with pytest.raises(ValueError, match=r"^c is written in place, so it must be writeable; got a read-only array"):
        F.matmul(a, b, c=c)
    np.testing.assert_array_equal(c, np.ones((4, 4)))


def test_matmul_c_of_another_dtype_is_not_a_silent_copy():
    a, b = _ab()
    c = np.ones((4, 4), np.float64)
    with pytest.raises(TypeError, match=r"^c must have the same dtype as a \(float32\), got float64"):
        F.matmul(a, b, c=c, beta=1.0)
    np.testing.assert_array_equal(c, np.ones((4, 4)))


def test_matmul_c_that_is_a_is_an_error():
    a = _randn(_rng(), 4, 4)
    before = a.copy()
    with pytest.raises(ValueError, match=r"^c is written in place and must not share memory with a"):
        F.matmul(a, before, c=a)
    np.testing.assert_array_equal(a, before)


def test_matmul_c_that_is_a_view_of_a_is_an_error():
    a = _randn(_rng(), 4, 4)
    before = a.copy()
    with pytest.raises(ValueError, match=r"^c is written in place and must not share memory with a"):
        F.matmul(a, before, c=a.reshape(4, 4)[:])
    np.testing.assert_array_equal(a, before)


def test_matmul_c_partly_overlapping_b_is_an_error():
    buf = np.arange(24, dtype=np.float32)
    before = buf.copy()
    a = np.ones((4, 4), np.float32)
    b, c = buf[:16].reshape(4, 4), buf[8:24].reshape(4, 4)
    with pytest.raises(ValueError, match=r"^c is written in place and must not share memory with b"):
        F.matmul(a, b, c=c)
    np.testing.assert_array_equal(buf, before)


def test_matmul_without_c_needs_beta_zero():
    a, b = _ab()
    with pytest.raises(ValueError, match=r"^beta must be 0 when c is not given"):
        F.matmul(a, b, beta=0.5)


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_matmul_non_finite_scalars_are_errors(name):
    a, b = _ab()
    c = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=rf"^{name} must be finite, got nan"):
        F.matmul(a, b, c=c, **{name: math.nan})
    np.testing.assert_array_equal(c, np.ones((4, 4)))


def test_linear_backward_read_only_grad_weight_is_an_error_and_unchanged():
    fn, args = _call("linear_backward")
    args["grad_weight"].flags.writeable = False
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_weight is written in place, so it must be writeable"):
        fn(**args)
    _assert_unchanged(args, snap)


def test_linear_backward_read_only_grad_bias_leaves_grad_weight_unchanged():
    # grad_weight passes every check; grad_bias fails: nothing at all is written.
    fn, args = _call("linear_backward")
    args["grad_bias"].flags.writeable = False
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_bias is written in place, so it must be writeable"):
        fn(**args)
    _assert_unchanged(args, snap)


@pytest.mark.parametrize("other", ["x", "weight", "grad_y", "z"])
def test_linear_backward_grad_weight_sharing_an_input_is_an_error(other):
    # grad_weight (OUT, IN) = (2, 3): make the other argument a (2, 3)-shaped or larger buffer it aliases.
    r = _rng()
    x, w = _randn(r, 2, 3), _randn(r, 2, 3)
    gy, z = _randn(r, 2, 2), _randn(r, 2, 2)
    args = dict(grad_y=gy, x=x, weight=w, z=z, y=z.copy(), activation="relu", grad_bias=None)
    if other in ("x", "weight"):
        args["grad_weight"] = args[other]
    else:
        big = np.zeros(6, np.float32)
        args[other] = big[:4].reshape(2, 2)
        args["grad_weight"] = big.reshape(2, 3)
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=rf"^grad_weight is written in place and must not share memory with {other}"):
        F.linear_backward(**args)
    _assert_unchanged(args, snap)


def test_linear_backward_grad_bias_without_bias_is_an_error():
    fn, args = _call("linear_backward")
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_bias was given but has_bias is False"):
        fn(**args, has_bias=False)
    _assert_unchanged(args, snap)


# ---------------------------------------------------------------------------------------------
# functional: optimizer steps


def test_sgd_step_float64_param_with_float32_grad_is_an_error_and_param_unchanged():
    param = np.ones((2, 3), np.float64)
    grad = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"^grad must have the same dtype as param \(float64\), got float32"):
        F.sgd_step(param, grad, lr=0.1)
    np.testing.assert_array_equal(param, np.ones((2, 3)))


def test_adam_step_float64_param_with_float32_state_is_an_error_and_nothing_changes():
    fn, args = _call("adam_step")
    args["param"] = args["param"].astype(np.float64)
    args["grad"] = args["grad"].astype(np.float64)
    snap = _snapshot(args)
    with pytest.raises(TypeError, match=r"^exp_avg must have the same dtype as param \(float64\), got float32"):
        fn(**args)
    _assert_unchanged(args, snap)


def test_sgd_step_momentum_without_buffer_is_an_error():
    fn, args = _call("sgd_step", momentum_buffer=None)
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=r"^momentum_buffer is required when momentum != 0"):
        fn(**args)
    _assert_unchanged(args, snap)


@pytest.mark.parametrize("op", ["sgd_step", "adam_step"])
@pytest.mark.parametrize("step", [0, -1])
def test_optimizer_step_count_below_one_is_an_error(op, step):
    fn, args = _call(op, step=step)
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=rf"^step must be >= 1 \(it counts this update\), got {step}"):
        fn(**args)
    _assert_unchanged(args, snap)


@pytest.mark.parametrize("op, name, value, message", [
    pytest.param("sgd_step", "lr", -0.1, r"^lr must be in \[0, inf\), got -0\.1", id="sgd-lr-negative"),
    pytest.param("sgd_step", "lr", math.nan, r"^lr must be finite, got nan", id="sgd-lr-nan"),
    pytest.param("sgd_step", "lr", math.inf, r"^lr must be finite, got inf", id="sgd-lr-inf"),
    pytest.param("sgd_step", "momentum", -0.5, r"^momentum must be in", id="sgd-momentum-negative"),
    pytest.param("sgd_step", "dampening", math.nan, r"^dampening must be finite", id="sgd-dampening-nan"),
    pytest.param("sgd_step", "weight_decay", -1.0, r"^weight_decay must be in", id="sgd-weight_decay-negative"),
    pytest.param("adam_step", "lr", -1e-3, r"^lr must be in \[0, inf\)", id="adam-lr-negative"),
    pytest.param("adam_step", "lr", math.nan, r"^lr must be finite", id="adam-lr-nan"),
    pytest.param("adam_step", "lr", -math.inf, r"^lr must be finite", id="adam-lr-minus-inf"),
    pytest.param("adam_step", "beta1", 1.0, r"^beta1 must be in \[0, 1\), got 1", id="adam-beta1-one"),
    pytest.param("adam_step", "beta2", 1.5, r"^beta2 must be in \[0, 1\), got 1\.5", id="adam-beta2-above-one"),
    pytest.param("adam_step", "beta1", -0.1, r"^beta1 must be in \[0, 1\)", id="adam-beta1-negative"),
    pytest.param("adam_step", "beta2", math.nan, r"^beta2 must be finite", id="adam-beta2-nan"),
    pytest.param("adam_step", "eps", -1e-8, r"^eps must be in", id="adam-eps-negative"),
    pytest.param("adam_step", "weight_decay", math.inf, r"^weight_decay must be finite", id="adam-weight_decay-inf"),
])
def test_optimizer_step_invalid_hyper_parameter_is_an_error(op, name, value, message):
    fn, args = _call(op, **{name: value})
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=message):
        fn(**args)
    _assert_unchanged(args, snap)


@pytest.mark.parametrize("momentum, dampening", [(0.9, 0.1), (0.0, 0.0)], ids=["with-dampening", "without-momentum"])
def test_sgd_step_nesterov_needs_momentum_and_no_dampening(momentum, dampening):
    fn, args = _call("sgd_step", momentum=momentum, dampening=dampening, nesterov=True)
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=r"^nesterov momentum requires momentum > 0 and dampening == 0"):
        fn(**args)
    _assert_unchanged(args, snap)


@pytest.mark.parametrize("op, name", [("sgd_step", "param"), ("sgd_step", "momentum_buffer"), ("adam_step", "param"),
                                      ("adam_step", "exp_avg"), ("adam_step", "exp_avg_sq")])
def test_optimizer_step_read_only_state_is_an_error(op, name):
    fn, args = _call(op)
    args[name].flags.writeable = False
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=rf"^{name} is written in place, so it must be writeable"):
        fn(**args)
    _assert_unchanged(args, snap)


@pytest.mark.parametrize("op, out, alias", [
    pytest.param("sgd_step", "param", "grad", id="sgd-param-is-grad"),
    pytest.param("sgd_step", "momentum_buffer", "grad", id="sgd-buffer-is-grad"),
    pytest.param("sgd_step", "momentum_buffer", "param", id="sgd-buffer-is-param"),
    pytest.param("adam_step", "param", "grad", id="adam-param-is-grad"),
    pytest.param("adam_step", "exp_avg", "exp_avg_sq", id="adam-exp_avg-is-exp_avg_sq"),
    pytest.param("adam_step", "exp_avg_sq", "grad", id="adam-exp_avg_sq-is-grad"),
])
def test_optimizer_step_overlapping_arrays_are_an_error(op, out, alias):
    fn, args = _call(op)
    args[out] = args[alias]
    snap = _snapshot(args)
    with pytest.raises(ValueError, match=r"is written in place and must not share memory with"):
        fn(**args)
    _assert_unchanged(args, snap)


# ---------------------------------------------------------------------------------------------
# NaN and Inf propagate as NumPy propagates them


@pytest.mark.parametrize("activation", ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_of_nan_is_nan(activation, dtype):
    x = np.array([[np.nan, -1.5, 0.5], [2.0, np.nan, -0.25]], dtype)
    y = F.activation_forward(x, activation)
    assert np.isnan(y[0, 0]) and np.isnan(y[1, 1])
    expected = reference.activation_forward(x.astype(np.float64), activation)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)  # NaN where NumPy has NaN, the rest as usual


def test_matmul_nan_in_a_gives_nan_in_that_row_only():
    r = _rng()
    a, b = _randn(r, 4, 3), _randn(r, 3, 5)
    a[2, 1] = np.nan
    c = F.matmul(a, b)
    assert np.isnan(c[2]).all()
    rows = [0, 1, 3]
    assert np.isfinite(c[rows]).all()
    np.testing.assert_allclose(c[rows], a[rows] @ b, rtol=1e-5, atol=1e-6)


def test_matmul_nan_times_zero_is_nan():
    a = np.array([[np.nan, 1.0]], np.float32)
    b = np.zeros((2, 2), np.float32)
    assert np.isnan(F.matmul(a, b)).all()


def test_linear_forward_nan_in_x_gives_nan_in_that_row_only():
    r = _rng()
    x, w, b = _randn(r, 4, 3), _randn(r, 5, 3), _randn(r, 5)
    x[1, 0] = np.nan
    y, z = F.linear_forward(x, w, b, "relu")
    assert np.isnan(y[1]).all() and np.isnan(z[1]).all()
    assert np.isfinite(y[[0, 2, 3]]).all()


@pytest.mark.parametrize("fn", [F.softmax_forward, F.log_softmax_forward], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("col", [0, 1, 2])
def test_softmax_nan_row_is_nan_and_other_rows_stay_finite(fn, col):
    x = np.array([[0.5, 1.0, -2.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    x[0, col] = np.nan
    y = fn(x)
    assert np.isnan(y[0]).all()
    assert np.isfinite(y[1:]).all()
    ref = reference.softmax_forward if fn is F.softmax_forward else reference.log_softmax_forward
    np.testing.assert_allclose(y[1:], ref(x[1:].astype(np.float64)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("value", [np.inf, np.nan], ids=["inf", "nan"])
def test_cross_entropy_with_non_finite_logits_gives_non_finite_loss_without_crashing(value):
    logits = np.array([[0.0, 1.0, 2.0], [0.5, 0.5, 0.5]], np.float32)
    logits[0, 0] = value
    loss, grad = F.cross_entropy_loss(logits, np.array([1, 2]))
    assert not math.isfinite(loss)
    assert grad.shape == (2, 3)
    assert np.isfinite(grad[1]).all()


def test_cross_entropy_with_a_masked_minus_inf_class_stays_finite():
    # -inf masks a class: softmax gives it probability 0, and without smoothing the loss stays finite.
    logits = np.array([[-np.inf, 0.0], [0.5, 0.5]], np.float32)
    loss, grad = F.cross_entropy_loss(logits, np.array([1, 0]))
    assert loss == pytest.approx(math.log(2) / 2, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.0, 0.0], [-0.25, 0.25]], atol=1e-7)
    loss, _ = F.cross_entropy_loss(logits, np.array([1, 0]), label_smoothing=0.1)
    assert loss == math.inf  # smoothing puts mass on the masked class


def test_mse_with_nan_gives_nan_loss():
    pred = np.array([[1.0, np.nan]], np.float32)
    loss, grad = F.mse_loss(pred, np.zeros((1, 2), np.float32))
    assert math.isnan(loss)
    assert np.isnan(grad[0, 1]) and grad[0, 0] == 1.0


# ---------------------------------------------------------------------------------------------
# nn.Parameter: .data and .grad are never converted


_PARAM_BAD_VALUES = {
    "float64": (lambda: np.zeros((2, 3), np.float64), TypeError, r"must have dtype float32, got float64"),
    "int32": (lambda: np.zeros((2, 3), np.int32), TypeError, r"must have dtype float32, got int32"),
    "list": (lambda: [[0.0] * 3] * 2, TypeError, r"must be a numpy\.ndarray, got list"),
    "wrong_shape": (lambda: np.zeros((3, 2), np.float32), ValueError, r"must have shape \(2, 3\), got \(3, 2\)"),
    "flat": (lambda: np.zeros(6, np.float32), ValueError, r"must have shape \(2, 3\), got \(6,\)"),
    "strided": (lambda: np.zeros((2, 6), np.float32)[:, ::2], ValueError,
                r"must be a C-contiguous, aligned, writeable array, got a strided or transposed view"),
    "transposed": (lambda: np.zeros((3, 2), np.float32).T, ValueError,
                   r"must be a C-contiguous, aligned, writeable array, got a strided or transposed view"),
    "unaligned": (lambda: _unaligned(np.zeros((2, 3), np.float32)), ValueError,
                  r"must be a C-contiguous, aligned, writeable array, got an unaligned buffer"),
    "read_only": (lambda: np.zeros((2, 3), np.float32), ValueError,
                  r"must be a C-contiguous, aligned, writeable array, got a read-only array"),
}


@pytest.mark.parametrize("attr", ["data", "grad"])
@pytest.mark.parametrize("case", list(_PARAM_BAD_VALUES))
def test_parameter_assignment_rejects_bad_array(attr, case):
    make, exc, message = _PARAM_BAD_VALUES[case]
    p = nn.Parameter(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
    p.grad[...] = 7
    old = getattr(p, attr)
    before = old.copy()
    value = make()
    if case == "read_only":
        value.flags.writeable = False
    with pytest.raises(exc, match=rf"^w\.{attr} {message}"):
        setattr(p, attr, value)
    assert getattr(p, attr) is old
    np.testing.assert_array_equal(old, before)


# ---------------------------------------------------------------------------------------------
# nn modules


@pytest.mark.parametrize("x, exc, message", [
    pytest.param(np.zeros((4, 5), np.float32), ValueError,
                 r"^x must have 3 features in its last dimension, got shape \(4, 5\)",
                 id="wrong-features"),
    pytest.param(np.zeros(3, np.float32), ValueError, r"^x must be 2-D, got shape \(3,\)", id="1d"),
    pytest.param(np.zeros((2, 4, 3), np.float32), ValueError, r"^x must be 2-D, got shape \(2, 4, 3\)", id="3d"),
    pytest.param(np.zeros((4, 3), object), TypeError, r"^x must hold real numbers, got dtype object", id="object"),
    pytest.param(np.full((4, 3), "1"), TypeError, r"^x must hold real numbers, got dtype <U1", id="str"),
    pytest.param(np.zeros((4, 3), np.complex64), TypeError, r"^x must hold real numbers, got dtype complex64",
                 id="complex"),
])
@pytest.mark.parametrize("fused", [False, True], ids=["Linear", "Sequential"])
def test_linear_forward_rejects_bad_input(x, exc, message, fused):
    fuseprop.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU()) if fused else nn.Linear(3, 2)
    snap = _params_snapshot(model)
    with pytest.raises(exc, match=message):
        model(x)
    _assert_params_unchanged(model, snap)


_CONVERTIBLE = {
    "strided": lambda x: _strided(x),
    "transposed": lambda x: _transposed(x),
    "negative_stride": lambda x: _negative_stride(x),
    "float64": lambda x: x.astype(np.float64),
    "float16": lambda x: x.astype(np.float16),
    "int64": lambda x: x.astype(np.int64),
    "bool": lambda x: x > 0,
    "list": lambda x: x.tolist(),
    "read_only": lambda x: x.copy(),
}


@pytest.mark.parametrize("form", list(_CONVERTIBLE))
@pytest.mark.parametrize("fused", [False, True], ids=["Linear", "Sequential"])
def test_model_input_is_converted_explicitly_and_left_untouched(form, fused):
    # Values that survive every conversion exactly, so the results must be bitwise equal.
    x32 = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 4
    if form in ("int64", "bool"):
        x32 = np.round(x32)
    if form == "bool":
        x32 = (x32 > 0).astype(np.float32)
    x = _CONVERTIBLE[form](x32)
    if form == "read_only":
        x.flags.writeable = False
    before = np.array(x, copy=True)

    def run(inp):
        fuseprop.manual_seed(0)
        model = _mlp() if fused else nn.Linear(3, 2)
        out = model(inp)
        model.backward(np.ones_like(out))
        return out, [p.grad.copy() for p in model.parameters()]

    out, grads = run(x)
    expected_out, expected_grads = run(x32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected_out)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(np.asarray(x), before)


@pytest.mark.parametrize("module", [
    pytest.param(lambda: nn.Linear(3, 2), id="Linear"),
    pytest.param(lambda: nn.Sequential(nn.Linear(3, 2), nn.ReLU()), id="Sequential"),
    pytest.param(lambda: nn.Tanh(), id="Tanh"),
    pytest.param(lambda: nn.Softmax(), id="Softmax"),
])
def test_unaligned_model_input_is_converted(module):
    x32 = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 4
    x = _unaligned(x32)
    fuseprop.manual_seed(0)
    out = module()(x)
    fuseprop.manual_seed(0)
    np.testing.assert_array_equal(out, module()(x32))
    np.testing.assert_array_equal(x, x32)


@pytest.mark.parametrize("module", [
    pytest.param(lambda: nn.Linear(3, 2), id="Linear"),
    pytest.param(lambda: nn.ReLU(), id="ReLU"),
    pytest.param(lambda: nn.GELU(), id="GELU"),
    pytest.param(lambda: nn.Softmax(), id="Softmax"),
    pytest.param(lambda: nn.LogSoftmax(), id="LogSoftmax"),
    pytest.param(lambda: _mlp(), id="Sequential"),
])
def test_backward_before_forward_is_an_error(module):
    m = module()
    with pytest.raises(RuntimeError, match=r"backward called before forward"):
        m.backward(np.ones((4, 2), np.float32))


@pytest.mark.parametrize("module, grad_shape, message", [
    pytest.param(lambda: nn.Linear(3, 2), (4, 3), r"^grad_out must have 2 features", id="Linear-features"),
    pytest.param(lambda: nn.Linear(3, 2), (5, 2), r"^grad_out must have shape \(4, 2\), got \(5, 2\)",
                 id="Linear-batch"),
    pytest.param(lambda: nn.Linear(3, 2), (8,), r"^grad_out must be 2-D", id="Linear-1d"),
    pytest.param(lambda: nn.ReLU(), (4, 2), r"^grad_out must have shape \(4, 3\), got \(4, 2\)", id="ReLU"),
    pytest.param(lambda: nn.Softmax(), (3, 4), r"^grad_out must have shape \(4, 3\), got \(3, 4\)", id="Softmax"),
    pytest.param(lambda: nn.Sequential(nn.Linear(3, 2), nn.Tanh()), (4, 5),
                 r"^grad_out must have shape \(4, 2\), got \(4, 5\)", id="Sequential-fused"),
])
def test_backward_with_wrong_grad_shape_is_an_error_and_grads_unchanged(module, grad_shape, message):
    fuseprop.manual_seed(0)
    m = module()
    m(_randn(_rng(), 4, 3))
    grads = [p.grad.copy() for p in m.parameters()]
    with pytest.raises(ValueError, match=message):
        m.backward(np.ones(grad_shape, np.float32))
    for p, g in zip(m.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)


@pytest.mark.parametrize("in_features, out_features, name", [
    pytest.param(0, 3, "in_features", id="zero"),
    pytest.param(-2, 3, "in_features", id="negative"),
    pytest.param(2.5, 3, "in_features", id="float"),
    pytest.param(True, 3, "in_features", id="bool"),
    pytest.param("3", 3, "in_features", id="str"),
    pytest.param(3, 0, "out_features", id="out-zero"),
    pytest.param(3, 2.0, "out_features", id="out-float"),
])
def test_linear_rejects_bad_sizes(in_features, out_features, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer, got"):
        nn.Linear(in_features, out_features)


def test_linear_rejects_unknown_init():
    with pytest.raises(ValueError, match=r"^init must be one of .*got 'glorot'"):
        nn.Linear(3, 2, init="glorot")


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.complex64])
def test_linear_rejects_non_float_parameter_dtype(dtype):
    with pytest.raises(TypeError, match=r"^dtype must be float32 or float64, got"):
        nn.Linear(3, 2, dtype=dtype)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match=r"^approximate must be 'none' or 'tanh', got 'x'"):
        nn.GELU(approximate="x")


def test_leaky_relu_rejects_non_finite_slope():
    with pytest.raises(ValueError, match=r"^negative_slope must be finite, got nan"):
        nn.LeakyReLU(math.nan)


def test_softmax_rejects_other_dims():
    with pytest.raises(ValueError, match=r"dim must be -1 or 1, got 0"):
        nn.Softmax(dim=0)


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match=r"^Sequential takes Modules, got str at position 1"):
        nn.Sequential(nn.Linear(3, 2), "relu")


# ---------------------------------------------------------------------------------------------
# Module.load_state_dict: all checked before anything is written


def _shifted_state(model):
    """A valid state dict whose every value differs from the model's current one."""
    return {k: v + 1 for k, v in model.state_dict().items()}


@pytest.mark.parametrize("key", ["0.weight", "2.bias"], ids=["first-key", "last-key"])
def test_load_state_dict_wrong_shape_changes_no_parameter(key):
    model = _mlp()
    snap = _params_snapshot(model)
    state = _shifted_state(model)
    state[key] = np.zeros(state[key].shape + (1,), np.float32)
    with pytest.raises(ValueError, match=rf"^state_dict\['{re.escape(key)}'\] has shape .*the parameter has"):
        model.load_state_dict(state)
    _assert_params_unchanged(model, snap)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64, object])
def test_load_state_dict_non_float_values_change_no_parameter(dtype):
    model = _mlp()
    snap = _params_snapshot(model)
    state = _shifted_state(model)
    state["2.bias"] = state["2.bias"].astype(dtype)
    with pytest.raises(TypeError, match=r"^state_dict\['2\.bias'\] must hold floats, got dtype"):
        model.load_state_dict(state)
    _assert_params_unchanged(model, snap)


def test_load_state_dict_missing_key_is_a_key_error():
    model = _mlp()
    snap = _params_snapshot(model)
    state = _shifted_state(model)
    del state["2.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['2\.bias'\], unexpected keys \[\]"):
        model.load_state_dict(state)
    _assert_params_unchanged(model, snap)


def test_load_state_dict_unexpected_key_is_a_key_error():
    model = _mlp()
    snap = _params_snapshot(model)
    state = _shifted_state(model)
    state["3.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(KeyError, match=r"missing keys \[\], unexpected keys \['3\.weight'\]"):
        model.load_state_dict(state)
    _assert_params_unchanged(model, snap)


def test_load_state_dict_writes_into_the_existing_arrays():
    # In place: the optimizer's references to p.data stay valid after a load.
    model = _mlp()
    arrays = [p.data for p in model.parameters()]
    state = {k: v.astype(np.float64) for k, v in _shifted_state(model).items()}
    model.load_state_dict(state)
    for p, a, (k, v) in zip(model.parameters(), arrays, state.items()):
        assert p.data is a and p.data.dtype == np.float32
        np.testing.assert_array_equal(p.data, v.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# losses


_LOSSES = {
    "CrossEntropyLoss": (losses.CrossEntropyLoss, "logits", np.array([0, 2, 1, 2])),
    "MSELoss": (losses.MSELoss, "pred", np.zeros((4, 3), np.float32)),
    "BCEWithLogitsLoss": (losses.BCEWithLogitsLoss, "logits", np.full((4, 3), 0.5, np.float32)),
}


def _loss_layout_cases():
    forms = {"strided": _strided, "transposed": _transposed, "negative_stride": _negative_stride,
             "unaligned": _unaligned}
    for loss_name, (_, _, target) in _LOSSES.items():
        for arg in ("pred", "target") if target.ndim == 2 else ("pred",):  # class labels: see the functional tests
            for form, transform in forms.items():
                yield pytest.param(loss_name, arg, transform, id=f"{loss_name}-{arg}-{form}")


@pytest.mark.parametrize("loss_name, arg, form", list(_loss_layout_cases()))
def test_loss_input_layout_is_converted_and_left_untouched(loss_name, arg, form):
    cls, _, target = _LOSSES[loss_name]
    pred = _LOGITS.copy()
    args = {"pred": pred, "target": target}
    args[arg] = form(args[arg])
    before = np.array(args[arg], copy=True)
    loss_fn = cls()
    loss = loss_fn(args["pred"], args["target"])
    expected_fn = cls()
    assert loss == expected_fn(pred, target)
    np.testing.assert_array_equal(loss_fn.backward(), expected_fn.backward())
    np.testing.assert_array_equal(args[arg], before)


@pytest.mark.parametrize("loss_name", list(_LOSSES))
@pytest.mark.parametrize("pred, got", [
    pytest.param(np.zeros((4, 3), np.int64), "int64", id="int64"),
    pytest.param(np.zeros((4, 3), np.float16), "float16", id="float16"),
    pytest.param([[0.0] * 3] * 4, "list", id="list"),
])
def test_loss_pred_must_be_a_float_array(loss_name, pred, got):
    cls, name, target = _LOSSES[loss_name]
    with pytest.raises(TypeError, match=rf"^{name} must be a float32 or float64 numpy\.ndarray, got {got}"):
        cls()(pred, target)


@pytest.mark.parametrize("target", [np.array([0.0, 2.0, 1.0, 2.0]), np.array([0, 2, 1, 2], np.float32)],
                         ids=["float64", "float32"])
def test_cross_entropy_loss_float_target_is_an_error(target):
    with pytest.raises(TypeError, match=r"^labels must be integer class indices, got dtype float"):
        losses.CrossEntropyLoss()(_LOGITS, target)


@pytest.mark.parametrize("target", [
    pytest.param(np.array([0, 3, 1, 2]), id="equal_to_C"),
    pytest.param(np.array([0, -1, 1, 2]), id="negative"),
    pytest.param(np.array([0, 1, 2]), id="too_short"),
    pytest.param(np.array([[0], [1], [2], [2]]), id="column"),
])
def test_cross_entropy_loss_bad_target_is_a_value_error(target):
    with pytest.raises(ValueError, match=r"^(labels|target) must "):
        losses.CrossEntropyLoss()(_LOGITS, target)


@pytest.mark.parametrize("target", [
    pytest.param(np.array([0, 3, 1, 2]), id="out_of_range"),
    pytest.param(np.array([0, 1, 2]), id="wrong_shape"),
])
def test_cross_entropy_loss_bad_labels_message_names_labels(target):
    # CrossEntropyLoss()(logits, labels): every message says "labels", as the argument is called
    with pytest.raises(ValueError, match=r"^labels must "):
        losses.CrossEntropyLoss()(_LOGITS, target)


@pytest.mark.parametrize("loss_name", ["MSELoss", "BCEWithLogitsLoss"])
def test_elementwise_loss_target_of_wrong_shape_is_an_error(loss_name):
    cls, name, _ = _LOSSES[loss_name]
    with pytest.raises(ValueError, match=r"^target must have"):
        cls()(_LOGITS, np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("loss_name", list(_LOSSES))
def test_loss_backward_before_call_is_an_error(loss_name):
    cls, _, _ = _LOSSES[loss_name]
    with pytest.raises(RuntimeError, match=rf"^{loss_name}\.backward called before the loss was computed"):
        cls().backward()


@pytest.mark.parametrize("loss_name", list(_LOSSES))
def test_loss_backward_after_a_failed_call_gives_no_stale_gradient(loss_name):
    cls, _, target = _LOSSES[loss_name]
    loss_fn = cls()
    loss_fn(_LOGITS, target)
    with pytest.raises(TypeError):
        loss_fn(_LOGITS.astype(np.int64), target)
    with pytest.raises(RuntimeError, match=r"backward called before the loss was computed"):
        loss_fn.backward()


@pytest.mark.parametrize("loss_name", list(_LOSSES))
def test_loss_rejects_unknown_reduction(loss_name):
    cls, _, _ = _LOSSES[loss_name]
    with pytest.raises(ValueError, match=r"^reduction must be 'mean' or 'sum', got 'none'"):
        cls(reduction="none")


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.01, math.nan])
def test_cross_entropy_loss_rejects_label_smoothing_outside_0_1(label_smoothing):
    with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 1\], got"):
        losses.CrossEntropyLoss(label_smoothing=label_smoothing)


def test_loss_empty_batch_with_mean_is_an_error():
    with pytest.raises(ValueError, match=r"empty batch has no mean loss"):
        losses.CrossEntropyLoss()(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))


# ---------------------------------------------------------------------------------------------
# optimizers


def test_optimizer_rejects_empty_params():
    with pytest.raises(ValueError, match=r"^optimizer got an empty parameter list"):
        optim.SGD([], lr=0.1)


@pytest.mark.parametrize("params", [
    pytest.param(lambda m: [np.zeros(3, np.float32)], id="ndarray"),
    pytest.param(lambda m: [m.weight, m.bias.data], id="mixed"),
    pytest.param(lambda m: [{"params": [m.weight, 3.0]}], id="group-with-float"),
])
def test_optimizer_rejects_non_parameters(params):
    fuseprop.manual_seed(0)
    with pytest.raises(TypeError, match=r"^optimizer params must be fuseprop\.nn\.Parameter objects, got"):
        optim.SGD(params(nn.Linear(3, 2)), lr=0.1)


@pytest.mark.parametrize("params", [
    pytest.param(lambda m: [m.weight, m.weight], id="same-list"),
    pytest.param(lambda m: [{"params": [m.weight]}, {"params": [m.bias, m.weight]}], id="two-groups"),
])
def test_optimizer_rejects_duplicate_parameters(params):
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=r"^some parameters appear more than once"):
        optim.SGD(params(nn.Linear(3, 2)), lr=0.1)


_BAD_HYPERS = [
    ("SGD", dict(lr=-0.1), "learning rate"),
    ("SGD", dict(lr=math.nan), "learning rate"),
    ("SGD", dict(lr=math.inf), "learning rate"),
    ("SGD", dict(lr=True), "learning rate"),
    ("SGD", dict(lr="0.1"), "learning rate"),
    ("SGD", dict(lr=0.1, momentum=-0.9), "momentum value"),
    ("SGD", dict(lr=0.1, momentum=math.nan), "momentum value"),
    ("SGD", dict(lr=0.1, momentum=True), "momentum value"),
    ("SGD", dict(lr=0.1, dampening=-1.0), "dampening value"),
    ("SGD", dict(lr=0.1, weight_decay=-1e-4), "weight_decay value"),
    ("SGD", dict(lr=0.1, weight_decay=math.nan), "weight_decay value"),
    ("Adam", dict(lr=-1e-3), "learning rate"),
    ("Adam", dict(lr=math.nan), "learning rate"),
    ("Adam", dict(betas=(1.0, 0.999)), "beta parameter at index 0"),
    ("Adam", dict(betas=(0.9, 1.0)), "beta parameter at index 1"),
    ("Adam", dict(betas=(-0.1, 0.999)), "beta parameter at index 0"),
    ("Adam", dict(betas=(0.9, math.nan)), "beta parameter at index 1"),
    ("Adam", dict(betas=(True, 0.999)), "beta parameter at index 0"),
    ("Adam", dict(betas=(0.9, 0.99, 0.9)), "betas"),
    ("Adam", dict(eps=-1e-8), "epsilon value"),
    ("Adam", dict(eps=math.nan), "epsilon value"),
    ("Adam", dict(weight_decay=-0.1), "weight_decay value"),
    ("AdamW", dict(weight_decay=math.inf), "weight_decay value"),
    ("AdamW", dict(betas=(0.9, 1.5)), "beta parameter at index 1"),
]


@pytest.mark.parametrize("cls, kwargs, name", [
    pytest.param(cls, kw, name, id=f"{cls}-" + "-".join(f"{k}={v!r}" for k, v in kw.items()))
    for cls, kw, name in _BAD_HYPERS])
def test_optimizer_rejects_invalid_hyper_parameters(cls, kwargs, name):
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=rf"^Invalid {re.escape(name)}"):
        getattr(optim, cls)(nn.Linear(3, 2).parameters(), **kwargs)


def test_sgd_nesterov_without_momentum_is_an_error():
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=r"^Nesterov momentum requires a momentum and zero dampening"):
        optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, nesterov=True)


def test_sgd_nesterov_with_dampening_is_an_error():
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=r"^Nesterov momentum requires a momentum and zero dampening"):
        optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)


def test_param_group_with_unknown_key_is_an_error():
    fuseprop.manual_seed(0)
    m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"^unknown hyper-parameters in param group: \['lrr'\]"):
        optim.SGD([{"params": [m.weight], "lrr": 0.1}], lr=0.1)


def _model_and_optimizer(cls="SGD", **kwargs):
    model = _mlp()
    params = list(model.parameters())
    opt = getattr(optim, cls)([{"params": params[:2]}, {"params": params[2:]}], **kwargs)
    r = _rng(1)
    for p in params:
        p.grad[...] = _randn(r, *p.shape)
    return model, opt


@pytest.mark.parametrize("cls, key, value", [
    pytest.param("SGD", "lr", -1.0, id="SGD-lr"),
    pytest.param("SGD", "momentum", math.nan, id="SGD-momentum"),
    pytest.param("Adam", "lr", -1.0, id="Adam-lr"),
    pytest.param("Adam", "betas", (1.0, 0.999), id="Adam-betas"),
])
@pytest.mark.parametrize("group", [0, 1])
def test_step_after_editing_a_group_to_an_invalid_value_changes_no_parameter(cls, key, value, group):
    model, opt = _model_and_optimizer(cls, lr=0.1)
    opt.step()  # state exists, so "unchanged" covers it too
    snap = _params_snapshot(model)
    state = {p: {k: np.copy(v) for k, v in s.items()} for p, s in opt.state.items()}
    opt.param_groups[group][key] = value
    with pytest.raises(ValueError, match=r"^Invalid "):
        opt.step()
    _assert_params_unchanged(model, snap)
    for p, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[p][k])


@pytest.mark.parametrize("cls, key", [("SGD", "momentum_buffer"), ("Adam", "exp_avg"), ("Adam", "exp_avg_sq")])
@pytest.mark.parametrize("bad", ["wrong_shape", "int_dtype"])
def test_optimizer_load_state_dict_bad_state_entry_changes_nothing(cls, key, bad):
    kwargs = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1)
    model, opt = _model_and_optimizer(cls, **kwargs)
    opt.step()
    state = opt.state_dict()
    for s in state["state"].values():
        s[key] = s[key] + 1
    for g in state["param_groups"]:
        g["lr"] = 0.5
    last = max(state["state"])
    value = state["state"][last][key]
    state["state"][last][key] = value.reshape(-1)[:-1] if bad == "wrong_shape" else value.astype(np.int64)
    before = opt.state_dict()
    buffers = {p: dict(s) for p, s in opt.state.items()}
    with pytest.raises(ValueError, match=rf"^state '{key}' of parameter {last} must be a float array of shape"):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert [g["lr"] for g in after["param_groups"]] == [g["lr"] for g in before["param_groups"]]
    for i, s in before["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(after["state"][i][k], v)
    for p, s in opt.state.items():  # the very same arrays, not copies
        for k, v in s.items():
            assert v is buffers[p][k]


def test_optimizer_load_state_dict_invalid_group_value_changes_nothing():
    model, opt = _model_and_optimizer("SGD", lr=0.1, momentum=0.9)
    opt.step()
    state = opt.state_dict()
    for s in state["state"].values():
        s["momentum_buffer"] = s["momentum_buffer"] + 1
    state["param_groups"][1]["lr"] = -0.5
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"^Invalid learning rate"):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, s in before["state"].items():
        np.testing.assert_array_equal(after["state"][i]["momentum_buffer"], s["momentum_buffer"])


@pytest.mark.parametrize("step", [-1, None])
def test_adam_load_state_dict_invalid_step_changes_nothing(step):
    # Either load_state_dict refuses the state, or the next step() refuses as a whole: never half an update.
    model, opt = _model_and_optimizer("Adam", lr=0.1)
    opt.step()
    state = opt.state_dict()
    state["state"][len(model.parameters()) - 1]["step"] = step
    snap = _params_snapshot(model)
    try:
        opt.load_state_dict(state)
    except ValueError:
        pass
    else:
        with pytest.raises((ValueError, TypeError)):
            opt.step()
    _assert_params_unchanged(model, snap)


# ---------------------------------------------------------------------------------------------
# Sequential.train_step: a failed step leaves the weights (and the optimizer state) as they were


def _trained_one_step(lr=0.1, loss_fn=None):
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    r = _rng(2)
    x, labels = _randn(r, 5, 3), np.array([0, 1, 1, 0, 1])
    model.train_step(x, labels, loss_fn or losses.CrossEntropyLoss(), opt)
    return model, opt, x, labels


def _optimizer_state(opt):
    return {id(p): {k: np.copy(v) for k, v in s.items()} for p, s in opt.state.items()}


def _assert_step_refused(model, opt, call, exc, message):
    snap = _params_snapshot(model)
    state = _optimizer_state(opt)
    with pytest.raises(exc, match=message):
        call()
    _assert_params_unchanged(model, snap)
    for p, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[id(p)][k])


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_train_step_non_finite_x_raises_and_keeps_weights(value):
    model, opt, x, labels = _trained_one_step()
    x = x.copy()
    x[2, 1] = value
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         FloatingPointError, r"^the loss is (nan|inf); the weights were not updated")


def test_train_step_nan_target_raises_and_keeps_weights():
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    r = _rng(2)
    x, target = _randn(r, 5, 3), _randn(r, 5, 2)
    model.train_step(x, target, losses.MSELoss(), opt)
    target[0, 0] = np.nan
    _assert_step_refused(model, opt, lambda: model.train_step(x, target, losses.MSELoss(), opt),
                         FloatingPointError, r"^the loss is nan")


@pytest.mark.parametrize("labels", [np.array([0, 1, 2, 0, 1]), np.array([0, -1, 1, 0, 1])],
                         ids=["equal_to_C", "negative"])
def test_train_step_labels_out_of_range_raise_and_keep_weights(labels):
    model, opt, x, _ = _trained_one_step()
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         ValueError, r"^(labels|target) must be in \[0, 2\)")


def test_train_step_empty_batch_raises_and_keeps_weights():
    model, opt, _, _ = _trained_one_step()
    x = np.zeros((0, 3), np.float32)
    labels = np.zeros(0, np.int64)
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         ValueError, r"^train_step needs a non-empty batch, got x of shape \(0, 3\)")


def test_train_step_wrong_feature_count_raises_and_keeps_weights():
    model, opt, _, labels = _trained_one_step()
    x = np.zeros((5, 4), np.float32)
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         ValueError, r"^x must have 3 features")


def test_train_step_huge_lr_overflow_on_a_later_step_raises_and_keeps_weights_finite():
    # lr = 1e10: the first steps return, then the loss overflows; that step must change nothing.
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=1e10)
    r = _rng(0)
    x, target = _randn(r, 5, 3), _randn(r, 5, 2)
    loss_fn = losses.MSELoss()
    losses_seen = []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(10):
            snap = _params_snapshot(model)
            try:
                losses_seen.append(model.train_step(x, target, loss_fn, opt))
            except FloatingPointError as e:
                assert re.match(r"^the (loss is (inf|nan)|gradient of \S+ is not finite); the weights were not updated",
                                str(e))
                _assert_params_unchanged(model, snap)
                break
        else:
            pytest.fail(f"no FloatingPointError after 10 steps at lr=1e10; losses {losses_seen}")
    assert len(losses_seen) >= 1 and all(math.isfinite(v) for v in losses_seen)
    assert all(np.isfinite(p.data).all() for p in model.parameters())


@pytest.mark.parametrize("lr, x_scale, seed", [(1e38, 50.0, 2), (1e20, 1.0, 0)],
                         ids=["lr=1e38-first-step", "lr=1e20-second-step"])
def test_train_step_reports_an_overflowing_update(lr, x_scale, seed):
    # The loss and gradients are finite, but lr * grad overflows float32. The update is written in
    # place (undoing it would need a copy of every weight per step), so train_step cannot leave the
    # weights as they were; it must stop at once and say so rather than return normally.
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=lr)
    r = _rng(seed)
    x, labels = x_scale * _randn(r, 5, 3), np.array([0, 1, 1, 0, 1])
    loss_fn = losses.CrossEntropyLoss()
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(5):
            try:
                loss = model.train_step(x, labels, loss_fn, opt)
            except FloatingPointError as e:
                assert re.match(r"^(the optimizer update made \S+ non-finite .*the weights were overwritten"
                                r"|the (loss is (inf|nan)|gradient of \S+ is not finite); the weights were not updated)",
                                str(e)), str(e)
                break
            assert math.isfinite(loss)
            bad = [p.name for p in model.parameters() if not np.isfinite(p.data).all()]
            assert not bad, f"step {step} returned loss {loss} but left non-finite values in {bad}"
        else:
            pytest.fail("no FloatingPointError in 5 steps")