"""Bad input to the conv2d and pooling functions of fuseprop.functional gets a clear error and changes nothing.

Every float array argument in every wrong form (type, dtype, layout, alignment), wrong ndim and shapes,
channel mismatches, windows larger than the padded input, window arguments of the wrong type or range,
bad max-pool indices, and gradient arrays that cannot be written in place: each raises TypeError /
ValueError with the message below, and every array that could have been written is compared with a copy
taken before the call. An empty batch is not an error: it returns empty results.
"""
import numpy as np
import pytest

from fuseprop import functional as F

from helpers import array_snapshot, assert_arrays_unchanged, bad_form_cases, check_bad_form, randn, strided


# Good float32 arguments for each op, arrays first in the order the op checks them (the first sets the dtype):
# x (2,3,5,5), weight (4,3,3,3), padding 1, so y (2,4,5,5); pooling 2x2 on x gives (2,3,2,2).
def _conv_backward_args(r):
    return dict(grad_y=randn(r, 2, 4, 5, 5), x=randn(r, 2, 3, 5, 5), weight=randn(r, 4, 3, 3, 3),
                z=randn(r, 2, 4, 5, 5), y=randn(r, 2, 4, 5, 5), padding=1, activation="relu",
                grad_weight=randn(r, 4, 3, 3, 3), grad_bias=randn(r, 4))


_OPS = {
    "conv2d_forward": (F.conv2d_forward, lambda r: dict(x=randn(r, 2, 3, 5, 5), weight=randn(r, 4, 3, 3, 3),
                                                        bias=randn(r, 4), padding=1)),
    "conv2d_backward": (F.conv2d_backward, _conv_backward_args),
    "max_pool2d_forward": (F.max_pool2d_forward, lambda r: dict(x=randn(r, 2, 3, 5, 5), kernel_size=2)),
    "max_pool2d_backward": (F.max_pool2d_backward, lambda r: dict(grad_y=randn(r, 2, 3, 2, 2),
                                                                  indices=np.zeros((2, 3, 2, 2), np.int64),
                                                                  input_size=(5, 5))),
    "avg_pool2d_forward": (F.avg_pool2d_forward, lambda r: dict(x=randn(r, 2, 3, 5, 5), kernel_size=2)),
    "avg_pool2d_backward": (F.avg_pool2d_backward, lambda r: dict(grad_y=randn(r, 2, 3, 2, 2), input_size=(5, 5),
                                                                  kernel_size=2)),
}


def _call(op, **override):
    fn, build = _OPS[op]
    args = build(np.random.default_rng(0))
    args.update(override)
    return fn, args


@pytest.mark.parametrize("op", list(_OPS))
def test_good_arguments_are_accepted(op):
    fn, args = _call(op)
    fn(**args)


_FORMS = ("list", "int64", "float16", "big_endian_f4", "mixed_float64", "strided", "negative_stride", "unaligned")


@pytest.mark.parametrize("op, name, form", list(bad_form_cases(_OPS, _call, _FORMS)))
def test_rejects_bad_array_and_writes_nothing(op, name, form):
    check_bad_form(_call, op, name, form)


@pytest.mark.parametrize("op, name, shape", [
    pytest.param("conv2d_forward", "x", (3, 5, 5), id="conv2d_forward-x-3d"),
    pytest.param("conv2d_forward", "x", (1, 2, 3, 5, 5), id="conv2d_forward-x-5d"),
    pytest.param("conv2d_forward", "weight", (4, 27), id="conv2d_forward-weight-2d"),
    pytest.param("conv2d_backward", "x", (3, 5, 5), id="conv2d_backward-x-3d"),
    pytest.param("max_pool2d_forward", "x", (6, 5, 5), id="max_pool2d_forward-x-3d"),
    pytest.param("max_pool2d_backward", "grad_y", (6, 2, 2), id="max_pool2d_backward-grad_y-3d"),
    pytest.param("avg_pool2d_forward", "x", (25,), id="avg_pool2d_forward-x-1d"),
    pytest.param("avg_pool2d_backward", "grad_y", (6, 2, 2), id="avg_pool2d_backward-grad_y-3d"),
])
def test_rejects_wrong_ndim(op, name, shape):
    fn, args = _call(op)
    args[name] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"^{name} must be 4-D, got a {len(shape)}-D array"):
        fn(**args)


