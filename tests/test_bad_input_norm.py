"""Bad input to the normalisation ops of fuseprop.functional gets a clear error and changes nothing.

Each array argument in each wrong form, each wrong shape, each invalid scalar and each in-place array
that cannot be written: a TypeError / ValueError whose message names the argument, with every array the
call could have written (the running statistics, given gradients) compared with a copy taken before it.
NaN propagates as NumPy propagates it, confined to its channel (batch norm) or row (layer norm).
"""
import math

import numpy as np
import pytest

from fuseprop import functional as F

from helpers import assert_refused_writing_nothing, bad_form_cases, check_bad_form, randn

# Good float32 arguments of each op, arrays in the order the op checks them (the first sets the dtype).
_OPS = {
    "batch_norm_forward": (F.batch_norm_forward, lambda r: dict(
        x=randn(r, 4, 3, 5), weight=randn(r, 3), bias=randn(r, 3), running_mean=randn(r, 3),
        running_var=np.abs(randn(r, 3)) + 0.5, training=True)),
    "batch_norm_backward": (F.batch_norm_backward, lambda r: dict(
        grad_y=randn(r, 4, 3, 5), x=randn(r, 4, 3, 5), weight=randn(r, 3), save_mean=randn(r, 3),
        save_invstd=np.abs(randn(r, 3)) + 0.5, training=True, grad_weight=randn(r, 3), grad_bias=randn(r, 3))),
    # with the activation after it: y (the forward's output) and bias (the forward's) give its derivative
    "batch_norm_backward_relu": (F.batch_norm_backward, lambda r: dict(
        grad_y=randn(r, 4, 3, 5), x=randn(r, 4, 3, 5), weight=randn(r, 3), save_mean=randn(r, 3),
        save_invstd=np.abs(randn(r, 3)) + 0.5, training=True, grad_weight=randn(r, 3), grad_bias=randn(r, 3),
        y=np.abs(randn(r, 4, 3, 5)), bias=randn(r, 3), activation="relu")),
    "layer_norm_forward": (F.layer_norm_forward, lambda r: dict(
        x=randn(r, 4, 3, 5), normalized_shape=(3, 5), weight=randn(r, 3, 5), bias=randn(r, 3, 5))),
    "layer_norm_backward": (F.layer_norm_backward, lambda r: dict(
        grad_y=randn(r, 4, 3, 5), x=randn(r, 4, 3, 5), normalized_shape=(3, 5), weight=randn(r, 3, 5),
        mean=randn(r, 4), rstd=np.abs(randn(r, 4)) + 0.5, grad_weight=randn(r, 3, 5), grad_bias=randn(r, 3, 5))),
}


def _call(op, **override):
    fn, build = _OPS[op]
    args = build(np.random.default_rng(0))
    args.update(override)
    return fn, args


def _refused(op, exc, message, **override):
    """Calls op with override, expects exc matching message, and checks no array changed."""
    fn, args = _call(op, **override)
    assert_refused_writing_nothing(fn, args, exc, message)


@pytest.mark.parametrize("op", list(_OPS))
def test_good_arguments_are_accepted(op):
    fn, args = _call(op)
    fn(**args)


# ---------------------------------------------------------------------------------------------
# every float array argument in every wrong form

_FORMS = ("list", "int64", "float16", "big_endian_f4", "mixed_float64", "strided", "transposed", "negative_stride",
          "unaligned")


@pytest.mark.parametrize("op, name, form", list(bad_form_cases(_OPS, _call, _FORMS)))
def test_bad_array_is_refused_and_nothing_is_written(op, name, form):
    check_bad_form(_call, op, name, form)


