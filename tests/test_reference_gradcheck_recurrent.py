"""The NumPy reference of the recurrent layers (rnn with tanh and relu, lstm, gru) is the oracle for the native
kernels, so every gradient it returns is checked here against central finite differences in float64: of x, the
initial states (given, or the zeros taken for None), both weights and both biases, for a loss that reaches every
step's output and the final states. Truncated backpropagation through time is checked against finite
differences of the loss it defines: each chunk of bptt_steps steps starts from the state the forward reached
there, held constant (what a PyTorch loop that detaches the carried state differentiates)."""

import importlib.util
import pathlib

import numpy as np
import pytest


def _load(name):
    # Load by path: fuseprop/__init__.py imports the native extension; these tests must not need it.
    path = pathlib.Path(__file__).resolve().parents[1] / "python" / "fuseprop" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fuseprop_{name}_recurrent_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load("reference")
testing = _load("testing")

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
B, T, I, H = 2, 5, 3, 3


def _arrays(cell, seed, bias=True, states=True):
    """x, h0, c0, w_ih, w_hh, b_ih, b_hh and the loss's weights gy, ghn, gcn (None where absent)."""
    rng = np.random.default_rng(seed)
    g = GATES[cell]
    x = rng.standard_normal((B, T, I))
    h0 = rng.standard_normal((B, H)) if states else None
    c0 = rng.standard_normal((B, H)) if states and cell == "lstm" else None
    w_ih, w_hh = rng.standard_normal((g * H, I)) * 0.6, rng.standard_normal((g * H, H)) * 0.6
    b_ih, b_hh = (rng.standard_normal(g * H), rng.standard_normal(g * H)) if bias else (None, None)
    gy, ghn = rng.standard_normal((B, T, H)), rng.standard_normal((B, H))
    gcn = rng.standard_normal((B, H)) if cell == "lstm" else None
    return dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh), (gy, ghn, gcn)


def _loss(cell, nonlinearity, a, weights, with_grad_y=True):
    """sum(gy * y) + sum(ghn * h_n) + sum(gcn * c_n) of the reference forward on the arrays a."""
    gy, ghn, gcn = weights
    y, h_n, c_n, _ = reference.recurrent_forward(cell, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"],
                                                 a["b_hh"], nonlinearity)
    total = np.sum(ghn * h_n) + (np.sum(gy * y) if with_grad_y else 0.0)
    return total + (np.sum(gcn * c_n) if c_n is not None else 0.0)


def _grads(cell, nonlinearity, a, weights, with_grad_y=True, bptt_steps=0):
    gy, ghn, gcn = weights
    y, _, _, saved = reference.recurrent_forward(cell, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"],
                                                 a["b_hh"], nonlinearity)
    names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
    out = reference.recurrent_backward(cell, gy if with_grad_y else None, ghn, gcn, a["x"], a["h0"], a["c0"],
                                       a["w_ih"], a["w_hh"], a["b_hh"], y, saved, nonlinearity, bptt_steps)
    return dict(zip(names, out))


