"""RNN, LSTM and GRU as modules: shaped like torch.nn's (state-dict keys, shapes, gate order), the same
outputs, final states and gradients as torch.nn's autograd in float64 (stacked layers, both layouts, with
and without biases and initial states), truncated BPTT as a loop that detaches the state, training in
Sequential / train_step / fit with clipping, checkpoints, the torch and ONNX bridges, the gradient that
reaches each time step, and bad input."""
from __future__ import annotations

import re

import numpy as np
import pytest

import fuseprop
from fuseprop import checkpoint, datasets, diagnostics, losses, nn, optim

from helpers import all_pairs, assert_trains_as_torch

torch = pytest.importorskip("torch")
import fuseprop.torch as ft  # noqa: E402  (needs torch)

CELLS = {"rnn": nn.RNN, "rnn-relu": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k), "lstm": nn.LSTM,
         "gru": nn.GRU}


def randn(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def torch_twin(layer):
    """torch's own layer (not fuseprop.torch's subclass) with layer's weights."""
    kind = {nn.RNN: torch.nn.RNN, nn.LSTM: torch.nn.LSTM, nn.GRU: torch.nn.GRU}[type(layer)]
    kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first, dtype=torch.float64)
    if type(layer) is nn.RNN:
        kwargs["nonlinearity"] = layer.nonlinearity
    twin = kind(layer.input_size, layer.hidden_size, **kwargs)
    twin.load_state_dict(ft.state_dict_to_torch(layer))
    return twin


def test_parameters_are_torch_s_names_shapes_and_order():
    for ours, theirs, gates in ((nn.RNN(3, 5, 2), torch.nn.RNN(3, 5, 2), 1), (nn.LSTM(3, 5, 2), torch.nn.LSTM(3, 5, 2), 4),
                                (nn.GRU(3, 5, 2, bias=False), torch.nn.GRU(3, 5, 2, bias=False), 3)):
        mine, want = ours.state_dict(), theirs.state_dict()
        assert list(mine) == list(want)
        assert [v.shape for v in mine.values()] == [tuple(v.shape) for v in want.values()]
        assert mine["weight_ih_l0"].shape == (gates * 5, 3)
        bound = 1 / np.sqrt(5)  # torch's initialisation: uniform in +-1/sqrt(hidden_size)
        assert all(np.abs(v).max() <= bound for v in mine.values())
    layer = nn.LSTM(4, 6)
    assert layer.batch_first and not layer.return_sequences  # fuseprop's documented defaults


