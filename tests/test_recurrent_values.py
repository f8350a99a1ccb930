"""Values the finite differences and the parity cases do not reach: float32's written-out sigmoid and tanh
(recurrent_math.h) saturate to exactly 0, 1 and -1 at large pre-activations and keep small ones to full relative
accuracy, NaN goes through a cell as NumPy's functions let it through, and infinities saturate the gates as they do
in the float64 reference."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import functional as F
from fuseprop import reference

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
G = {"rnn": 1, "lstm": 4, "gru": 3}


@pytest.fixture(params=fuseprop.build_info()["kernel_levels_available"])
def level(request):
    default = fuseprop.cpu_level()
    fuseprop.set_cpu_level(request.param)
    yield request.param
    fuseprop.set_cpu_level(default)


def one_step(cell, nonlinearity, pre, dtype):
    """h after one step whose pre-activations are `pre` (B, G*H): x = pre's rows, w_ih the identity, no h0."""
    B, GH = pre.shape
    H = GH // G[cell]
    x = pre.reshape(B, 1, GH).astype(dtype)
    w_ih, w_hh = np.eye(GH, dtype=dtype), np.zeros((GH, H), dtype)
    out = [M.recurrent_forward(cell, x.astype(np.float64) if M is reference else x, None, None,
                               w_ih.astype(np.float64) if M is reference else w_ih,
                               w_hh.astype(np.float64) if M is reference else w_hh, None, None, nonlinearity)[1]
           for M in (F, reference)]
    return out[0], out[1].astype(dtype)


@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_gates_over_the_whole_float32_range_match_the_reference(cell, nonlinearity, level):
    # every gate over values from -200 to 200, dense near 0 (the polynomial branches) and past exp's range
    values = np.concatenate([np.linspace(-200, 200, 4001), np.linspace(-1, 1, 4001), np.geomspace(1e-30, 1e-3, 200),
                             -np.geomspace(1e-30, 1e-3, 200), [0.0, -0.0, 87.3, -87.3, 88.8, -88.8, 0.625, -0.625]])
    H = 8
    n = len(values) // (G[cell] * H) * G[cell] * H
    pre = np.random.default_rng(0).permutation(values)[:n].reshape(-1, G[cell] * H)
    got, want = one_step(cell, nonlinearity, pre, np.float32)
    # relative to each value's magnitude, so the tiny ones are held to float32's relative accuracy too; but gru's
    # h' = n + z (h - n), PyTorch's form, cancels where z is near 1: there only to float32's rounding of n
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=1.2e-7 if cell == "gru" else 1e-37)


@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_infinities_go_through_as_in_the_reference(cell, nonlinearity, dtype, level):
    if dtype == np.float64 and level != "generic":
        pytest.skip("float64 runs the portable kernels at every level")
    H = 3
    specials = np.array([np.nan, np.inf, -np.inf, 1.0, -2.0, 0.5])
    pre = np.stack([np.roll(np.resize(specials, G[cell] * H), k) for k in range(6)])
    with np.errstate(invalid="ignore", over="ignore"):
        got, want = one_step(cell, nonlinearity, pre, dtype)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_the_saved_record_does_not_depend_on_the_cpu_level():
    """The record's layout is a function of the shape alone: a forward at one level serves a backward at another."""
    levels = fuseprop.build_info()["kernel_levels_available"]
    rng = np.random.default_rng(1)
    B, T, I, H = 29, 4, 5, 7  # three strips, the last shorter
    x, w_ih, w_hh = (rng.standard_normal(s).astype(np.float32) for s in [(B, T, I), (4 * H, I), (4 * H, H)])
    gy = rng.standard_normal((B, T, H)).astype(np.float32)
    default = fuseprop.cpu_level()
    try:
        results = {}
        for forward_level in levels:
            fuseprop.set_cpu_level(forward_level)
            y, _, _, saved = F.recurrent_forward("lstm", x, None, None, w_ih, w_hh, None, None)
            for backward_level in levels:
                fuseprop.set_cpu_level(backward_level)
                results[forward_level, backward_level] = F.recurrent_backward("lstm", gy, None, None, x, None, None,
                                                                              w_ih, w_hh, None, y, saved)
    finally:
        fuseprop.set_cpu_level(default)
    first = results[levels[0], levels[0]]
    for key, grads in results.items():
        for got, want in zip(grads, first):
            if want is not None:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(key))
