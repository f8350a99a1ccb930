"""The _C.cuda_* op entries beyond parity (which tests/ops/test_ops.py checks through the registry): a
summed loss is deterministic on the device, and where the backend is compiled but no device is present,
every entry checks its arguments first and then raises RuntimeError "no CUDA device: ...".
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from fuseprop import _C, cuda

needs_backend_without_gpu = pytest.mark.skipif(not cuda.is_compiled() or cuda.is_available(),
                                               reason="needs the CUDA backend compiled and no device present")


@pytest.mark.cuda
@pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device")
def test_cross_entropy_total_is_deterministic():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4099, 37)).astype(np.float32)
    labels = rng.integers(0, 37, 4099).astype(np.int64)
    totals = {_C.cuda_cross_entropy_loss(logits, labels, 0.1, "sum")[0] for _ in range(5)}
    assert len(totals) == 1


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
        *conv_pool_norm_calls(),
        *recurrent_calls(),
        ("cuda_matmul_time_ms", _C.cuda_matmul_time_ms, (64, 64, 64), {}),
    ] if cuda.is_compiled() else []


def conv_pool_norm_calls():
    """The conv2d, pooling and normalisation twins with valid float32 arguments (the first one a float array)."""
    x, w, b = np.ones((2, 3, 6, 5), np.float32), np.ones((4, 3, 3, 3), np.float32), np.ones(4, np.float32)
    y = np.ones((2, 4, 4, 3), np.float32)
    pooled, indices = np.ones((2, 3, 3, 2), np.float32), np.zeros((2, 3, 3, 2), np.int64)
    c, rows = np.ones(3, np.float32), np.ones((4, 5), np.float32)
    m, d = np.zeros(4, np.float32), np.ones(5, np.float32)
    return [
        ("cuda_conv2d_forward", _C.cuda_conv2d_forward, (x, w, b), dict(activation="relu", tf32=True)),
        ("cuda_conv2d_backward", _C.cuda_conv2d_backward, (y, x, w, y, y), dict(activation="relu")),
        ("cuda_max_pool2d_forward", _C.cuda_max_pool2d_forward, (x, 2), {}),
        ("cuda_max_pool2d_backward", _C.cuda_max_pool2d_backward, (pooled, indices, (6, 5)), {}),
        ("cuda_avg_pool2d_forward", _C.cuda_avg_pool2d_forward, (x, 3, 2, 1), dict(count_include_pad=False)),
        ("cuda_avg_pool2d_backward", _C.cuda_avg_pool2d_backward, (pooled, (6, 5), 2), {}),
        ("cuda_batch_norm_forward", _C.cuda_batch_norm_forward, (x, c, c, c.copy(), c.copy(), True), {}),
        ("cuda_batch_norm_backward", _C.cuda_batch_norm_backward, (x, x, c, c, c, True), {}),
        ("cuda_layer_norm_forward", _C.cuda_layer_norm_forward, (rows, (5,), d, d), {}),
        ("cuda_layer_norm_backward", _C.cuda_layer_norm_backward, (rows, rows, (5,), d, m, m), {}),
    ]


def recurrent_arrays():
    """An lstm of B=2, T=3, I=4, H=5: x, a (B,H) state, w_ih, w_hh, a bias, y of zeros and a device record of zeros
    (seven (B,T,H) arrays and h_last (B,H), cuda/ops/recurrent_cuda.h), whose last h is y's last step."""
    return (np.ones((2, 3, 4), np.float32), np.ones((2, 5), np.float32), np.ones((20, 4), np.float32),
            np.ones((20, 5), np.float32), np.ones(20, np.float32), np.zeros((2, 3, 5), np.float32),
            np.zeros(7 * 2 * 3 * 5 + 2 * 5, np.float32))


def recurrent_calls():
    """The recurrent twins with valid float32 arguments, the leading ones bound so that x comes first."""
    x, h, w_ih, w_hh, b, y, saved = recurrent_arrays()
    return [
        ("cuda_recurrent_forward", functools.partial(_C.cuda_recurrent_forward, "lstm"), (x, h, h, w_ih, w_hh, b, b),
         dict(tf32=True)),
        ("cuda_recurrent_backward", functools.partial(_C.cuda_recurrent_backward, "lstm", y, h, h),
         (x, h, h, w_ih, w_hh, b, y, saved), dict(bptt_steps=2)),
    ]


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


