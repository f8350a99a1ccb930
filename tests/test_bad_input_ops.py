"""Bad input to fuseprop.functional gets a clear error and changes nothing; NaN and Inf propagate.

Wrong type, dtype, layout, shape or ndim, labels out of range, empty batches, unknown modes, invalid
hyper-parameters and arrays written in place that cannot be: each raises TypeError / ValueError whose
message names the argument, and every array that could have been written is compared with a copy taken
before the call. fuseprop.functional is strict (float32/float64, one dtype per call, C-contiguous,
aligned; in-place outputs writeable and not overlapping the inputs). Non-finite values where they do not
matter propagate as NumPy propagates them.
"""
import math

import numpy as np
import pytest

from fuseprop import functional as F
from fuseprop import reference

from helpers import array_snapshot, assert_arrays_unchanged, bad_form_cases, check_bad_form, randn


# ---------------------------------------------------------------------------------------------
# functional: every float array argument of every op, in every wrong form
#
# Each op is listed with good float32 arguments (arrays first, in the order the op checks them;
# the first array defines the call's dtype). Each test replaces ONE array by a bad version.

_OPS = {
    "matmul": (F.matmul, lambda r: dict(a=randn(r, 4, 3), b=randn(r, 3, 2), c=randn(r, 4, 2), beta=1.0)),
    "activation_forward": (F.activation_forward, lambda r: dict(x=randn(r, 4, 3), activation="relu")),
    "activation_backward": (F.activation_backward,
                            lambda r: dict(grad_y=randn(r, 4, 3), x=randn(r, 4, 3), y=randn(r, 4, 3),
                                           activation="tanh")),
    "softmax_forward": (F.softmax_forward, lambda r: dict(x=randn(r, 4, 3))),
    "softmax_backward": (F.softmax_backward, lambda r: dict(grad_y=randn(r, 4, 3), y=randn(r, 4, 3))),
    "log_softmax_forward": (F.log_softmax_forward, lambda r: dict(x=randn(r, 4, 3))),
    "log_softmax_backward": (F.log_softmax_backward, lambda r: dict(grad_y=randn(r, 4, 3), y=randn(r, 4, 3))),
    "linear_forward": (F.linear_forward,
                       lambda r: dict(x=randn(r, 4, 3), weight=randn(r, 2, 3), bias=randn(r, 2))),
    "linear_backward": (F.linear_backward,
                        lambda r: dict(grad_y=randn(r, 4, 2), x=randn(r, 4, 3), weight=randn(r, 2, 3),
                                       z=randn(r, 4, 2), y=randn(r, 4, 2), grad_weight=randn(r, 2, 3),
                                       grad_bias=randn(r, 2), activation="relu")),
    "cross_entropy_loss": (F.cross_entropy_loss, lambda r: dict(logits=randn(r, 4, 3), labels=np.array([0, 2, 1, 2]))),
    "mse_loss": (F.mse_loss_with_grad, lambda r: dict(pred=randn(r, 4, 3), target=randn(r, 4, 3))),
    "bce_with_logits_loss": (F.bce_with_logits_loss,
                             lambda r: dict(logits=randn(r, 4, 3), target=r.uniform(size=(4, 3)).astype(np.float32))),
    "sgd_step": (F.sgd_step,
                 lambda r: dict(param=randn(r, 2, 3), grad=randn(r, 2, 3), momentum_buffer=randn(r, 2, 3),
                                lr=0.1, momentum=0.9, step=2)),
    "adam_step": (F.adam_step,
                  lambda r: dict(param=randn(r, 2, 3), grad=randn(r, 2, 3), exp_avg=randn(r, 2, 3),
                                 exp_avg_sq=np.abs(randn(r, 2, 3)), step=3)),
}


def _call(op, **override):
    fn, build = _OPS[op]
    args = build(np.random.default_rng(0))
    args.update(override)
    return fn, args


@pytest.mark.parametrize("op", list(_OPS))
def test_good_arguments_are_accepted(op):
    # The baseline every bad-form case starts from: each failure below is caused by the one bad argument.
    fn, args = _call(op)
    fn(**args)


@pytest.mark.parametrize("op, name, form", list(bad_form_cases(_OPS, _call)))
def test_functional_rejects_bad_array_and_writes_nothing(op, name, form):
    check_bad_form(_call, op, name, form)


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
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=message):
        fn(**args)
    assert_arrays_unchanged(args, snap)


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
    pytest.param(F.mse_loss_with_grad, (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)),
                 r"mse_loss: an empty batch has no mean loss \(pred has shape \(0, 3\)\)", id="mse"),
    pytest.param(F.bce_with_logits_loss, (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)),
                 r"bce_with_logits_loss: an empty batch has no mean loss \(logits has shape", id="bce"),
])
def test_mean_loss_of_an_empty_batch_is_an_error(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)