@pytest.mark.parametrize("op, name, shape, message", [
    pytest.param("conv2d_forward", "weight", (4, 2, 3, 3),
                 r"^weight must have shape \(out_channels, 3, kh, kw\) to match x of shape \(2, 3, 5, 5\) \(3 channels\), "
                 r"got \(4, 2, 3, 3\)$", id="conv2d_forward-weight-channels"),
    pytest.param("conv2d_backward", "weight", (4, 5, 3, 3),
                 r"^weight must have shape \(out_channels, 3, kh, kw\) to match x of shape \(2, 3, 5, 5\) \(3 channels\), "
                 r"got \(4, 5, 3, 3\)$", id="conv2d_backward-weight-channels"),
    pytest.param("conv2d_forward", "bias", (3,), r"^bias must have shape \(4,\), got \(3,\)$", id="conv2d_forward-bias"),
    pytest.param("conv2d_forward", "weight", (4, 3, 0, 3),
                 r"^weight's kernel must be at least 1x1, got weight of shape \(4, 3, 0, 3\)$", id="conv2d_forward-empty-kernel"),
    pytest.param("conv2d_backward", "grad_y", (2, 4, 3, 3), r"^grad_y must have shape \(2, 4, 5, 5\), got \(2, 4, 3, 3\)$",
                 id="conv2d_backward-grad_y"),
    pytest.param("conv2d_backward", "z", (2, 4, 5, 4), r"^z must have shape \(2, 4, 5, 5\), got \(2, 4, 5, 4\)$",
                 id="conv2d_backward-z"),
    pytest.param("conv2d_backward", "y", (1, 4, 5, 5), r"^y must have shape \(2, 4, 5, 5\), got \(1, 4, 5, 5\)$",
                 id="conv2d_backward-y"),
    pytest.param("conv2d_backward", "grad_weight", (4, 3, 3, 2),
                 r"^grad_weight must have shape \(4, 3, 3, 3\), got \(4, 3, 3, 2\)$", id="conv2d_backward-grad_weight"),
    pytest.param("conv2d_backward", "grad_bias", (5,), r"^grad_bias must have shape \(4,\), got \(5,\)$",
                 id="conv2d_backward-grad_bias"),
    pytest.param("max_pool2d_backward", "grad_y", (2, 3, 2, 1),
                 r"^indices must have the same shape as grad_y \(2, 3, 2, 1\), got \(2, 3, 2, 2\)$",
                 id="max_pool2d_backward-grad_y-vs-indices"),
    pytest.param("avg_pool2d_backward", "grad_y", (2, 3, 3, 3), r"^grad_y must have shape \(2, 3, 2, 2\), got \(2, 3, 3, 3\)$",
                 id="avg_pool2d_backward-grad_y-vs-input_size"),
])
def test_rejects_mismatched_shape_and_writes_nothing(op, name, shape, message):
    fn, args = _call(op)
    args[name] = np.ones(shape, np.float32)
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=message):
        fn(**args)
    assert_arrays_unchanged(args, snap)


