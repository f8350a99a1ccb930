"""The NumPy reference of batch and layer normalisation is the oracle of the native kernels, so its
gradients are checked here against finite differences in float64 (every input that has one: x, weight,
bias), and its forward values and running-statistics updates against the definitions written out."""

import importlib.util
import pathlib

import numpy as np
import pytest


def _load(name):
    # By path, as tests/test_reference_gradcheck.py: these tests must not need the native extension.
    path = pathlib.Path(__file__).resolve().parents[1] / "python" / "fuseprop" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fuseprop_{name}_standalone_norm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load("reference")
testing = _load("testing")


# ---------------------------------------------------------------------------------------------
# Finite differences. L = sum(y * R) with a fixed random R, so the upstream gradient is R.


def _batch_norm_case(shape, affine, training):
    def build(rng):
        c = shape[1]
        x = rng.standard_normal(shape) * 2 + 1
        w = rng.standard_normal(c) if affine else None
        b = rng.standard_normal(c) if affine else None
        rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
        r = rng.standard_normal(shape)

        def loss():
            # training reads no running statistics (and must not move them between evaluations)
            y, _, _ = reference.batch_norm_forward(x, w, b, None if training else rm, None if training else rv,
                                                   training)
            return np.sum(y * r)

        _, mean, invstd = reference.batch_norm_forward(x, w, b, None if training else rm,
                                                       None if training else rv, training)
        grad_x, grad_w, grad_b = reference.batch_norm_backward(r, x, w, mean, invstd, training)
        grads = {"x": (x, grad_x)}
        if affine:
            grads.update(weight=(w, grad_w), bias=(b, grad_b))
        else:
            assert grad_w is None and grad_b is None
        return loss, grads
    return build


def _layer_norm_case(shape, axes, weight, bias):
    def build(rng):
        ns = shape[len(shape) - axes:]
        x = rng.standard_normal(shape) * 2 + 1
        w = rng.standard_normal(ns) if weight else None
        b = rng.standard_normal(ns) if bias else None
        r = rng.standard_normal(shape)
        normalized = ns[0] if axes == 1 else ns

        def loss():
            return np.sum(reference.layer_norm_forward(x, normalized, w, b)[0] * r)

        _, mean, rstd = reference.layer_norm_forward(x, normalized, w, b)
        grad_x, grad_w, grad_b = reference.layer_norm_backward(r, x, normalized, w, mean, rstd)
        grads = {"x": (x, grad_x)}
        if weight:
            grads["weight"] = (w, grad_w)
        if bias:
            grads["bias"] = (b, grad_b)
        return loss, grads
    return build


GRAD_CASES = {}
for _shape in [(4, 3), (2, 1), (3, 2, 5), (2, 3, 2, 2)]:
    for _affine in (True, False):
        for _training in (True, False):
            GRAD_CASES[f"batch_norm-{_shape}-affine={_affine}-training={_training}"] = _batch_norm_case(
                _shape, _affine, _training)
for _shape, _axes in [((3, 5), 1), ((1, 4), 1), ((2, 3, 4), 1), ((2, 3, 4), 2), ((3, 4), 2)]:
    for _weight, _bias in [(True, True), (False, False), (True, False)]:
        GRAD_CASES[f"layer_norm-{_shape}-axes={_axes}-weight={_weight}-bias={_bias}"] = _layer_norm_case(
            _shape, _axes, _weight, _bias)


@pytest.mark.parametrize("seed, build", list(enumerate(GRAD_CASES.values())), ids=list(GRAD_CASES))
def test_backward_matches_finite_differences(seed, build):
    loss, grads = build(np.random.default_rng(seed))
    for name, (x, analytic) in grads.items():
        assert analytic.dtype == np.float64
        testing.check_grad(loss, x, analytic, name=name)


# ---------------------------------------------------------------------------------------------
# Forward values and the running statistics


def test_batch_norm_training_statistics_and_running_update_by_hand():
    x = np.array([[1.0, 10.0], [3.0, 10.0], [8.0, 13.0]])  # channel 0: mean 4, var 26/3; channel 1: mean 11, var 2
    running_mean, running_var = np.array([0.5, -1.0]), np.array([2.0, 1.0])
    y, mean, invstd = reference.batch_norm_forward(x, None, None, running_mean, running_var, True, momentum=0.25,
                                                   eps=1e-5)
    testing.assert_parity(mean, np.array([4.0, 11.0]))
    testing.assert_parity(invstd, 1 / np.sqrt(np.array([26 / 3, 2.0]) + 1e-5))
    testing.assert_parity(y, (x - mean) * invstd)
    # the unbiased variance (n = 3): 13 and 3
    testing.assert_parity(running_mean, np.array([0.75 * 0.5 + 0.25 * 4, 0.75 * -1 + 0.25 * 11]))
    testing.assert_parity(running_var, np.array([0.75 * 2 + 0.25 * 13, 0.75 * 1 + 0.25 * 3]))