def _check_every_gradient(loss, a, grads, cell):
    for name, grad in grads.items():
        if a[name] is None:
            absent = name in ("b_ih", "b_hh") or (name == "c0" and cell != "lstm")
            assert (grad is None) == absent, f"{name}: {grad!r}"
            if grad is not None:  # the gradient of an initial state taken as zeros: check it at explicit zeros
                a[name] = np.zeros((B, H))
                testing.check_grad(loss, a[name], grad, name=name, rtol=1e-6, atol=1e-8)
                a[name] = None
            continue
        testing.check_grad(loss, a[name], grad, name=name, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bias, states", [(True, True), (False, False)], ids=["bias-states", "plain"])
@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_recurrent_backward_matches_finite_differences(cell, nonlinearity, bias, states):
    a, weights = _arrays(cell, seed=len(cell) + 3 * bias, bias=bias, states=states)
    grads = _grads(cell, nonlinearity, a, weights)
    _check_every_gradient(lambda: _loss(cell, nonlinearity, a, weights), a, grads, cell)


@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_only_the_final_state_has_a_gradient_when_grad_y_is_none(cell, nonlinearity):
    a, weights = _arrays(cell, seed=11)
    grads = _grads(cell, nonlinearity, a, weights, with_grad_y=False)
    _check_every_gradient(lambda: _loss(cell, nonlinearity, a, weights, with_grad_y=False), a, grads, cell)


def _truncated_loss(cell, nonlinearity, a, weights, k, starts):
    """The loss a chunked loop differentiates: chunk [c, c+k) starts from starts[c] (held constant), the first one
    from h0 (and c0); the final states come from the last chunk."""
    gy, ghn, gcn = weights
    total, state = 0.0, (a["h0"], a["c0"])
    for c in range(0, T, k):
        y, h_n, c_n, _ = reference.recurrent_forward(cell, np.ascontiguousarray(a["x"][:, c:c + k]), *state, a["w_ih"],
                                                     a["w_hh"], a["b_ih"], a["b_hh"], nonlinearity)
        total += np.sum(gy[:, c:c + k] * y)
        if c + k < T:
            state = starts[c + k]
    return total + np.sum(ghn * h_n) + (np.sum(gcn * c_n) if c_n is not None else 0.0)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_truncated_backward_matches_finite_differences_of_the_detached_loss(cell, nonlinearity, k):
    a, weights = _arrays(cell, seed=20 + k)
    _, _, _, (hs, _, cs) = reference.recurrent_forward(cell, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"],
                                                       a["b_ih"], a["b_hh"], nonlinearity)
    starts = {t: (hs[t].copy(), cs[t].copy() if cs is not None else None) for t in range(T)}  # the states reached
    grads = _grads(cell, nonlinearity, a, weights, bptt_steps=k)
    _check_every_gradient(lambda: _truncated_loss(cell, nonlinearity, a, weights, k, starts), a, grads, cell)
    if k >= T:  # one chunk: the full backpropagation
        full = _grads(cell, nonlinearity, a, weights)
        for name, grad in grads.items():
            np.testing.assert_array_equal(grad, full[name], err_msg=name)


def test_lstm_forward_matches_the_formulas_written_out():
    """One step by hand: values finite differences cannot see (gate order i, f, g, o)."""
    a, _ = _arrays("lstm", seed=5)
    y, h_n, c_n, _ = reference.recurrent_forward("lstm", a["x"][:, :1].copy(), a["h0"], a["c0"], a["w_ih"], a["w_hh"],
                                                 a["b_ih"], a["b_hh"])
    p = a["x"][:, 0] @ a["w_ih"].T + a["b_ih"] + a["h0"] @ a["w_hh"].T + a["b_hh"]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = sig(p[:, :H]), sig(p[:, H:2 * H]), np.tanh(p[:, 2 * H:3 * H]), sig(p[:, 3 * H:])
    c = f * a["c0"] + i * g
    np.testing.assert_allclose(c_n, c, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h_n, o * np.tanh(c), rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(y[:, 0], h_n)


def test_gru_forward_matches_the_formulas_written_out():
    """One step by hand (gate order r, z, n; r scales W_hn h + b_hn)."""
    a, _ = _arrays("gru", seed=6)
    _, h_n, _, _ = reference.recurrent_forward("gru", a["x"][:, :1].copy(), a["h0"], None, a["w_ih"], a["w_hh"],
                                               a["b_ih"], a["b_hh"])
    gi, gh = a["x"][:, 0] @ a["w_ih"].T + a["b_ih"], a["h0"] @ a["w_hh"].T + a["b_hh"]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r, z = sig(gi[:, :H] + gh[:, :H]), sig(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    np.testing.assert_allclose(h_n, (1 - z) * n + z * a["h0"], rtol=1e-14, atol=1e-15)
