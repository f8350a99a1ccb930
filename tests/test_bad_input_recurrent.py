"""Bad input to recurrent_forward / recurrent_backward of fuseprop.functional gets a clear error and changes nothing.

Every float array argument in every wrong form (type, dtype, layout, alignment), wrong ndim and shapes, sizes
that do not match between x, the weights, the states and the gradients, no time step, no hidden unit, cells and
nonlinearities that do not exist or do not go together, a cell state for a cell without one, one bias without
the other, bad bptt_steps, and a saved record that is not the one of y's forward (another forward's, the
reference's, or y changed in place since): each raises TypeError / ValueError with the message below, and the
arrays are compared with copies taken before the call. An empty batch is not an error: it returns empty results.
"""
import numpy as np
import pytest

from fuseprop import functional as F
from fuseprop import reference

from helpers import (array_snapshot, assert_arrays_unchanged, assert_refused_writing_nothing, bad_form_cases,
                     check_bad_form, randn)

B, T, I, H = 2, 3, 4, 5


# Good float32 arguments for each op, x first (it sets the dtype): lstm and gru layers over x (2, 3, 4) with 5 units.
def _forward_args(r, cell="lstm"):
    g = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    return dict(cell=cell, x=randn(r, B, T, I), h0=randn(r, B, H), c0=randn(r, B, H) if cell == "lstm" else None,
                w_ih=randn(r, g * H, I), w_hh=randn(r, g * H, H), b_ih=randn(r, g * H), b_hh=randn(r, g * H))


def _backward_args(r, cell="lstm"):
    a = _forward_args(r, cell)
    y, _, _, saved = F.recurrent_forward(**a)
    return dict(cell=cell, x=a["x"], grad_y=randn(r, B, T, H), grad_h_n=randn(r, B, H),
                grad_c_n=randn(r, B, H) if cell == "lstm" else None, h0=a["h0"], c0=a["c0"], w_ih=a["w_ih"],
                w_hh=a["w_hh"], b_hh=a["b_hh"], y=y, saved=saved, bptt_steps=2)


_OPS = {
    "recurrent_forward": (F.recurrent_forward, _forward_args),
    "recurrent_backward": (F.recurrent_backward, _backward_args),
    "recurrent_forward_gru": (F.recurrent_forward, lambda r: _forward_args(r, "gru")),
    "recurrent_backward_gru": (F.recurrent_backward, lambda r: _backward_args(r, "gru")),
}


def _call(op, **override):
    fn, build = _OPS[op]
    args = build(np.random.default_rng(0))
    args.update(override)
    return fn, args


def _refused(op, exc, message, **override):
    fn, args = _call(op, **override)
    assert_refused_writing_nothing(fn, args, exc, message)


@pytest.mark.parametrize("op", list(_OPS))
def test_good_arguments_are_accepted(op):
    fn, args = _call(op)
    fn(**args)


_FORMS = ("list", "int64", "float16", "big_endian_f4", "mixed_float64", "strided", "transposed", "negative_stride",
          "unaligned")


@pytest.mark.parametrize("op, name, form", list(bad_form_cases(["recurrent_forward", "recurrent_backward"], _call,
                                                               _FORMS)))
def test_rejects_bad_array_and_writes_nothing(op, name, form):
    check_bad_form(_call, op, name, form)


@pytest.mark.parametrize("op, name, shape, ndim", [
    pytest.param("recurrent_forward", "x", (B, T * I), 3, id="forward-x-2d"),
    pytest.param("recurrent_forward", "x", (1, B, T, I), 3, id="forward-x-4d"),
    pytest.param("recurrent_forward", "w_hh", (4 * H * H,), 2, id="forward-w_hh-1d"),
    pytest.param("recurrent_forward", "w_ih", (4 * H, I, 1), 2, id="forward-w_ih-3d"),
    pytest.param("recurrent_backward", "x", (B * T, I), 3, id="backward-x-2d"),
])
def test_rejects_wrong_ndim(op, name, shape, ndim):
    _refused(op, ValueError, rf"^{name} must be {ndim}-D, got a {len(shape)}-D array", **{name: np.zeros(shape, np.float32)})