@pytest.mark.parametrize("fn, args", [
    pytest.param(F.cross_entropy_loss, (np.zeros((0, 3), np.float32), np.zeros(0, np.int64)), id="cross_entropy"),
    pytest.param(F.mse_loss_with_grad, (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)), id="mse"),
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
    pytest.param(F.mse_loss_with_grad, (_LOGITS, _LOGITS), id="mse"),
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
    r = np.random.default_rng(0)
    return randn(r, 4, 3), randn(r, 3, 4)


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
    a = randn(np.random.default_rng(0), 4, 4)
    before = a.copy()
    with pytest.raises(ValueError, match=r"^c is written in place and must not share memory with a"):
        F.matmul(a, before, c=a)
    np.testing.assert_array_equal(a, before)


def test_matmul_c_that_is_a_view_of_a_is_an_error():
    a = randn(np.random.default_rng(0), 4, 4)
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
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_weight is written in place, so it must be writeable"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


def test_linear_backward_read_only_grad_bias_leaves_grad_weight_unchanged():
    # grad_weight passes every check; grad_bias fails: nothing at all is written.
    fn, args = _call("linear_backward")
    args["grad_bias"].flags.writeable = False
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_bias is written in place, so it must be writeable"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


@pytest.mark.parametrize("other", ["x", "weight", "grad_y", "z"])
def test_linear_backward_grad_weight_sharing_an_input_is_an_error(other):
    # grad_weight (OUT, IN) = (2, 3): make the other argument a (2, 3)-shaped or larger buffer it aliases.
    r = np.random.default_rng(0)
    x, w = randn(r, 2, 3), randn(r, 2, 3)
    gy, z = randn(r, 2, 2), randn(r, 2, 2)
    args = dict(grad_y=gy, x=x, weight=w, z=z, y=z.copy(), activation="relu", grad_bias=None)
    if other in ("x", "weight"):
        args["grad_weight"] = args[other]
    else:
        big = np.zeros(6, np.float32)
        args[other] = big[:4].reshape(2, 2)
        args["grad_weight"] = big.reshape(2, 3)
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=rf"^grad_weight is written in place and must not share memory with {other}"):
        F.linear_backward(**args)
    assert_arrays_unchanged(args, snap)


def test_linear_backward_grad_bias_without_bias_is_an_error():
    fn, args = _call("linear_backward")
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_bias was given but has_bias is False"):
        fn(**args, has_bias=False)
    assert_arrays_unchanged(args, snap)


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
    snap = array_snapshot(args)
    with pytest.raises(TypeError, match=r"^exp_avg must have the same dtype as param \(float64\), got float32"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


def test_sgd_step_momentum_without_buffer_is_an_error():
    fn, args = _call("sgd_step", momentum_buffer=None)
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"^momentum_buffer is required when momentum != 0"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


@pytest.mark.parametrize("op", ["sgd_step", "adam_step"])
@pytest.mark.parametrize("step", [0, -1])
def test_optimizer_step_count_below_one_is_an_error(op, step):
    fn, args = _call(op, step=step)
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=rf"^step must be >= 1 \(it counts this update\), got {step}"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


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
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=message):
        fn(**args)
    assert_arrays_unchanged(args, snap)


@pytest.mark.parametrize("momentum, dampening", [(0.9, 0.1), (0.0, 0.0)], ids=["with-dampening", "without-momentum"])
def test_sgd_step_nesterov_needs_momentum_and_no_dampening(momentum, dampening):
    fn, args = _call("sgd_step", momentum=momentum, dampening=dampening, nesterov=True)
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"^nesterov momentum requires momentum > 0 and dampening == 0"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


@pytest.mark.parametrize("op, name", [("sgd_step", "param"), ("sgd_step", "momentum_buffer"), ("adam_step", "param"),
                                      ("adam_step", "exp_avg"), ("adam_step", "exp_avg_sq")])
def test_optimizer_step_read_only_state_is_an_error(op, name):
    fn, args = _call(op)
    args[name].flags.writeable = False
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=rf"^{name} is written in place, so it must be writeable"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


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
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"is written in place and must not share memory with"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


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
    r = np.random.default_rng(0)
    a, b = randn(r, 4, 3), randn(r, 3, 5)
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
    r = np.random.default_rng(0)
    x, w, b = randn(r, 4, 3), randn(r, 5, 3), randn(r, 5)
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
    loss, grad = F.mse_loss_with_grad(pred, np.zeros((1, 2), np.float32))
    assert math.isnan(loss)
    assert np.isnan(grad[0, 1]) and grad[0, 0] == 1.0