CONFIGS = list(all_pairs({"cell": list(CELLS), "num_layers": [1, 2], "batch_first": [True, False],
                          "return_sequences": [True, False], "bias": [True, False], "state": [False, True]}))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_forward_and_backward_match_torch_autograd(config):
    fuseprop.manual_seed(1)
    B, T, I, H, L = 3, 5, 4, 6, config["num_layers"]
    layer = CELLS[config["cell"]](I, H, L, bias=config["bias"], batch_first=config["batch_first"],
                                  return_sequences=config["return_sequences"], dtype=np.float64)
    twin = torch_twin(layer)
    x = randn(B, T, I, seed=2) if config["batch_first"] else randn(T, B, I, seed=2)
    lstm = config["cell"] == "lstm"
    hx = None
    if config["state"]:
        hx = (randn(L, B, H, seed=3), randn(L, B, H, seed=4)) if lstm else randn(L, B, H, seed=3)
    out, state = layer.forward_with_state(x, hx)
    tx = torch.from_numpy(x).requires_grad_()
    thx = None if hx is None else (tuple(torch.from_numpy(h).requires_grad_() for h in hx) if lstm
                                   else torch.from_numpy(hx).requires_grad_())
    t_out, t_state = twin(tx, thx)
    want = t_out if config["return_sequences"] else (t_out[:, -1] if config["batch_first"] else t_out[-1])
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-12, atol=1e-13)
    for mine, theirs in zip(state if lstm else (state,), t_state if lstm else (t_state,)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-12, atol=1e-13)
    g = randn(*out.shape, seed=5)
    grad_x = layer.backward(g)
    want.backward(torch.from_numpy(g))
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, dict(twin.named_parameters())[name].grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    if hx is not None:
        got = (layer.grad_h0, layer.grad_c0) if lstm else (layer.grad_h0,)
        for mine, theirs in zip(got, thx if lstm else (thx,)):
            np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_truncated_bptt_is_a_torch_loop_that_detaches_the_state_every_k_steps(cell, k):
    B, T, I, H = 2, 7, 3, 4
    layer = CELLS[cell](I, H, 2, return_sequences=True, bptt_steps=k, dtype=np.float64)
    twin = torch_twin(layer)
    x, g = randn(B, T, I, seed=1), randn(B, T, H, seed=2)
    layer(x)
    grad_x = layer.backward(g)
    tx = torch.from_numpy(x).requires_grad_()
    state, outs = None, []
    for t0 in range(0, T, k):  # chunks of k steps; the carried state is detached between them
        if state is not None:
            state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
        out, state = twin(tx[:, t0:t0 + k], state)
        outs.append(out)
    torch.cat(outs, dim=1).backward(torch.from_numpy(g))
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, dict(twin.named_parameters())[name].grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def row_sequences(n=192, seed=0, T=8, I=6):
    """A learnable sequence task: the class is the time step at which a bright value appears."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(scale=0.5, size=(n, T, I)).astype(np.float32)
    x[np.arange(n), 1 + 2 * y, :] += 2.0
    return x, y


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_sequence_classifier_trains_step_by_step_as_torch_does(cell):
    fuseprop.manual_seed(0)
    model = nn.Sequential(CELLS[cell](6, 8, dtype=np.float64), nn.Linear(8, 3, dtype=np.float64))
    twin = ft.to_torch(model)
    opt = optim.Adam(model.parameters(), lr=0.01)
    topt = torch.optim.Adam(twin.parameters(), lr=0.01)
    x, y = row_sequences()
    assert_trains_as_torch(model, twin, opt, topt, [(x[i:i + 32].astype(np.float64), y[i:i + 32]) for i in (0, 32, 64)])


def test_fit_learns_with_clipping_and_is_the_same_whatever_the_thread_count():
    x, y = row_sequences(240)
    results, threads_before = [], fuseprop.get_num_threads()
    try:
        for threads in (1, 2):
            fuseprop.set_num_threads(threads)
            fuseprop.manual_seed(0)
            model = nn.Sequential(nn.LSTM(6, 16), nn.Linear(16, 3))
            history = model.fit(x, y, optimizer=optim.Adam(model.parameters(), lr=0.02), epochs=8, batch_size=32,
                                verbose=0, seed=0, clip_grad_norm=1.0, grad_norm_history=True)
            results.append((history.history["loss"], model.state_dict()))
    finally:
        fuseprop.set_num_threads(threads_before)
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1].values(), results[1][1].values()):
        np.testing.assert_array_equal(a, b)
    assert results[0][0][-1] < 0.5 * results[0][0][0]
    assert model.evaluate(x, y)["accuracy"] > 0.9
    assert set(history.grad_norms) == {"0", "1"}  # the layers' gradient norms, the LSTM's included


def test_fit_clips_by_value_as_torch_does():
    x, y = row_sequences(32)
    fuseprop.manual_seed(0)
    model = nn.Sequential(nn.GRU(6, 8, dtype=np.float64), nn.Linear(8, 3, dtype=np.float64))
    twin = ft.to_torch(model)
    model.fit(x.astype(np.float64), y, optimizer=optim.SGD(model.parameters(), lr=0.5), epochs=1, batch_size=32,
              shuffle=False, verbose=0, clip_grad_value=0.01)
    topt = torch.optim.SGD(twin.parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(x.astype(np.float64))), torch.from_numpy(y)).backward()
    torch.nn.utils.clip_grad_value_(twin.parameters(), 0.01)
    topt.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_the_gradient_through_time_vanishes_or_explodes_as_the_weights_say():
    """A tanh RNN with small recurrent weights loses the gradient geometrically on its way back to the first
    step; a ReLU RNN with large ones multiplies it."""
    x, y = row_sequences(16, T=30)
    loss = losses.CrossEntropyLoss()
    for nonlinearity, scale, vanishes in (("tanh", 0.1, True), ("relu", 1.5, False)):
        fuseprop.manual_seed(0)
        rnn = nn.RNN(6, 8, nonlinearity=nonlinearity, dtype=np.float64)
        rnn.weight_hh_l0.data[:] = scale * np.eye(8) + 0.01 * randn(8, 8, seed=1)
        model = nn.Sequential(rnn, nn.Linear(8, 3, dtype=np.float64))
        norms = diagnostics.gradient_through_time(model, x.astype(np.float64), y, loss)
        assert norms.shape == (30,) and np.all(np.isfinite(norms))
        if vanishes:
            assert norms[0] < 1e-12 * norms[-1]
        else:
            assert norms[0] > 1e3 * norms[-1]
        assert all(not p.grad.any() for p in model.parameters())  # the parameters' gradients are left alone


def test_checkpoint_round_trip(tmp_path):
    model = nn.Sequential(nn.LSTM(4, 5, 2), nn.Linear(5, 2))
    path = tmp_path / f"m.{checkpoint.default_format()}"
    checkpoint.save_checkpoint(path, model)
    fuseprop.manual_seed(9)
    restored = nn.Sequential(nn.LSTM(4, 5, 2), nn.Linear(5, 2))
    checkpoint.load_checkpoint(path, restored)
    x = randn(3, 6, 4, dtype=np.float32)
    np.testing.assert_array_equal(model(x), restored(x))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_torch_round_trip_and_torch_s_own_layers(cell):
    model = nn.Sequential(CELLS[cell](4, 5, 2, dtype=np.float64), nn.Linear(5, 2, dtype=np.float64))
    twin = ft.to_torch(model)
    x = randn(3, 6, 4)
    with torch.no_grad():
        np.testing.assert_allclose(twin(torch.from_numpy(x)).numpy(), model(x), rtol=1e-12, atol=1e-13)
    back = ft.from_torch(twin)
    assert not back[0].return_sequences
    np.testing.assert_array_equal(back(x), model(x))
    theirs = ft.from_torch(torch_twin(model[0]))  # torch's own layer returns its whole output
    assert theirs.return_sequences
    np.testing.assert_allclose(theirs(x)[:, -1], model[0](x), rtol=1e-12)
    with pytest.raises(ValueError, match="one-directional"):
        ft.from_torch(torch.nn.LSTM(4, 5, bidirectional=True))


@pytest.mark.parametrize("layer", [lambda: nn.LSTM(5, 7, 2), lambda: nn.GRU(5, 7, return_sequences=True),
                                   lambda: nn.RNN(5, 7, nonlinearity="relu", batch_first=False, return_sequences=True),
                                   lambda: nn.GRU(5, 7, 2, bias=False)],
                         ids=["lstm-2-layers", "gru-sequence", "rnn-relu-time-major", "gru-no-bias"])
def test_onnx_export_runs_in_onnxruntime(layer, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from fuseprop import onnx as fo
    layer = layer()
    model = nn.Sequential(layer) if layer.return_sequences else nn.Sequential(layer, nn.Linear(7, 3))
    fo.export(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (4, 1):
        x = randn(batch, 6, 5, dtype=np.float32) if layer.batch_first else randn(6, batch, 5, dtype=np.float32)
        np.testing.assert_allclose(session.run(None, {"input": x})[0], model(x), rtol=1e-5, atol=1e-6)


BAD = {
    "2-D input": (lambda: nn.LSTM(3, 4)(np.zeros((5, 3), np.float32)), ValueError, r"^x must be 3-D, got shape \(5, 3\)"),
    "features": (lambda: nn.GRU(3, 4)(np.zeros((2, 5, 4), np.float32)), ValueError,
                 r"^x must have 3 features in its last dimension \(\(B, T, I\)\), got shape \(2, 5, 4\)"),
    "time-major features": (lambda: nn.RNN(3, 4, batch_first=False)(np.zeros((2, 5, 4), np.float32)), ValueError,
                            r"\(\(T, B, I\)\)"),
    "no time step": (lambda: nn.LSTM(3, 4)(np.zeros((2, 0, 3), np.float32)), ValueError,
                     r"^x must have at least one time step, got shape \(2, 0, 3\)"),
    "h0 shape": (lambda: nn.GRU(3, 4, 2).forward(np.zeros((2, 5, 3), np.float32), np.zeros((1, 2, 4), np.float32)),
                 ValueError, r"^hx must have shape \(num_layers, batch, hidden_size\) = \(2, 2, 4\), got \(1, 2, 4\)"),
    "lstm hx not a pair": (lambda: nn.LSTM(3, 4).forward(np.zeros((2, 5, 3), np.float32), np.zeros((1, 2, 4))),
                           TypeError, r"^hx of an LSTM must be a pair \(h0, c0\)"),
    "c0 shape": (lambda: nn.LSTM(3, 4).forward(np.zeros((2, 5, 3), np.float32),
                                               (np.zeros((1, 2, 4)), np.zeros((1, 3, 4)))),
                 ValueError, r"^c0 must have shape"),
    "hidden_size 0": (lambda: nn.LSTM(3, 0), ValueError, r"^hidden_size must be an integer >= 1, got 0$"),
    "nonlinearity": (lambda: nn.RNN(3, 4, nonlinearity="sigmoid"), ValueError, r"^nonlinearity must be 'tanh' or 'relu'"),
    "lstm has no nonlinearity": (lambda: nn.LSTM(3, 4, nonlinearity="relu"), TypeError, r"nonlinearity"),
    "bptt_steps": (lambda: nn.GRU(3, 4, bptt_steps=-1), ValueError, r"^bptt_steps must be an integer >= 0"),
    "dropout": (lambda: nn.LSTM(3, 4, 2, dropout=0.5), NotImplementedError, r"dropout between recurrent layers"),
    "bidirectional": (lambda: nn.GRU(3, 4, bidirectional=True), NotImplementedError, r"bidirectional"),
    "complex input": (lambda: nn.RNN(3, 4)(np.zeros((2, 5, 3), np.complex64)), TypeError, r"real numbers"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused(case):
    call, exc, message = BAD[case]
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.parametrize("return_sequences", [False, True])
def test_backward_checks_grad_out_and_uses_the_tape_once(return_sequences):
    layer = nn.LSTM(3, 4, return_sequences=return_sequences, dtype=np.float64)
    out = layer(randn(2, 5, 3))
    with pytest.raises(ValueError, match=re.escape(f"grad_out must have shape {out.shape}")):
        layer.backward(np.ones((2, 4, 4)))
    before = [p.grad.copy() for p in layer.parameters()]
    assert all(np.array_equal(p.grad, b) for p, b in zip(layer.parameters(), before))  # the refusal wrote nothing
    layer.backward(np.ones_like(out))  # the tape survived the refusal
    with pytest.raises(RuntimeError, match="called twice for one forward"):
        layer.backward(np.ones_like(out))


def test_cli_trains_the_lstm_on_idx_files(tmp_path, capsys):
    from fuseprop.__main__ import build_lstm, main
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240).astype(np.uint8)
    images = rng.integers(0, 60, (240, 10, 12)).astype(np.uint8)
    images[np.arange(240), 2 + 3 * labels] = 230  # a bright row whose place is the class
    paths = []
    for name, arr in (("tri", images), ("trl", labels), ("tei", images[:60]), ("tel", labels[:60])):
        datasets.write_idx(tmp_path / f"{name}.gz", arr)
        paths.append(str(tmp_path / f"{name}.gz"))
    code = main(["train", "--model", "lstm", "--hidden", "16", "--train-images", paths[0], "--train-labels", paths[1],
                 "--test-images", paths[2], "--test-labels", paths[3], "--epochs", "6", "--batch-size", "32",
                 "--lr", "0.01", "--verbose", "0", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "network lstm 10 steps x 12 -> lstm(16) last state -> 3" in out
    assert float(re.search(r"final test accuracy ([\d.]+)%", out).group(1)) > 90
    restored = build_lstm(12, 16, 3)
    extra = checkpoint.load_checkpoint(tmp_path / "out" / f"checkpoint.{checkpoint.default_format()}", restored)
    assert extra["model"] == "lstm" and extra["sizes"] == {"steps": 10, "features": 12, "hidden": 16}


def test_data_parallel_training_computes_what_one_process_computes():
    from fuseprop.distributed import DataParallel, run_local
    x, y = row_sequences(70)  # 70 = 32 + 32 + 6: the last batch's shards are uneven
    x = x.astype(np.float64)

    g = np.random.default_rng(0)
    initial = nn.Sequential(nn.GRU(6, 8, 2, dtype=np.float64, generator=g),
                            nn.Linear(8, 3, dtype=np.float64, generator=g)).state_dict()

    def train(comm=None):  # the ranks are threads: each builds its model from the same state, not the global seed
        model = nn.Sequential(nn.GRU(6, 8, 2, dtype=np.float64), nn.Linear(8, 3, dtype=np.float64))
        model.load_state_dict(initial)
        ddp = DataParallel(model, comm, timeout=20) if comm is not None else False
        model.fit(x, y, optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=2, batch_size=32,
                  verbose=0, seed=0, distributed=ddp, clip_grad_norm=1.0)
        return model.state_dict()

    alone = train()
    for state in run_local(2, train):
        for k in alone:
            np.testing.assert_allclose(state[k], alone[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_an_lstm_model_trains_inside_a_torch_model():
    model = nn.Sequential(nn.LSTM(4, 6, dtype=np.float64), nn.Linear(6, 2, dtype=np.float64))
    twin = ft.to_torch(model)
    wrapped = ft.TorchModule(model)
    x = torch.from_numpy(randn(3, 5, 4)).requires_grad_()
    x_twin = x.detach().clone().requires_grad_()
    wrapped(x).square().sum().backward()
    twin(x_twin).square().sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_twin.grad.numpy(), rtol=1e-12, atol=1e-14)
    for (name, p), q in zip(wrapped.named_parameters(), twin.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-relu"])
def test_inference_runs_a_block_of_rows_at_a_time_with_the_same_bits(cell):
    """Without a backward to follow (no_grad, predict), the layer runs 256 rows at a time so that the cells'
    record stays small; every row's values are the ones a single call gives."""
    layer = CELLS[cell](8, 16, 2, return_sequences=True)
    x = randn(600, 5, 8, dtype=np.float32)
    h0 = randn(2, 600, 16, seed=1, dtype=np.float32)
    hx = (h0, h0 / 2) if cell == "lstm" else h0
    recorded, state = layer.forward_with_state(x, hx)
    with nn.no_grad():
        blocks, block_state = layer.forward_with_state(x, hx)
        empty = layer(x[:0])
    np.testing.assert_array_equal(blocks, recorded)
    for a, b in zip(state if cell == "lstm" else (state,), block_state if cell == "lstm" else (block_state,)):
        np.testing.assert_array_equal(a, b)
    assert empty.shape == (0, 5, 16)
    model = nn.Sequential(CELLS[cell](8, 16), nn.Linear(16, 3))
    np.testing.assert_array_equal(model.predict(x), model(x))