@pytest.mark.parametrize("op, name, shape, message", [
    pytest.param("recurrent_forward", "w_hh", (4 * H - 1, H),
                 r"^w_hh must have shape \(4\*H, H\) with H >= 1 for cell 'lstm' \(4 gates per hidden unit\), got \(19, 5\)$",
                 id="forward-w_hh-gates"),
    pytest.param("recurrent_forward_gru", "w_hh", (4 * H, H),
                 r"^w_hh must have shape \(3\*H, H\) with H >= 1 for cell 'gru' \(3 gates per hidden unit\), got \(20, 5\)$",
                 id="forward-gru-w_hh-gates"),
    pytest.param("recurrent_forward", "w_ih", (4 * H, I + 1),
                 r"^w_ih must have shape \(20, 4\) \(4\*H rows as w_hh \(H = 5\), x's 4 inputs as columns\), got \(20, 5\)$",
                 id="forward-w_ih-inputs"),
    pytest.param("recurrent_forward", "w_ih", (3 * H, I), r"^w_ih must have shape \(20, 4\) ", id="forward-w_ih-rows"),
    pytest.param("recurrent_forward", "h0", (B + 1, H), r"^h0 must have shape \(2, 5\), got \(3, 5\)$", id="forward-h0-batch"),
    pytest.param("recurrent_forward", "h0", (B, H, 1), r"^h0 must have shape \(2, 5\), got \(2, 5, 1\)$", id="forward-h0-3d"),
    pytest.param("recurrent_forward", "c0", (B, H + 1), r"^c0 must have shape \(2, 5\), got \(2, 6\)$", id="forward-c0"),
    pytest.param("recurrent_forward", "b_ih", (4 * H + 1,), r"^b_ih must have shape \(20,\), got \(21,\)$", id="forward-b_ih"),
    pytest.param("recurrent_forward", "b_hh", (1, 4 * H), r"^b_hh must have shape \(20,\), got \(1, 20\)$", id="forward-b_hh-2d"),
    pytest.param("recurrent_backward", "grad_y", (B, T, H + 1), r"^grad_y must have shape \(2, 3, 5\), got \(2, 3, 6\)$",
                 id="backward-grad_y"),
    pytest.param("recurrent_backward", "grad_h_n", (B, 1), r"^grad_h_n must have shape \(2, 5\), got \(2, 1\)$",
                 id="backward-grad_h_n"),
    pytest.param("recurrent_backward", "grad_c_n", (H,), r"^grad_c_n must have shape \(2, 5\), got \(5,\)$",
                 id="backward-grad_c_n"),
    pytest.param("recurrent_backward", "y", (B, T + 1, H), r"^y must have shape \(2, 3, 5\), got \(2, 4, 5\)$", id="backward-y"),
    pytest.param("recurrent_backward", "b_hh", (4 * H - 1,), r"^b_hh must have shape \(20,\), got \(19,\)$", id="backward-b_hh"),
    pytest.param("recurrent_backward", "saved", (5,),
                 r"^saved must be recurrent_forward's record for cell 'lstm', x of shape \(2, 3, 4\) and H = 5: shape "
                 r"\(230,\), got \(5,\)$", id="backward-saved-length"),
    pytest.param("recurrent_backward", "saved", (23, 10), r"^saved must be recurrent_forward's record .*got \(23, 10\)$",
                 id="backward-saved-2d"),
])
def test_rejects_mismatched_shape_and_writes_nothing(op, name, shape, message):
    _refused(op, ValueError, message, **{name: np.ones(shape, np.float32)})


def test_no_time_step_is_an_error_naming_x():
    _refused("recurrent_forward", ValueError,
             r"^x must have at least one time step \(B, T, I\) with T >= 1: there is no last step to return; got shape "
             r"\(2, 0, 4\)$", x=np.zeros((B, 0, I), np.float32))


def test_no_hidden_unit_is_an_error():
    _refused("recurrent_forward", ValueError, r"^w_hh must have shape \(4\*H, H\) with H >= 1 .*got \(0, 0\)$",
             w_hh=np.zeros((0, 0), np.float32), w_ih=np.zeros((0, I), np.float32))


@pytest.mark.parametrize("op", ["recurrent_forward", "recurrent_backward"])
@pytest.mark.parametrize("cell, exc, message", [
    ("LSTM", ValueError, r"^cell must be 'rnn', 'lstm' or 'gru', got 'LSTM'$"),
    ("", ValueError, r"^cell must be 'rnn', 'lstm' or 'gru', got ''$"),
    (4, TypeError, r"^cell must be a str \('rnn', 'lstm' or 'gru'\), got int$"),
    (None, TypeError, r"^cell must be a str \('rnn', 'lstm' or 'gru'\), got NoneType$"),
])
def test_unknown_cell_is_an_error(op, cell, exc, message):
    _refused(op, exc, message, cell=cell)


@pytest.mark.parametrize("op", ["recurrent_forward", "recurrent_backward"])
@pytest.mark.parametrize("nonlinearity, exc, message", [
    ("sigmoid", ValueError, r"^nonlinearity must be 'tanh' or 'relu', got 'sigmoid'$"),
    (b"tanh", TypeError, r"^nonlinearity must be a str \('tanh' or 'relu'\), got bytes$"),
    ("relu", ValueError, r"^nonlinearity 'relu' is for cell 'rnn' only: cell 'lstm' has fixed gate nonlinearities$"),
])
def test_bad_nonlinearity_is_an_error(op, nonlinearity, exc, message):
    _refused(op, exc, message, nonlinearity=nonlinearity)


@pytest.mark.parametrize("op, name", [("recurrent_forward_gru", "c0"), ("recurrent_backward_gru", "c0"),
                                      ("recurrent_backward_gru", "grad_c_n")])