# ---------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize("op, override, message", [
    pytest.param("conv2d_forward", dict(weight=np.zeros((4, 3, 7, 3), np.float32), padding=0),
                 r"^the kernel's extent 7x3 is larger than the padded input 5x5 \(x of shape \(2, 3, 5, 5\), padding \(0, 0\)\)$",
                 id="conv-kernel-taller-than-input"),
    pytest.param("conv2d_forward", dict(padding=0, dilation=(1, 3)),
                 r"^the kernel's extent 3x7 is larger than the padded input 5x5 ", id="conv-dilated-kernel-too-wide"),
    pytest.param("conv2d_forward", dict(weight=np.zeros((4, 3, 8, 8), np.float32), padding=1),
                 r"^the kernel's extent 8x8 is larger than the padded input 7x7 \(x of shape \(2, 3, 5, 5\), padding \(1, 1\)\)$",
                 id="conv-kernel-larger-than-padded-input"),
    pytest.param("conv2d_backward", dict(padding=0, dilation=3),
                 r"^the kernel's extent 7x7 is larger than the padded input 5x5 ", id="conv_backward-kernel-too-large"),
    pytest.param("max_pool2d_forward", dict(kernel_size=6, padding=0),
                 r"^kernel_size 6x6 is larger than the padded input 5x5 \(x of shape \(2, 3, 5, 5\), padding \(0, 0\)\)$",
                 id="max_pool-kernel-too-large"),
    pytest.param("avg_pool2d_forward", dict(kernel_size=(2, 6)), r"^kernel_size 2x6 is larger than the padded input 5x5 ",
                 id="avg_pool-kernel-too-wide"),
    pytest.param("avg_pool2d_backward", dict(input_size=(1, 1), grad_y=np.zeros((2, 3, 1, 1), np.float32)),
                 r"^kernel_size 2x2 is larger than the padded input 1x1 \(input_size \(1, 1\), padding \(0, 0\)\)$",
                 id="avg_pool_backward-kernel-larger-than-input_size"),
    pytest.param("max_pool2d_forward", dict(kernel_size=3, padding=2),
                 r"^padding must be at most half of kernel_size, got padding \(2, 2\) for kernel_size \(3, 3\)$",
                 id="max_pool-padding-over-half"),
    pytest.param("avg_pool2d_forward", dict(kernel_size=(4, 2), padding=(2, 2)),
                 r"^padding must be at most half of kernel_size, got padding \(2, 2\) for kernel_size \(4, 2\)$",
                 id="avg_pool-padding-over-half"),
])
def test_window_that_does_not_fit_is_an_error(op, override, message):
    fn, args = _call(op, **override)
    with pytest.raises(ValueError, match=message):
        fn(**args)


@pytest.mark.parametrize("op, name, value, message", [
    pytest.param("conv2d_forward", "stride", 0, r"^stride must be >= 1, got \(0, 0\)$", id="conv-stride-0"),
    pytest.param("conv2d_forward", "stride", (1, -1), r"^stride must be >= 1, got \(1, -1\)$", id="conv-stride-negative"),
    pytest.param("conv2d_forward", "dilation", 0, r"^dilation must be >= 1, got \(0, 0\)$", id="conv-dilation-0"),
    pytest.param("conv2d_forward", "padding", -1, r"^padding must be >= 0, got \(-1, -1\)$", id="conv-padding-negative"),
    pytest.param("conv2d_backward", "stride", (0, 1), r"^stride must be >= 1, got \(0, 1\)$", id="conv_backward-stride-0"),
    pytest.param("max_pool2d_forward", "kernel_size", 0, r"^kernel_size must be >= 1, got \(0, 0\)$", id="max_pool-kernel-0"),
    pytest.param("max_pool2d_forward", "stride", (2, 0), r"^stride must be >= 1, got \(2, 0\)$", id="max_pool-stride-0"),
    pytest.param("avg_pool2d_forward", "padding", (0, -1), r"^padding must be >= 0, got \(0, -1\)$",
                 id="avg_pool-padding-negative"),
    pytest.param("max_pool2d_backward", "input_size", (0, 5), r"^input_size must be >= 1, got \(0, 5\)$",
                 id="max_pool_backward-input_size-0"),
])
def test_window_argument_out_of_range_is_an_error(op, name, value, message):
    fn, args = _call(op, **{name: value})
    with pytest.raises(ValueError, match=message):
        fn(**args)