# ---------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("op, name, shape, message", [
    pytest.param("batch_norm_forward", "x", (12,), r"^x must be at least 2-D \(N, C, \*spatial\), got a 1-D array "
                 r"of shape \(12,\)", id="batch_norm_forward-x-1d"),
    pytest.param("batch_norm_forward", "x", (), r"^x must be at least 2-D .*got a 0-D array", id="batch_norm_forward-x-0d"),
    pytest.param("batch_norm_forward", "weight", (4,), r"^weight must have shape \(3,\), got \(4,\)",
                 id="batch_norm_forward-weight"),
    pytest.param("batch_norm_forward", "bias", (3, 1), r"^bias must have shape \(3,\), got \(3, 1\)",
                 id="batch_norm_forward-bias"),
    pytest.param("batch_norm_forward", "running_mean", (2,), r"^running_mean must have shape \(3,\), got \(2,\)",
                 id="batch_norm_forward-running_mean"),
    pytest.param("batch_norm_forward", "running_var", (3, 3), r"^running_var must have shape \(3,\), got \(3, 3\)",
                 id="batch_norm_forward-running_var"),
    pytest.param("batch_norm_backward", "grad_y", (4, 3, 4),
                 r"^grad_y must have the same shape as x \(4, 3, 5\), got \(4, 3, 4\)", id="batch_norm_backward-grad_y"),
    pytest.param("batch_norm_backward", "x", (12,), r"^x must be at least 2-D", id="batch_norm_backward-x-1d"),
    pytest.param("batch_norm_backward", "weight", (5,), r"^weight must have shape \(3,\), got \(5,\)",
                 id="batch_norm_backward-weight"),
    pytest.param("batch_norm_backward", "save_mean", (4,), r"^save_mean must have shape \(3,\), got \(4,\)",
                 id="batch_norm_backward-save_mean"),
    pytest.param("batch_norm_backward", "save_invstd", (1, 3), r"^save_invstd must have shape \(3,\), got \(1, 3\)",
                 id="batch_norm_backward-save_invstd"),
    pytest.param("batch_norm_backward", "grad_weight", (2,), r"^grad_weight must have shape \(3,\), got \(2,\)",
                 id="batch_norm_backward-grad_weight"),
    pytest.param("batch_norm_backward", "grad_bias", (4,), r"^grad_bias must have shape \(3,\), got \(4,\)",
                 id="batch_norm_backward-grad_bias"),
    pytest.param("batch_norm_backward_relu", "y", (4, 3, 4), r"^y must have the same shape as x \(4, 3, 5\), got "
                 r"\(4, 3, 4\)", id="batch_norm_backward_relu-y"),
    pytest.param("batch_norm_backward_relu", "bias", (4,), r"^bias must have shape \(3,\), got \(4,\)",
                 id="batch_norm_backward_relu-bias"),
    pytest.param("layer_norm_forward", "x", (4, 5, 3), r"^x must have shape \(\*, 3, 5\) to be normalised over "
                 r"normalized_shape \(3, 5\), got \(4, 5, 3\)", id="layer_norm_forward-x-trailing"),
    pytest.param("layer_norm_forward", "x", (5,), r"^x must have shape \(\*, 3, 5\) .*got \(5,\)",
                 id="layer_norm_forward-x-too-few-dims"),
    pytest.param("layer_norm_forward", "weight", (15,), r"^weight must have shape \(3, 5\), got \(15,\)",
                 id="layer_norm_forward-weight"),
    pytest.param("layer_norm_forward", "bias", (5, 3), r"^bias must have shape \(3, 5\), got \(5, 3\)",
                 id="layer_norm_forward-bias"),
    pytest.param("layer_norm_backward", "grad_y", (4, 3, 4),
                 r"^grad_y must have the same shape as x \(4, 3, 5\), got \(4, 3, 4\)", id="layer_norm_backward-grad_y"),
    pytest.param("layer_norm_backward", "mean", (4, 1), r"^mean must have shape \(4,\), got \(4, 1\)",
                 id="layer_norm_backward-mean"),
    pytest.param("layer_norm_backward", "rstd", (3,), r"^rstd must have shape \(4,\), got \(3,\)",
                 id="layer_norm_backward-rstd"),
    pytest.param("layer_norm_backward", "weight", (3,), r"^weight must have shape \(3, 5\), got \(3,\)",
                 id="layer_norm_backward-weight"),
    pytest.param("layer_norm_backward", "grad_weight", (15,), r"^grad_weight must have shape \(3, 5\), got \(15,\)",
                 id="layer_norm_backward-grad_weight"),
    pytest.param("layer_norm_backward", "grad_bias", (3, 4), r"^grad_bias must have shape \(3, 5\), got \(3, 4\)",
                 id="layer_norm_backward-grad_bias"),
])
def test_wrong_shape_is_refused_and_nothing_is_written(op, name, shape, message):
    _refused(op, ValueError, message, **{name: np.ones(shape, np.float32)})


@pytest.mark.parametrize("op", ["layer_norm_forward", "layer_norm_backward"])
@pytest.mark.parametrize("normalized_shape, message", [
    pytest.param((3, 4), r"^x must have shape \(\*, 3, 4\) to be normalised over normalized_shape \(3, 4\), "
                 r"got \(4, 3, 5\)", id="mismatch"),
    pytest.param(4, r"^x must have shape \(\*, 4\) to be normalised over normalized_shape \(4,\)", id="int-mismatch"),
    pytest.param((2, 4, 3, 5), r"^x must have shape \(\*, 2, 4, 3, 5\)", id="longer-than-x"),
    pytest.param((), r"^normalized_shape must have at least one dimension, got \(\)", id="empty"),
])
def test_layer_norm_normalized_shape_must_end_x(op, normalized_shape, message):
    _refused(op, ValueError, message, normalized_shape=normalized_shape)


