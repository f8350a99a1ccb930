"""Batch and layer norm give the same bits at any thread count: each channel's or row's statistics are
summed on one thread in a fixed order, and threads split only channels, rows or columns."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import functional as F

THREADS = [1, 2, 3, 4, 7]


@pytest.fixture(autouse=True)
def restore_threads():
    threads = fuseprop.get_num_threads()
    yield
    fuseprop.set_num_threads(threads)


def _same_at_every_thread_count(compute):
    results = []
    for t in THREADS:
        fuseprop.set_num_threads(t)
        results.append([np.array(r, copy=True) for r in compute() if r is not None])
    for t, r in zip(THREADS[1:], results[1:]):
        for i, (a, b) in enumerate(zip(r, results[0])):
            assert a.tobytes() == b.tobytes(), f"output {i} differs between 1 and {t} threads"


# Large enough that every pass runs threaded (over 2^18 element updates), with ragged channel blocks.
@pytest.mark.parametrize("shape", [(4099, 67), (9, 37, 31, 33), (3, 5, 40000)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_is_bitwise_identical_for_any_thread_count(shape, dtype, training):
    rng = np.random.default_rng(0)
    c = shape[1]
    x, dy = (rng.normal(size=shape) + 2).astype(dtype), rng.normal(size=shape).astype(dtype)
    w, b = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    rm0, rv0 = rng.normal(size=c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)

    def compute():
        rm, rv = rm0.copy(), rv0.copy()
        y, mean, invstd = F.batch_norm_forward(x, w, b, rm, rv, training)
        return (y, mean, invstd, rm, rv) + F.batch_norm_backward(dy, x, w, mean, invstd, training)
    _same_at_every_thread_count(compute)


@pytest.mark.parametrize("shape, normalized_shape", [((2051, 259), 259), ((65, 33, 129), (33, 129))], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_is_bitwise_identical_for_any_thread_count(shape, normalized_shape, dtype):
    rng = np.random.default_rng(1)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    x, dy = (rng.normal(size=shape) + 2).astype(dtype), rng.normal(size=shape).astype(dtype)
    w, b = rng.normal(size=ns).astype(dtype), rng.normal(size=ns).astype(dtype)

    def compute():
        y, mean, rstd = F.layer_norm_forward(x, normalized_shape, w, b)
        return (y, mean, rstd) + F.layer_norm_backward(dy, x, normalized_shape, w, mean, rstd)
    _same_at_every_thread_count(compute)