@pytest.mark.parametrize("op, name, value, shown", [
    pytest.param("conv2d_forward", "stride", 1.5, "1.5", id="conv-stride-float"),
    pytest.param("conv2d_forward", "stride", True, "True", id="conv-stride-bool"),
    pytest.param("conv2d_forward", "padding", (1, 2, 3), r"\(1, 2, 3\)", id="conv-padding-triple"),
    pytest.param("conv2d_forward", "dilation", "2", "'2'", id="conv-dilation-str"),
    pytest.param("max_pool2d_forward", "kernel_size", (2.0, 2.0), r"\(2\.0, 2\.0\)", id="max_pool-kernel-floats"),
    pytest.param("avg_pool2d_forward", "stride", [1], r"\[1\]", id="avg_pool-stride-one-element-list"),
])
def test_window_argument_of_the_wrong_type_is_an_error(op, name, value, shown):
    fn, args = _call(op, **{name: value})
    with pytest.raises(TypeError, match=rf"^{name} must be an int or a pair of ints \(height, width\), got {shown}$"):
        fn(**args)


def test_input_size_must_be_a_pair():
    fn, args = _call("max_pool2d_backward", input_size=5)
    with pytest.raises(TypeError, match=r"^input_size must be a pair of ints \(height, width\), got 5$"):
        fn(**args)


def test_window_arguments_take_numpy_integers():
    fn, args = _call("conv2d_forward", stride=np.int64(1), padding=(np.int32(1), np.int64(1)))
    y, _ = fn(**args)
    assert y.shape == (2, 4, 5, 5)


# ---------------------------------------------------------------------------------------------
# max-pool indices


def test_indices_of_another_dtype_are_an_error():
    fn, args = _call("max_pool2d_backward", indices=np.zeros((2, 3, 2, 2), np.int32))
    with pytest.raises(TypeError, match=r"^indices must have dtype int64 \(max_pool2d_forward's\), got int32$"):
        fn(**args)


def test_indices_as_a_list_are_an_error():
    fn, args = _call("max_pool2d_backward", indices=[[0]])
    with pytest.raises(TypeError, match=r"^indices must be a numpy\.ndarray, got list$"):
        fn(**args)


def test_strided_indices_are_an_error():
    fn, args = _call("max_pool2d_backward", indices=strided(np.zeros((2, 3, 2, 2), np.int64)))
    with pytest.raises(ValueError, match=r"^indices must be C-contiguous"):
        fn(**args)


@pytest.mark.parametrize("value, message", [
    pytest.param(25, r"^indices must be in \[0, 25\) for input_size \(5, 5\); element 7 is 25$", id="past-the-plane"),
    pytest.param(-1, r"^indices must be in \[0, 25\) for input_size \(5, 5\); element 7 is -1$", id="negative"),
])
def test_index_outside_the_input_plane_is_an_error(value, message):
    indices = np.zeros((2, 3, 2, 2), np.int64)
    indices.flat[7] = value
    fn, args = _call("max_pool2d_backward", indices=indices)
    with pytest.raises(ValueError, match=message):
        fn(**args)


# ---------------------------------------------------------------------------------------------
# conv2d_backward: z and y, and the gradients written in place


def test_z_and_y_are_needed_for_an_activation():
    fn, args = _call("conv2d_backward", z=None, y=None)
    with pytest.raises(TypeError, match=r"^z must be a numpy\.ndarray, got NoneType$"):
        fn(**args)


def test_z_and_y_may_be_none_for_the_identity():
    fn, args = _call("conv2d_backward", z=None, y=None, activation="identity")
    grad_x, _, _ = fn(**args)
    assert grad_x.shape == (2, 3, 5, 5)