@pytest.mark.parametrize("normalized_shape", [2.5, "35", [3.0, 5.0], None], ids=["float", "str", "floats", "none"])
def test_layer_norm_normalized_shape_must_be_ints(normalized_shape):
    _refused("layer_norm_forward", TypeError, r"^normalized_shape must be an int or a sequence of ints",
             normalized_shape=normalized_shape)


# ---------------------------------------------------------------------------------------------
# batch norm's modes and scalars


@pytest.mark.parametrize("x_shape", [(1, 3), (1, 3, 1, 1), (1, 3, 1)])
def test_batch_norm_one_value_per_channel_in_training_is_refused_as_pytorch(x_shape):
    shape = r"\(" + ", ".join(map(str, x_shape)) + r"\)"
    _refused("batch_norm_forward", ValueError,
             rf"^Expected more than 1 value per channel when training, got input size {shape}$",
             x=np.ones(x_shape, np.float32))


def test_batch_norm_one_value_per_channel_in_evaluation_is_fine():
    fn, args = _call("batch_norm_forward", x=np.ones((1, 3), np.float32), training=False)
    y, _, _ = fn(**args)
    assert y.shape == (1, 3)


@pytest.mark.parametrize("missing", ["running_mean", "running_var"])
def test_batch_norm_running_statistics_come_in_pairs(missing):
    _refused("batch_norm_forward", ValueError,
             r"^running_mean and running_var must either both be None or neither be None", **{missing: None})


def test_batch_norm_evaluation_without_running_statistics_is_refused():
    _refused("batch_norm_forward", ValueError,
             r"^running_mean and running_var are required when training is False", running_mean=None,
             running_var=None, training=False)


@pytest.mark.parametrize("momentum, message", [
    pytest.param(-0.1, r"^momentum must be in \[0, 1\], got -0\.1", id="negative"),
    pytest.param(1.5, r"^momentum must be in \[0, 1\], got 1\.5", id="above-one"),
    pytest.param(math.nan, r"^momentum must be finite, got nan", id="nan"),
    pytest.param(math.inf, r"^momentum must be finite, got inf", id="inf"),
])
def test_batch_norm_momentum_outside_0_1_is_refused(momentum, message):
    _refused("batch_norm_forward", ValueError, message, momentum=momentum)


def test_batch_norm_momentum_none_is_refused_with_the_way_to_pass_it():
    _refused("batch_norm_forward", TypeError, r"^momentum must be a float in \[0, 1\]; .*1 / num_batches_tracked",
             momentum=None)


@pytest.mark.parametrize("op", ["batch_norm_forward", "layer_norm_forward"])
@pytest.mark.parametrize("eps, message", [
    pytest.param(0.0, r"^eps must be > 0, got 0$", id="zero"),
    pytest.param(-1e-5, r"^eps must be > 0, got -1e-05", id="negative"),
    pytest.param(math.nan, r"^eps must be finite, got nan", id="nan"),
    pytest.param(math.inf, r"^eps must be finite, got inf", id="inf"),
])
def test_eps_must_be_positive_and_finite(op, eps, message):
    _refused(op, ValueError, message, eps=eps)


# ---------------------------------------------------------------------------------------------
# arrays written in place


@pytest.mark.parametrize("op, name", [
    ("batch_norm_forward", "running_mean"), ("batch_norm_forward", "running_var"),
    ("batch_norm_backward", "grad_weight"), ("batch_norm_backward", "grad_bias"),
    ("layer_norm_backward", "grad_weight"), ("layer_norm_backward", "grad_bias"),
])
def test_read_only_in_place_array_is_refused_and_nothing_is_written(op, name):
    # the other in-place array passes every check: it must not be written either
    _, good = _call(op)
    good[name].flags.writeable = False
    _refused(op, ValueError, rf"^{name} is written in place, so it must be writeable; got a read-only array",
             **{name: good[name]})