def test_batch_norm_statistics_are_over_every_axis_but_1():
    x = np.random.default_rng(1).standard_normal((3, 4, 2, 5))
    _, mean, invstd = reference.batch_norm_forward(x, None, None, None, None, True, eps=1e-3)
    per_channel = np.moveaxis(x, 1, 0).reshape(4, -1)
    testing.assert_parity(mean, per_channel.mean(axis=1))
    testing.assert_parity(invstd, 1 / np.sqrt(per_channel.var(axis=1) + 1e-3))


def test_batch_norm_evaluation_uses_the_running_statistics_and_leaves_them():
    x = np.arange(6.0).reshape(3, 2)
    rm, rv = np.array([1.0, 2.0]), np.array([4.0, 0.25])
    w, b = np.array([2.0, -1.0]), np.array([0.5, 0.0])
    y, mean, invstd = reference.batch_norm_forward(x, w, b, rm, rv, False, eps=1e-12)
    testing.assert_parity(y, (x - rm) / np.sqrt(rv + 1e-12) * w + b)
    testing.assert_parity(mean, rm)
    np.testing.assert_array_equal(rm, [1.0, 2.0])
    np.testing.assert_array_equal(rv, [4.0, 0.25])


def test_batch_norm_one_value_per_channel_in_training_raises_as_pytorch():
    with pytest.raises(ValueError, match=r"^Expected more than 1 value per channel when training"):
        reference.batch_norm_forward(np.zeros((1, 3, 1)), None, None, None, None, True)


def test_batch_norm_evaluation_without_running_statistics_raises():
    with pytest.raises(ValueError, match=r"evaluation needs running_mean and running_var"):
        reference.batch_norm_forward(np.zeros((2, 3)), None, None, None, None, False)


def test_batch_norm_empty_batch_has_nan_statistics_and_leaves_the_running_ones():
    rm, rv = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    y, mean, invstd = reference.batch_norm_forward(np.zeros((0, 2)), None, None, rm, rv, True)
    assert y.shape == (0, 2) and np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(rm, [1.0, 2.0])
    grad_x, grad_w, grad_b = reference.batch_norm_backward(np.zeros((0, 2)), np.zeros((0, 2)), np.ones(2), mean,
                                                           invstd, True)
    assert grad_x.shape == (0, 2)
    np.testing.assert_array_equal(grad_w, [0.0, 0.0])
    np.testing.assert_array_equal(grad_b, [0.0, 0.0])


def test_layer_norm_over_two_axes_by_hand():
    x = np.random.default_rng(2).standard_normal((3, 4, 5))
    y, mean, rstd = reference.layer_norm_forward(x, (4, 5), eps=1e-5)
    flat = x.reshape(3, 20)
    testing.assert_parity(mean, flat.mean(axis=1))
    testing.assert_parity(rstd, 1 / np.sqrt(flat.var(axis=1) + 1e-5))
    testing.assert_parity(y.reshape(3, 20), (flat - flat.mean(1, keepdims=True)) * rstd[:, None])


def test_layer_norm_over_every_axis_has_0d_statistics():
    y, mean, rstd = reference.layer_norm_forward(np.arange(6.0).reshape(2, 3), (2, 3))
    assert mean.shape == rstd.shape == () and isinstance(mean, np.ndarray)
    assert mean == 2.5


@pytest.mark.parametrize("x_shape, normalized_shape", [((2, 3), 4), ((2, 3, 4), (3, 5)), ((2, 3), ()),
                                                     ((3,), (2, 3))])
def test_layer_norm_shape_mismatch_raises(x_shape, normalized_shape):
    with pytest.raises(ValueError, match="does not end in normalized_shape"):
        reference.layer_norm_forward(np.zeros(x_shape), normalized_shape)


@pytest.mark.parametrize("op", ["batch_norm", "layer_norm"])
def test_backward_accumulates_into_given_gradients(op):
    rng = np.random.default_rng(3)
    x, dy, w = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    if op == "batch_norm":
        _, mean, invstd = reference.batch_norm_forward(x, w, None, None, None, True)
        backward = lambda **kw: reference.batch_norm_backward(dy, x, w, mean, invstd, True, **kw)  # noqa: E731
    else:
        _, mean, rstd = reference.layer_norm_forward(x, 3, w)
        backward = lambda **kw: reference.layer_norm_backward(dy, x, 3, w, mean, rstd, **kw)  # noqa: E731
    _, once_w, once_b = backward()
    grad_w, grad_b = np.ones(3), np.zeros(3)
    for _ in range(2):
        grad_x, gw, gb = backward(need_grad_x=False, grad_weight=grad_w, grad_bias=grad_b)
        assert grad_x is None and gw is grad_w and gb is grad_b
    testing.assert_parity(grad_w, 1 + 2 * once_w)
    testing.assert_parity(grad_b, 2 * once_b)
