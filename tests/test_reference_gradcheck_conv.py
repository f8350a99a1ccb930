"""The NumPy reference of conv2d and 2-D pooling is the oracle for the native kernels, so its gradients are
checked here against finite differences in float64, and its forward against direct sums written out one
output at a time (values finite differences cannot see)."""

import importlib.util
import pathlib

import numpy as np
import pytest


def _load(name):
    # Load by path: fuseprop/__init__.py imports the native extension; these tests must not need it.
    path = pathlib.Path(__file__).resolve().parents[1] / "python" / "fuseprop" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fuseprop_{name}_conv_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load("reference")
testing = _load("testing")

# (x shape, weight shape, window arguments)
CONV_CONFIGS = {
    "3x3-pad1": ((2, 3, 5, 6), (4, 3, 3, 3), dict(padding=1)),
    "stride2-nonsquare": ((2, 2, 7, 6), (3, 2, 3, 2), dict(stride=2, padding=(1, 0))),
    "dilation2": ((1, 2, 7, 7), (2, 2, 3, 3), dict(dilation=2, padding=(2, 1), stride=(1, 2))),
    "1x1": ((2, 4, 3, 3), (3, 4, 1, 1), dict()),
}
CONV_ACTIVATIONS = [("identity", 0.01), ("relu", 0.01), ("leaky_relu", 0.2), ("sigmoid", 0.01), ("tanh", 0.01),
                    ("gelu", 0.01), ("gelu_tanh", 0.01)]


def _conv_case(x_shape, w_shape, window, activation, negative_slope, with_bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    weight = rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))
    bias = rng.standard_normal(w_shape[0]) if with_bias else None
    y, z = reference.conv2d_forward(x, weight, bias, activation=activation, negative_slope=negative_slope, **window)
    r = rng.standard_normal(y.shape)

    def loss():
        return np.sum(reference.conv2d_forward(x, weight, bias, activation=activation, negative_slope=negative_slope,
                                               **window)[0] * r)

    grads = reference.conv2d_backward(r, x, weight, z, y, activation=activation, negative_slope=negative_slope,
                                      has_bias=with_bias, **window)
    return loss, x, weight, bias, grads


@pytest.mark.parametrize("activation, negative_slope", CONV_ACTIVATIONS, ids=[a for a, _ in CONV_ACTIVATIONS])
@pytest.mark.parametrize("config", list(CONV_CONFIGS))
def test_conv2d_backward_matches_finite_differences(config, activation, negative_slope):
    x_shape, w_shape, window = CONV_CONFIGS[config]
    loss, x, weight, bias, (grad_x, grad_weight, grad_bias) = _conv_case(
        x_shape, w_shape, window, activation, negative_slope, True, seed=len(config) + len(activation))
    testing.check_grad(loss, x, grad_x, name="x")
    testing.check_grad(loss, weight, grad_weight, name="weight")
    testing.check_grad(loss, bias, grad_bias, name="bias")


def test_conv2d_backward_without_bias_matches_finite_differences():
    loss, x, weight, _, (grad_x, grad_weight, grad_bias) = _conv_case((2, 2, 5, 4), (3, 2, 2, 3), dict(padding=1),
                                                                      "tanh", 0.01, False, seed=7)
    assert grad_bias is None
    testing.check_grad(loss, x, grad_x, name="x")
    testing.check_grad(loss, weight, grad_weight, name="weight")


def test_conv2d_forward_matches_direct_sums():
    rng = np.random.default_rng(3)
    x, weight, bias = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 2, 3)), rng.standard_normal(4)
    (sh, sw), (ph, pw), (dh, dw) = (2, 1), (1, 2), (2, 1)
    _, z = reference.conv2d_forward(x, weight, bias, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))
    ho, wo = (6 + 2 * ph - dh * 1 - 1) // sh + 1, (5 + 2 * pw - dw * 2 - 1) // sw + 1
    assert z.shape == (2, 4, ho, wo)
    expected = np.zeros_like(z)
    for n, o, oh, ow in np.ndindex(*z.shape):
        total = bias[o]
        for c, i, j in np.ndindex(3, 2, 3):
            ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
            if 0 <= ih < 6 and 0 <= iw < 5:
                total += x[n, c, ih, iw] * weight[o, c, i, j]
        expected[n, o, oh, ow] = total
    testing.assert_parity(z, expected, reduction_length=18)