def test_a_cell_state_for_a_cell_without_one_is_an_error(op, name):
    _refused(op, ValueError, rf"^{name} is for cell 'lstm' only \(the cell state\): it must be None for cell 'gru'$",
             **{name: np.zeros((B, H), np.float32)})


@pytest.mark.parametrize("given, missing", [("b_ih", "b_hh"), ("b_hh", "b_ih")])
def test_one_bias_without_the_other_is_an_error(given, missing):
    got = "an array and None" if given == "b_ih" else "None and an array"
    _refused("recurrent_forward", ValueError, rf"^b_ih and b_hh must both be arrays or both be None; got {got}$",
             **{missing: None})


@pytest.mark.parametrize("value, exc, message", [
    (-1, ValueError, r"^bptt_steps must be >= 0 \(0: full backpropagation through time\), got -1$"),
    (1.5, TypeError, r"^bptt_steps must be an int \(0: full backpropagation through time\), got 1\.5$"),
    (True, TypeError, r"^bptt_steps must be an int \(0: full backpropagation through time\), got True$"),
    (None, TypeError, r"^bptt_steps must be an int \(0: full backpropagation through time\), got None$"),
])
def test_bad_bptt_steps_is_an_error(value, exc, message):
    _refused("recurrent_backward", exc, message, bptt_steps=value)


def test_bptt_steps_takes_numpy_integers():
    fn, args = _call("recurrent_backward", bptt_steps=np.int64(2))
    expected = F.recurrent_backward(**dict(args, bptt_steps=2))
    for got, want in zip(fn(**args), expected):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# the saved record: the one of y's forward, and nothing else


_STALE = "^saved is not the record of the forward that returned y \\(their last steps differ\\)"


def test_saved_of_another_forward_is_an_error():
    fn, args = _call("recurrent_backward")
    other = dict(_forward_args(np.random.default_rng(1)), w_ih=args["w_ih"], w_hh=args["w_hh"])
    _, _, _, other_saved = F.recurrent_forward(**other)
    _refused("recurrent_backward", ValueError, _STALE, saved=other_saved)


def test_y_changed_in_place_since_its_forward_is_an_error():
    fn, args = _call("recurrent_backward")
    args["y"][1, -1, 3] += 1.0
    snap = array_snapshot(args)
    with pytest.raises(ValueError, match=_STALE):
        fn(**args)
    assert_arrays_unchanged(args, snap)


def test_the_references_saved_record_is_refused():
    fn, args = _call("recurrent_backward")
    _, _, _, saved = reference.recurrent_forward("lstm", args["x"], args["h0"], args["c0"], args["w_ih"], args["w_hh"],
                                                 np.zeros(4 * H, np.float32), args["b_hh"])
    _refused("recurrent_backward", TypeError, r"^saved must be a numpy\.ndarray, got tuple$", saved=saved)


def test_saved_of_another_cell_is_an_error():
    fn, args = _call("recurrent_backward_gru")
    _, _, _, lstm_saved = F.recurrent_forward(**_forward_args(np.random.default_rng(0)))
    _refused("recurrent_backward_gru", ValueError, r"^saved must be recurrent_forward's record for cell 'gru'",
             saved=lstm_saved)


# ---------------------------------------------------------------------------------------------
# what is not an error


def test_gradients_may_be_none():
    fn, args = _call("recurrent_backward", grad_y=None, grad_h_n=None, grad_c_n=None)
    for grad in fn(**args):
        np.testing.assert_array_equal(grad, np.zeros_like(grad))  # nothing reaches anything


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_an_empty_batch_gives_empty_results_and_zero_weight_gradients(cell):
    r = np.random.default_rng(2)
    a = dict(_forward_args(r, cell), x=np.zeros((0, T, I), np.float32), h0=None, c0=None)
    y, h_n, c_n, saved = F.recurrent_forward(**a)
    assert y.shape == (0, T, H) and h_n.shape == (0, H) and y.dtype == np.float32
    assert (c_n.shape == (0, H)) if cell == "lstm" else c_n is None
    grads = F.recurrent_backward(cell, np.zeros((0, T, H), np.float32), None, None, a["x"], None, None, a["w_ih"],
                                 a["w_hh"], a["b_hh"], y, saved)
    grad_x, grad_h0, grad_c0, *weights = grads
    assert grad_x.shape == (0, T, I) and grad_h0.shape == (0, H)
    assert (grad_c0.shape == (0, H)) if cell == "lstm" else grad_c0 is None
    for grad, like in zip(weights, (a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])):
        assert grad.shape == like.shape
        np.testing.assert_array_equal(grad, np.zeros_like(like))


def test_results_are_new_arrays():
    fn, args = _call("recurrent_backward")
    out = fn(**args)
    inputs = [v for v in args.values() if isinstance(v, np.ndarray)]
    for grad in out:
        assert grad.flags.owndata and grad.flags.writeable
        assert not any(np.shares_memory(grad, v) for v in inputs)
