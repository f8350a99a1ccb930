"""The recurrent layers give the same bits at any thread count: threads take whole strips of batch rows, a row's
values never depend on which thread computes them, and the weight gradients are summed strip by strip in groups
fixed by the batch size alone, then group by group, in order."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import functional as F

THREADS = [1, 2, 3, 4, 7]
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = fuseprop.get_num_threads()
    yield
    fuseprop.set_num_threads(threads)


# Large enough that both passes run threaded (over 2^20 multiply-adds), with 4 strips of rows (the last of 4 rows)
# and more groups than some thread counts divide evenly.
@pytest.mark.parametrize("bptt_steps", [0, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell, nonlinearity", CELLS, ids=[f"{c}-{n}" for c, n in CELLS])
def test_recurrent_layer_is_bitwise_identical_for_any_thread_count(cell, nonlinearity, dtype, bptt_steps):
    rng = np.random.default_rng(0)
    B, T, I, H = 40, 9, 9, 64
    g = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    x = rng.standard_normal((B, T, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None
    w_ih = (rng.standard_normal((g * H, I)) / np.sqrt(H)).astype(dtype)
    w_hh = (rng.standard_normal((g * H, H)) / np.sqrt(H)).astype(dtype)
    b_ih, b_hh = rng.standard_normal(g * H).astype(dtype), rng.standard_normal(g * H).astype(dtype)
    gy, ghn = rng.standard_normal((B, T, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    gcn = rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None

    results = []
    for threads in THREADS:
        fuseprop.set_num_threads(threads)
        y, h_n, c_n, saved = F.recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity)
        back = F.recurrent_backward(cell, gy, ghn, gcn, x, h0, c0, w_ih, w_hh, b_hh, y, saved, nonlinearity, bptt_steps)
        results.append([r for r in (y, h_n, c_n, saved) + back if r is not None])
    for threads, result in zip(THREADS[1:], results[1:]):
        for i, (a, b) in enumerate(zip(result, results[0])):
            assert a.tobytes() == b.tobytes(), f"output {i} differs between 1 and {threads} threads"