def test_conv2d_backward_accumulates_in_place():
    rng = np.random.default_rng(4)
    x, weight, bias = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    y, z = reference.conv2d_forward(x, weight, bias, padding=1, activation="sigmoid")
    grad_y = rng.standard_normal(y.shape)
    _, once_weight, once_bias = reference.conv2d_backward(grad_y, x, weight, z, y, padding=1, activation="sigmoid")
    grad_weight, grad_bias = np.zeros_like(weight), np.zeros_like(bias)
    for _ in range(2):
        grad_x, gw, gb = reference.conv2d_backward(grad_y, x, weight, z, y, padding=1, activation="sigmoid",
                                                   need_grad_x=False, grad_weight=grad_weight, grad_bias=grad_bias)
        assert grad_x is None and gw is grad_weight and gb is grad_bias
    testing.assert_parity(grad_weight, 2 * once_weight)
    testing.assert_parity(grad_bias, 2 * once_bias)


# (x shape, kernel_size, stride, padding)
POOL_CONFIGS = {
    "2x2": ((2, 3, 6, 7), 2, None, 0),
    "3x2-stride21-pad1": ((2, 2, 7, 6), (3, 2), (2, 1), 1),
    "3x3-stride1-pad1-overlapping": ((1, 2, 5, 5), 3, 1, 1),
}


def _pool_loss(forward, x, r):
    return lambda: np.sum(forward(x) * r)


@pytest.mark.parametrize("config", list(POOL_CONFIGS))
def test_max_pool2d_backward_matches_finite_differences(config):
    x_shape, kernel, stride, padding = POOL_CONFIGS[config]
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape)  # no ties: each max stays put under a small step
    y, indices = reference.max_pool2d_forward(x, kernel, stride, padding)
    r = rng.standard_normal(y.shape)
    analytic = reference.max_pool2d_backward(r, indices, x_shape[2:])
    testing.check_grad(_pool_loss(lambda a: reference.max_pool2d_forward(a, kernel, stride, padding)[0], x, r), x,
                       analytic)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("config", list(POOL_CONFIGS))
def test_avg_pool2d_backward_matches_finite_differences(config, count_include_pad):
    x_shape, kernel, stride, padding = POOL_CONFIGS[config]
    rng = np.random.default_rng(6)
    x = rng.standard_normal(x_shape)
    y = reference.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)
    r = rng.standard_normal(y.shape)
    analytic = reference.avg_pool2d_backward(r, x_shape[2:], kernel, stride, padding, count_include_pad)
    testing.check_grad(_pool_loss(lambda a: reference.avg_pool2d_forward(a, kernel, stride, padding,
                                                                         count_include_pad), x, r), x, analytic)


def test_pool_forward_values_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y, indices = reference.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(indices[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(reference.avg_pool2d_forward(x, 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    # padding 1, a 3x3 window at the corner sees 4 of 9 positions: 0 + 1 + 4 + 5
    corner = reference.avg_pool2d_forward(x, 3, 1, 1)[0, 0, 0, 0]
    assert corner == 10 / 9
    assert reference.avg_pool2d_forward(x, 3, 1, 1, count_include_pad=False)[0, 0, 0, 0] == 10 / 4


def test_max_pool2d_ties_nan_and_padding_follow_pytorch():
    x = np.array([[[[2.0, 2.0, np.nan, np.nan], [1.0, 2.0, 5.0, 1.0]]]])
    y, indices = reference.max_pool2d_forward(x, 2)
    assert y[0, 0, 0, 0] == 2.0 and indices[0, 0, 0, 0] == 0  # the first of the ties
    assert np.isnan(y[0, 0, 0, 1]) and indices[0, 0, 0, 1] == 3  # a NaN wins; the last NaN of the window
    y, indices = reference.max_pool2d_forward(np.full((1, 1, 2, 2), -np.inf), 3, 1, 1)
    assert (y == -np.inf).all()
    np.testing.assert_array_equal(indices[0, 0], [[0, 0], [0, 0]])  # the first position inside the input


def test_empty_batch():
    weight = np.ones((3, 2, 3, 3))
    y, z = reference.conv2d_forward(np.zeros((0, 2, 5, 5)), weight, np.ones(3), padding=1, activation="relu")
    assert y.shape == z.shape == (0, 3, 5, 5)
    grad_x, grad_weight, grad_bias = reference.conv2d_backward(y, np.zeros((0, 2, 5, 5)), weight, z, y, padding=1,
                                                               activation="relu")
    assert grad_x.shape == (0, 2, 5, 5)
    np.testing.assert_array_equal(grad_weight, np.zeros_like(weight))
    np.testing.assert_array_equal(grad_bias, np.zeros(3))
    y, indices = reference.max_pool2d_forward(np.zeros((0, 2, 4, 4)), 2)
    assert y.shape == indices.shape == (0, 2, 2, 2)
    assert reference.max_pool2d_backward(y, indices, (4, 4)).shape == (0, 2, 4, 4)
    assert reference.avg_pool2d_backward(y, (4, 4), 2).shape == (0, 2, 4, 4)
