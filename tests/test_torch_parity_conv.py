"""conv2d and 2-D pooling against PyTorch's autograd (skipped when torch is not installed): the forward and
every gradient in float64, max-pool indices exactly (ties, NaN, all -inf windows), and results that are
bitwise the same whatever the thread count."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TORCH_ACTIVATIONS = {
    "identity": lambda t, s: t, "relu": lambda t, s: TF.relu(t), "leaky_relu": lambda t, s: TF.leaky_relu(t, s),
    "sigmoid": lambda t, s: torch.sigmoid(t), "tanh": lambda t, s: torch.tanh(t), "gelu": lambda t, s: TF.gelu(t),
    "gelu_tanh": lambda t, s: TF.gelu(t, approximate="tanh"),
}

# (x shape, weight shape, window arguments)
CONV_CONFIGS = {
    "3x3-pad1": ((3, 3, 9, 8), (5, 3, 3, 3), dict(padding=1)),
    "stride2-nonsquare": ((2, 4, 11, 9), (3, 4, 3, 2), dict(stride=(2, 1), padding=(1, 0))),
    "dilation2": ((2, 2, 10, 10), (4, 2, 3, 3), dict(dilation=2, padding=2, stride=2)),
    "1x1": ((4, 6, 5, 5), (3, 6, 1, 1), dict()),
    "two-chunks": ((21, 3, 6, 6), (4, 3, 3, 3), dict(padding=1)),
}


def _tensor(a):
    return torch.from_numpy(a.copy()).requires_grad_()


@pytest.mark.parametrize("activation, slope", [(a, 0.2 if a == "leaky_relu" else 0.01) for a in TORCH_ACTIVATIONS])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("config", list(CONV_CONFIGS))
def test_conv2d_matches_torch_in_float64(config, bias, activation, slope):
    x_shape, w_shape, window = CONV_CONFIGS[config]
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))
    b = rng.standard_normal(w_shape[0]) if bias else None
    y, z = F.conv2d_forward(x, w, b, activation=activation, negative_slope=slope, **window)
    tx, tw, tb = _tensor(x), _tensor(w), _tensor(b) if bias else None
    tz = TF.conv2d(tx, tw, tb, **window)
    ty = TORCH_ACTIVATIONS[activation](tz, slope)
    np.testing.assert_allclose(z, tz.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg="z")
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg="y")
    grad_y = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(grad_y))
    grad_x, grad_w, grad_b = F.conv2d_backward(grad_y, x, w, z, y, activation=activation, negative_slope=slope,
                                               has_bias=bias, **window)
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg="grad_x")
    np.testing.assert_allclose(grad_w, tw.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg="grad_weight")
    if bias:
        np.testing.assert_allclose(grad_b, tb.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg="grad_bias")
    else:
        assert grad_b is None


def test_conv2d_float32_is_close_to_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 32, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 3, 3)) / np.sqrt(288)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    y, z = F.conv2d_forward(x, w, b, padding=1, activation="relu")
    tx, tw, tb = _tensor(x), _tensor(w), _tensor(b)
    ty = TF.relu(TF.conv2d(tx, tw, tb, padding=1))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    grad_y = (rng.standard_normal(y.shape) / np.sqrt(8 * 196)).astype(np.float32)
    ty.backward(torch.from_numpy(grad_y))
    grad_x, grad_w, grad_b = F.conv2d_backward(grad_y, x, w, z, y, padding=1, activation="relu")
    for ours, theirs, name in [(grad_x, tx.grad, "grad_x"), (grad_w, tw.grad, "grad_weight"), (grad_b, tb.grad, "grad_bias")]:
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


# (x shape, kernel_size, stride, padding)
POOL_CONFIGS = {
    "2x2": ((2, 3, 8, 7), 2, None, 0),
    "3x2-stride21-pad1": ((2, 2, 7, 6), (3, 2), (2, 1), (1, 1)),
    "3x3-stride1-pad1-overlapping": ((1, 3, 5, 6), 3, 1, 1),
    "5x4-stride23-pad2": ((3, 2, 9, 8), (5, 4), (2, 3), 2),
}


@pytest.mark.parametrize("config", list(POOL_CONFIGS))
def test_max_pool2d_matches_torch(config):
    x_shape, kernel, stride, padding = POOL_CONFIGS[config]
    rng = np.random.default_rng(2)
    x = np.round(rng.standard_normal(x_shape), 1)  # rounded: ties, which both must break the same way
    y, indices = F.max_pool2d_forward(x, kernel, stride, padding)
    tx = _tensor(x)
    ty, t_indices = TF.max_pool2d(tx, kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(indices, t_indices.numpy())
    grad_y = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(grad_y))
    np.testing.assert_allclose(F.max_pool2d_backward(grad_y, indices, x_shape[2:]), tx.grad.numpy(), rtol=1e-12,
                               atol=1e-14)


def test_max_pool2d_nan_and_infinities_match_torch():
    x = np.array([[[[1.0, np.nan, 3.0, np.nan, -np.inf, -np.inf],
                    [5.0, 2.0, 2.0, 1.0, -np.inf, -np.inf],
                    [np.inf, 0.0, np.nan, np.nan, 0.0, 0.0],
                    [0.0, np.inf, np.nan, 7.0, 0.0, -0.0]]]])
    for kernel, stride, padding in [(2, None, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 0))]:
        y, indices = F.max_pool2d_forward(x, kernel, stride, padding)
        ty, t_indices = TF.max_pool2d(torch.from_numpy(x), kernel, stride, padding, return_indices=True)
        np.testing.assert_array_equal(y, ty.numpy())  # NaN where torch has NaN
        np.testing.assert_array_equal(indices, t_indices.numpy())


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("config", list(POOL_CONFIGS))
def test_avg_pool2d_matches_torch(config, count_include_pad):
    x_shape, kernel, stride, padding = POOL_CONFIGS[config]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape)
    y = F.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)
    tx = _tensor(x)
    ty = TF.avg_pool2d(tx, kernel, stride, padding, count_include_pad=count_include_pad)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    grad_y = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(grad_y))
    grad_x = F.avg_pool2d_backward(grad_y, x_shape[2:], kernel, stride, padding, count_include_pad)
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.fixture
def restore_threads():
    before = fuseprop.get_num_threads()
    yield
    fuseprop.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_results_are_bitwise_the_same_whatever_the_thread_count(dtype, restore_threads):
    # Big enough that every kernel splits its work (the GEMMs, im2col, the dz pass, col2im, the pooling planes).
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 16, 20, 20)).astype(dtype)
    w = (rng.standard_normal((32, 16, 3, 3)) / 12).astype(dtype)
    b = rng.standard_normal(32).astype(dtype)
    grad_y = rng.standard_normal((40, 32, 20, 20)).astype(dtype)

    def run():
        y, z = F.conv2d_forward(x, w, b, padding=1, activation="gelu")
        grads = F.conv2d_backward(grad_y, x, w, z, y, padding=1, activation="gelu")
        pooled, indices = F.max_pool2d_forward(y, 2)
        return (y, z, *grads, pooled, indices, F.max_pool2d_backward(pooled, indices, (20, 20)),
                F.avg_pool2d_forward(y, 3, 2, 1), F.avg_pool2d_backward(pooled, (20, 20), 2))

    results = {}
    for threads in (1, 2, 3):
        fuseprop.set_num_threads(threads)
        results[threads] = run()
    for threads in (2, 3):
        for i, (one, many) in enumerate(zip(results[1], results[threads])):
            assert one.tobytes() == many.tobytes(), f"output {i} differs between 1 and {threads} threads"