def test_unknown_activation_is_an_error():
    fn, args = _call("conv2d_forward", activation="swish")
    with pytest.raises(ValueError, match=r"^activation must be one of identity, relu, .*; got 'swish'$"):
        fn(**args)


def test_non_finite_negative_slope_is_an_error():
    fn, args = _call("conv2d_forward", activation="leaky_relu", negative_slope=float("nan"))
    with pytest.raises(ValueError, match=r"^negative_slope must be finite, got nan$"):
        fn(**args)


def test_read_only_grad_weight_is_an_error_and_unchanged():
    r = np.random.default_rng(1)
    grad_weight = randn(r, 4, 3, 3, 3)
    grad_weight.flags.writeable = False
    fn, args = _call("conv2d_backward", grad_weight=grad_weight)
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_weight is written in place, so it must be writeable; got a read-only array$"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


def test_read_only_grad_bias_is_an_error_and_unchanged():
    grad_bias = np.ones(4, np.float32)
    grad_bias.flags.writeable = False
    fn, args = _call("conv2d_backward", grad_bias=grad_bias)
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=r"^grad_bias is written in place, so it must be writeable"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


@pytest.mark.parametrize("target, source", [("grad_weight", "weight"), ("grad_bias", "weight"), ("grad_weight", "x"),
                                            ("grad_bias", "grad_weight")])
def test_gradient_sharing_memory_with_an_input_is_an_error(target, source):
    fn, args = _call("conv2d_backward")
    shared = args[source].reshape(-1)[:args[target].size].reshape(args[target].shape)
    args[target] = shared
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=rf"^{target} is written in place and must not share memory with {source}$"):
        fn(**args)
    assert_arrays_unchanged(args, snap)


def test_grad_bias_without_a_bias_is_an_error():
    fn, args = _call("conv2d_backward", has_bias=False)
    with pytest.raises(ValueError, match=r"^grad_bias was given but has_bias is False$"):
        fn(**args)


# ---------------------------------------------------------------------------------------------
# empty batches: results, not errors


def test_conv2d_of_an_empty_batch_is_empty():
    r = np.random.default_rng(2)
    x, weight, bias = np.zeros((0, 3, 5, 5), np.float32), randn(r, 4, 3, 3, 3), randn(r, 4)
    y, z = F.conv2d_forward(x, weight, bias, padding=1, activation="relu")
    assert y.shape == z.shape == (0, 4, 5, 5) and y.dtype == np.float32
    grad_weight, grad_bias = np.ones_like(weight), np.ones_like(bias)
    grad_x, gw, gb = F.conv2d_backward(y, x, weight, z, y, padding=1, activation="relu", grad_weight=grad_weight,
                                       grad_bias=grad_bias)
    assert grad_x.shape == (0, 3, 5, 5) and gw is grad_weight and gb is grad_bias
    np.testing.assert_array_equal(grad_weight, np.ones_like(weight))  # nothing to add
    np.testing.assert_array_equal(grad_bias, np.ones_like(bias))
    _, fresh_weight, fresh_bias = F.conv2d_backward(y, x, weight, z, y, padding=1, activation="relu")
    np.testing.assert_array_equal(fresh_weight, np.zeros_like(weight))
    np.testing.assert_array_equal(fresh_bias, np.zeros_like(bias))


def test_pooling_of_an_empty_batch_is_empty():
    x = np.zeros((0, 3, 6, 6), np.float64)
    y, indices = F.max_pool2d_forward(x, 2)
    assert y.shape == indices.shape == (0, 3, 3, 3) and indices.dtype == np.int64
    assert F.max_pool2d_backward(y, indices, (6, 6)).shape == (0, 3, 6, 6)
    assert F.avg_pool2d_forward(x, 3).shape == (0, 3, 2, 2)
    assert F.avg_pool2d_backward(np.zeros((0, 3, 2, 2)), (6, 6), 3).shape == (0, 3, 6, 6)
