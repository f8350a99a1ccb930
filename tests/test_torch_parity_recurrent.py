"""The recurrent layers against PyTorch's autograd (skipped when torch is not installed): torch.nn.RNN (tanh and
relu), LSTM and GRU, batch_first, with fuseprop's weights copied in. The outputs, the final states, every
parameter gradient, grad_x and the initial states' gradients, in float64 and float32; truncated backpropagation
through time against a torch loop over chunks that detaches the carried state."""
from __future__ import annotations

import numpy as np
import pytest

from fuseprop import functional as F

torch = pytest.importorskip("torch")

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
IDS = [f"{c}-{n}" for c, n in CELLS]


def _torch_layer(cell, nonlinearity, I, H, bias, w_ih, w_hh, b_ih, b_hh, dtype):
    if cell == "rnn":
        layer = torch.nn.RNN(I, H, nonlinearity=nonlinearity, bias=bias, batch_first=True, dtype=dtype)
    else:
        layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H, bias=bias, batch_first=True, dtype=dtype)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(torch.from_numpy(w_ih))
        layer.weight_hh_l0.copy_(torch.from_numpy(w_hh))
        if bias:
            layer.bias_ih_l0.copy_(torch.from_numpy(b_ih))
            layer.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    return layer


def _case(cell, B, T, I, H, dtype, seed, bias=True, states=True):
    rng = np.random.default_rng(seed)
    g = GATES[cell]
    draw = lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(dtype)  # noqa: E731
    a = dict(x=draw(B, T, I), h0=draw(B, H) if states else None, c0=draw(B, H) if states and cell == "lstm" else None,
             w_ih=draw(g * H, I, scale=H ** -0.5), w_hh=draw(g * H, H, scale=H ** -0.5),
             b_ih=draw(g * H, scale=0.5) if bias else None, b_hh=draw(g * H, scale=0.5) if bias else None)
    grads = dict(gy=draw(B, T, H), ghn=draw(B, H), gcn=draw(B, H) if cell == "lstm" else None)
    return a, grads


def _torch_run(cell, nonlinearity, a, grads, dtype, bias, bptt_steps=0):
    """Torch's outputs and gradients; bptt_steps > 0: a loop over chunks that detaches the carried state."""
    B, T, I = a["x"].shape
    H = a["w_hh"].shape[1]
    layer = _torch_layer(cell, nonlinearity, I, H, bias, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                         getattr(torch, np.dtype(dtype).name))
    x = torch.from_numpy(a["x"]).requires_grad_()
    zeros = np.zeros((B, H), dtype)
    h0 = torch.from_numpy((a["h0"] if a["h0"] is not None else zeros)[None].copy()).requires_grad_()
    c0 = torch.from_numpy((a["c0"] if a["c0"] is not None else zeros)[None].copy()).requires_grad_()
    state = (h0, c0) if cell == "lstm" else h0
    k = bptt_steps or T
    ys = []
    for start in range(0, T, k):
        if start > 0:
            state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
        y, state = layer(x[:, start:start + k], state)
        ys.append(y)
    y = torch.cat(ys, dim=1)
    h_n, c_n = state if cell == "lstm" else (state, None)
    loss = (y * torch.from_numpy(grads["gy"])).sum() + (h_n[0] * torch.from_numpy(grads["ghn"])).sum()
    if cell == "lstm":
        loss = loss + (c_n[0] * torch.from_numpy(grads["gcn"])).sum()
    loss.backward()
    out = dict(y=y, h_n=h_n[0], c_n=None if c_n is None else c_n[0], grad_x=x.grad, grad_h0=h0.grad[0],
               grad_c0=c0.grad[0] if cell == "lstm" else None, grad_w_ih=layer.weight_ih_l0.grad,
               grad_w_hh=layer.weight_hh_l0.grad, grad_b_ih=layer.bias_ih_l0.grad if bias else None,
               grad_b_hh=layer.bias_hh_l0.grad if bias else None)
    return {k: None if v is None else v.detach().numpy() for k, v in out.items()}


def _ours(cell, nonlinearity, a, grads, bptt_steps=0):
    y, h_n, c_n, saved = F.recurrent_forward(cell, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"],
                                             a["b_hh"], nonlinearity)
    names = ("grad_x", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh")
    back = F.recurrent_backward(cell, grads["gy"], grads["ghn"], grads["gcn"], a["x"], a["h0"], a["c0"], a["w_ih"],
                                a["w_hh"], a["b_hh"], y, saved, nonlinearity, bptt_steps)
    return dict(y=y, h_n=h_n, c_n=c_n, **dict(zip(names, back)))


def _compare(ours, theirs, dtype, rtol, atol):
    assert ours.keys() == theirs.keys()
    for name, want in theirs.items():
        got = ours[name]
        if want is None:
            assert got is None, name
            continue
        assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("bias, states", [(True, True), (False, False)], ids=["bias-states", "plain"])
@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=IDS)
def test_matches_torch_in_float64(cell, nonlinearity, bias, states):
    a, grads = _case(cell, 5, 7, 6, 11, np.float64, seed=len(cell), bias=bias, states=states)
    _compare(_ours(cell, nonlinearity, a, grads), _torch_run(cell, nonlinearity, a, grads, np.float64, bias),
             np.float64, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=IDS)
def test_matches_torch_in_float32(cell, nonlinearity):
    # two strips of rows (B > 12), hidden units not a multiple of the vector width
    a, grads = _case(cell, 19, 9, 10, 37, np.float32, seed=3)
    _compare(_ours(cell, nonlinearity, a, grads), _torch_run(cell, nonlinearity, a, grads, np.float32, True),
             np.float32, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("k", [1, 3, 4, 10])
@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=IDS)
def test_truncated_backpropagation_matches_a_torch_loop_that_detaches(cell, nonlinearity, k):
    a, grads = _case(cell, 4, 10, 3, 5, np.float64, seed=k)
    _compare(_ours(cell, nonlinearity, a, grads, bptt_steps=k),
             _torch_run(cell, nonlinearity, a, grads, np.float64, True, bptt_steps=k), np.float64, rtol=1e-10,
             atol=1e-12)


def test_truncated_backpropagation_float32_matches_torch():
    a, grads = _case("lstm", 16, 12, 6, 20, np.float32, seed=9)
    _compare(_ours("lstm", "tanh", a, grads, bptt_steps=5),
             _torch_run("lstm", "tanh", a, grads, np.float32, True, bptt_steps=5), np.float32, rtol=1e-4, atol=2e-5)
