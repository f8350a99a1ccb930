"""Bad input to nn modules and parameters gets a clear error and changes nothing.

nn modules convert their INPUTS explicitly into new arrays (and leave the caller's untouched);
parameters are never converted; Module.load_state_dict checks everything before it writes anything.
"""
import math
import re

import numpy as np
import pytest

import fuseprop
from fuseprop import nn

from helpers import (assert_params_unchanged, negative_stride, params_snapshot, randn, small_mlp, strided, transposed,
                     unaligned)


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
    "unaligned": (lambda: unaligned(np.zeros((2, 3), np.float32)), ValueError,
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
    snap = params_snapshot(model)
    with pytest.raises(exc, match=message):
        model(x)
    assert_params_unchanged(model, snap)


_CONVERTIBLE = {
    "strided": lambda x: strided(x),
    "transposed": lambda x: transposed(x),
    "negative_stride": lambda x: negative_stride(x),
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
        model = small_mlp() if fused else nn.Linear(3, 2)
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
    x = unaligned(x32)
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
    pytest.param(lambda: small_mlp(), id="Sequential"),
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
    m(randn(np.random.default_rng(0), 4, 3))
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
    model = small_mlp()
    snap = params_snapshot(model)
    state = _shifted_state(model)
    state[key] = np.zeros(state[key].shape + (1,), np.float32)
    with pytest.raises(ValueError, match=rf"^state_dict\['{re.escape(key)}'\] has shape .*the parameter has"):
        model.load_state_dict(state)
    assert_params_unchanged(model, snap)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64, np.bool_, np.complex64, object])
def test_load_state_dict_another_dtype_changes_no_parameter(dtype):
    # Refused, not cast: the message names the key, the dtype given and the parameter's.
    model = small_mlp()
    snap = params_snapshot(model)
    state = _shifted_state(model)
    state["2.bias"] = state["2.bias"].astype(dtype)
    want = rf"^state_dict\['2\.bias'\] has dtype {np.dtype(dtype)}, the parameter has dtype float32: load_state_dict does not cast"
    with pytest.raises(TypeError, match=want):
        model.load_state_dict(state)
    assert_params_unchanged(model, snap)


def test_load_state_dict_float32_values_into_a_float64_model_change_no_parameter():
    model = small_mlp(np.float64)
    snap = params_snapshot(model)
    state = {k: v.astype(np.float32) for k, v in _shifted_state(model).items()}
    with pytest.raises(TypeError, match=r"^state_dict\['0\.weight'\] has dtype float32, the parameter has dtype float64"):
        model.load_state_dict(state)
    assert_params_unchanged(model, snap)


@pytest.mark.parametrize("bad", [[[True, False]], [["a", "b"]]], ids=["bools", "strings"])
def test_load_state_dict_list_of_non_numbers_changes_no_parameter(bad):
    model = small_mlp()
    snap = params_snapshot(model)
    state = _shifted_state(model)
    state["2.bias"] = bad
    with pytest.raises(TypeError, match=r"^state_dict\['2\.bias'\] must hold real numbers"):
        model.load_state_dict(state)
    assert_params_unchanged(model, snap)


def test_load_state_dict_list_too_large_for_float32_changes_no_parameter():
    model = small_mlp()
    snap = params_snapshot(model)
    state = _shifted_state(model)
    state["2.bias"] = [1e300] * len(state["2.bias"])
    with pytest.raises(ValueError, match=r"^state_dict\['2\.bias'\] holds values too large for the parameter's dtype float32"):
        model.load_state_dict(state)
    assert_params_unchanged(model, snap)


def test_load_state_dict_missing_key_is_a_key_error():
    model = small_mlp()
    snap = params_snapshot(model)
    state = _shifted_state(model)
    del state["2.bias"]
    with pytest.raises(KeyError, match=r"missing keys \['2\.bias'\], unexpected keys \[\]"):
        model.load_state_dict(state)
    assert_params_unchanged(model, snap)


def test_load_state_dict_unexpected_key_is_a_key_error():
    model = small_mlp()
    snap = params_snapshot(model)
    state = _shifted_state(model)
    state["3.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(KeyError, match=r"missing keys \[\], unexpected keys \['3\.weight'\]"):
        model.load_state_dict(state)
    assert_params_unchanged(model, snap)


def test_load_state_dict_writes_into_the_existing_arrays():
    # In place: the optimizer's references to p.data stay valid after a load.
    model = small_mlp()
    arrays = [p.data for p in model.parameters()]
    state = _shifted_state(model)
    model.load_state_dict(state)
    for p, a, (k, v) in zip(model.parameters(), arrays, state.items()):
        assert p.data is a and p.data.dtype == np.float32
        np.testing.assert_array_equal(p.data, v)