@pytest.mark.parametrize("op, out, alias", [
    pytest.param("batch_norm_forward", "running_mean", "weight", id="bn-running_mean-is-weight"),
    pytest.param("batch_norm_forward", "running_mean", "bias", id="bn-running_mean-is-bias"),
    pytest.param("batch_norm_forward", "running_var", "running_mean", id="bn-running_var-is-running_mean"),
    pytest.param("batch_norm_forward", "running_var", "weight", id="bn-running_var-is-weight"),
    pytest.param("batch_norm_backward", "grad_weight", "save_mean", id="bn-grad_weight-is-save_mean"),
    pytest.param("batch_norm_backward", "grad_weight", "weight", id="bn-grad_weight-is-weight"),
    pytest.param("batch_norm_backward", "grad_bias", "save_invstd", id="bn-grad_bias-is-save_invstd"),
    pytest.param("batch_norm_backward", "grad_bias", "grad_weight", id="bn-grad_bias-is-grad_weight"),
    pytest.param("layer_norm_backward", "grad_weight", "weight", id="ln-grad_weight-is-weight"),
    pytest.param("layer_norm_backward", "grad_bias", "grad_weight", id="ln-grad_bias-is-grad_weight"),
])
def test_in_place_array_sharing_an_argument_is_refused(op, out, alias):
    _, good = _call(op)
    _refused(op, ValueError, rf"^{out} is written in place and must not share memory with {alias}",
             **{alias: good[alias], out: good[alias]})


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_batch_norm_running_statistic_inside_x_is_refused(name):
    # x's buffer holds the running statistic in its first three values: updating it would change x mid-call
    x = randn(np.random.default_rng(0), 4, 3, 5)
    _refused("batch_norm_forward", ValueError, rf"^{name} is written in place and must not share memory with x",
             x=x, **{name: x.reshape(-1)[:3]})


@pytest.mark.parametrize("op", ["batch_norm_backward", "layer_norm_backward"])
def test_grad_weight_inside_grad_y_is_refused(op):
    _, good = _call(op)
    dy = good["grad_y"]
    size = good["grad_weight"].size
    _refused(op, ValueError, r"^grad_weight is written in place and must not share memory with grad_y",
             grad_y=dy, grad_weight=dy.reshape(-1)[:size].reshape(good["grad_weight"].shape))


# ---------------------------------------------------------------------------------------------
# NaN stays where it belongs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_nan_poisons_its_channel_only(dtype):
    x = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(dtype)
    x[2, 1, 3] = np.nan
    y, mean, invstd = F.batch_norm_forward(x, None, None, None, None, True)
    assert np.isnan(y[:, 1]).all() and np.isnan(mean[1]) and np.isnan(invstd[1])
    assert np.isfinite(y[:, [0, 2]]).all() and np.isfinite(mean[[0, 2]]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_nan_poisons_its_row_only(dtype):
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(dtype)
    x[1, 2] = np.nan
    y, mean, rstd = F.layer_norm_forward(x, 6)
    assert np.isnan(y[1]).all() and np.isnan(mean[1]) and np.isnan(rstd[1])
    assert np.isfinite(y[[0, 2, 3]]).all()
    dx, dw, db = F.layer_norm_backward(np.ones_like(x), x, 6, np.ones(6, dtype), mean, rstd)
    assert np.isnan(dx[1]).all() and np.isfinite(dx[[0, 2, 3]]).all()
    assert np.isnan(dw).all() and np.isfinite(db).all()  # every column sums the NaN row's xhat


def test_batch_norm_empty_batch_leaves_the_running_statistics():
    rm, rv = np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)
    y, mean, invstd = F.batch_norm_forward(np.zeros((0, 2, 3), np.float32), None, None, rm, rv, True)
    assert y.shape == (0, 2, 3) and np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(rm, [1.0, 2.0])
    np.testing.assert_array_equal(rv, [3.0, 4.0])
    dx, dw, db = F.batch_norm_backward(np.zeros((0, 2, 3), np.float32), np.zeros((0, 2, 3), np.float32),
                                       np.ones(2, np.float32), mean, invstd, True)
    assert dx.shape == (0, 2, 3)
    np.testing.assert_array_equal(dw, [0.0, 0.0])
    np.testing.assert_array_equal(db, [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# the activation after batch norm


def test_batch_norm_backward_through_an_activation_needs_the_forward_output():
    _refused("batch_norm_backward_relu", ValueError, r"^y \(the forward's output\) is required with activation 'relu'$",
             y=None)


@pytest.mark.parametrize("op", ["batch_norm_forward", "batch_norm_backward_relu"])
def test_batch_norm_activation_must_be_known(op):
    _refused(op, ValueError, r"activation", activation="softmax")