@needs_backend_without_gpu
def test_conv_pool_norm_checks_come_before_the_device():
    x, w = np.ones((2, 3, 6, 5), np.float32), np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(out_channels, 3, kh, kw\)"):
        _C.cuda_conv2d_forward(x, np.ones((4, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="is larger than the padded input"):
        _C.cuda_conv2d_forward(x, np.ones((4, 3, 7, 3), np.float32))
    with pytest.raises(TypeError, match="weight must have the same dtype as x"):
        _C.cuda_conv2d_forward(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="grad_bias was given but has_bias is False"):
        _C.cuda_conv2d_backward(np.ones((2, 4, 4, 3), np.float32), x, w, None, None, has_bias=False,
                                grad_bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"grad_y must have shape \(2, 4, 4, 3\)"):
        _C.cuda_conv2d_backward(np.ones((2, 4, 4, 4), np.float32), x, w, None, None)
    with pytest.raises(ValueError, match="padding must be at most half of kernel_size"):
        _C.cuda_max_pool2d_forward(x, 2, 1, 2)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 30\)"):
        _C.cuda_max_pool2d_backward(np.ones((2, 3, 3, 2), np.float32), np.full((2, 3, 3, 2), 30, np.int64), (6, 5))
    with pytest.raises(TypeError, match="indices must have dtype int64"):
        _C.cuda_max_pool2d_backward(np.ones((2, 3, 3, 2), np.float32), np.zeros((2, 3, 3, 2), np.int32), (6, 5))
    with pytest.raises(ValueError, match=r"grad_y must have shape \(2, 3, 3, 2\)"):
        _C.cuda_avg_pool2d_backward(np.ones((2, 3, 3, 3), np.float32), (6, 5), 2)
    c = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        _C.cuda_batch_norm_forward(np.ones((1, 3), np.float32), c, c, None, None, True)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        _C.cuda_batch_norm_forward(x, c, c, None, None, False)
    with pytest.raises(ValueError, match="must not share memory"):
        _C.cuda_batch_norm_backward(x, x, c, c, c, True, grad_weight=c)
    rows = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="to be normalised over normalized_shape"):
        _C.cuda_layer_norm_forward(rows, (4,))
    with pytest.raises(ValueError, match="eps must be > 0"):
        _C.cuda_layer_norm_forward(rows, (5,), eps=0.0)
    with pytest.raises(ValueError, match=r"mean must have shape \(4,\)"):
        _C.cuda_layer_norm_backward(rows, rows, (5,), None, np.zeros(3, np.float32), np.zeros(4, np.float32))


@needs_backend_without_gpu
def test_recurrent_checks_come_before_the_device():
    x, h, w_ih, w_hh, b, y, saved = recurrent_arrays()
    with pytest.raises(ValueError, match="cell must be 'rnn', 'lstm' or 'gru'"):
        _C.cuda_recurrent_forward("lstn", x, h, h, w_ih, w_hh, b, b)
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4\*H, H\)"):
        _C.cuda_recurrent_forward("lstm", x, h, h, w_ih, w_hh[:19], b, b)
    with pytest.raises(ValueError, match="c0 is for cell 'lstm' only"):
        _C.cuda_recurrent_forward("gru", x, h, h, w_ih[:15], w_hh[:15], None, None)
    with pytest.raises(TypeError, match="w_ih must have the same dtype as x"):
        _C.cuda_recurrent_forward("lstm", x, h, h, w_ih.astype(np.float64), w_hh, b, b)

    def backward(saved=saved, y=y, **kwargs):
        return _C.cuda_recurrent_backward("lstm", y, h, h, x, h, h, w_ih, w_hh, b, y, saved, **kwargs)
    # the CPU forward's record has another layout (and size): the device's backward refuses it by name
    _, _, _, cpu_saved = _C.recurrent_forward("lstm", x, h, h, w_ih, w_hh, b, b)
    with pytest.raises(ValueError, match=r"saved must be cuda_recurrent_forward's record for cell 'lstm'.*shape \(220,\)"):
        backward(saved=cpu_saved)
    with pytest.raises(ValueError, match="saved is not the record of the forward that returned y"):
        backward(y=np.ones_like(y))
    with pytest.raises(ValueError, match="bptt_steps must be >= 0"):
        backward(bptt_steps=-1)
