"""Threads and instruction sets: results are identical whatever the thread count; the thread
count and the kernel level can be set (and come from OMP_NUM_THREADS / FUSEPROP_CPU)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fuseprop
from fuseprop import _C, functional as F, losses, nn, optim

LEVELS = list(_C.cpu_levels_available())
THREADS = [1, 2, 3, 4]


@pytest.fixture(autouse=True)
def restore_defaults():
    threads, level = fuseprop.get_num_threads(), fuseprop.cpu_level()
    yield
    fuseprop.set_num_threads(threads)
    fuseprop.set_cpu_level(level)
    _C._set_gemm_path("auto")


# Big enough that every path runs threaded (over 2^20 multiply-adds), with ragged edges.
SHAPES = [(257, 300, 129), (64, 1000, 70), (1000, 64, 41), (40, 50, 1500)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("path", ["auto", "packed", "direct", "dot"])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_is_bitwise_identical_for_any_thread_count(level, path, trans_a, trans_b):
    fuseprop.set_cpu_level(level)
    _C._set_gemm_path(path)
    rng = np.random.default_rng(0)
    for m, n, k in SHAPES:
        a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(np.float32)
        b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(np.float32)
        results = []
        for t in THREADS:
            fuseprop.set_num_threads(t)
            results.append(F.matmul(a, b, trans_a, trans_b))
        for t, r in zip(THREADS[1:], results[1:]):
            assert np.array_equal(r, results[0]), f"{m}x{n}x{k} differs between 1 and {t} threads"


@pytest.mark.parametrize("level", LEVELS)
def test_training_is_bitwise_identical_for_any_thread_count(level):
    fuseprop.set_cpu_level(level)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(512, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=512)
    finals = []
    for t in THREADS:
        fuseprop.set_num_threads(t)
        fuseprop.manual_seed(2)
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 10))
        opt = optim.Adam(model.parameters(), lr=1e-3)
        for i in range(0, 512, 128):
            model.train_step(x[i:i + 128], y[i:i + 128], losses.CrossEntropyLoss(), opt)
        finals.append(model.state_dict())
    for t, state in zip(THREADS[1:], finals[1:]):
        for k in state:
            assert np.array_equal(state[k], finals[0][k]), f"{k} differs between 1 and {t} threads"


def test_concurrent_callers_share_the_pool_correctly():
    # The GIL is released in the kernels: several Python threads may run GEMMs at once.
    import threading
    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 400)).astype(np.float32)
    b = rng.normal(size=(400, 500)).astype(np.float32)
    want = F.matmul(a, b)
    errors = []

    def worker():
        for _ in range(10):
            if not np.array_equal(F.matmul(a, b), want):
                errors.append("mismatch")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_callers_submitting_one_after_another_never_mix_their_jobs():
    """Many short threaded jobs of different shapes from several Python threads at once: a worker must
    never run one caller's task with another's function, data or task count. A stress test: the window
    it guards (a worker preempted between reading a job's generation and its fields) is rare."""
    import threading
    fuseprop.set_num_threads(2)
    rng = np.random.default_rng(5)
    jobs = []
    for t in range(4):  # each just over the threading threshold (short jobs, many of them), each its own shape
        m, n, k = 100 + 7 * t, 110 + 5 * t, 96
        a = rng.normal(size=(m, k)).astype(np.float32)
        b = rng.normal(size=(k, n)).astype(np.float32)
        p = rng.normal(size=70_000 + 1000 * t).astype(np.float32)
        g = rng.normal(size=p.size).astype(np.float32)
        q = p.copy()
        F.sgd_step(q, g, lr=0.5)
        jobs.append((a, b, F.matmul(a, b), p, g, q))
    errors = []

    def worker(a, b, want, p, g, want_p):
        for i in range(1500):
            if i % 10 == 0 and not np.array_equal(F.matmul(a, b), want):
                errors.append("matmul")
            q = p.copy()
            F.sgd_step(q, g, lr=0.5)
            if not np.array_equal(q, want_p):
                errors.append("sgd_step")

    threads = [threading.Thread(target=worker, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} wrong results, first: {errors[0]}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_threads_work_in_a_forked_child():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 400)).astype(np.float32)
    b = rng.normal(size=(400, 500)).astype(np.float32)
    want = F.matmul(a, b)  # the parent's pool is running
    code = f"""
import os, numpy as np, fuseprop
from fuseprop import functional as F
rng = np.random.default_rng(4)
a = rng.normal(size=(300, 400)).astype(np.float32); b = rng.normal(size=(400, 500)).astype(np.float32)
want = F.matmul(a, b)
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(F.matmul(a, b), want) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    assert run_python(code).stdout.strip() == "0"
    assert np.array_equal(F.matmul(a, b), want)


def test_set_num_threads_validates_and_round_trips():
    fuseprop.set_num_threads(3)
    assert fuseprop.get_num_threads() == 3
    assert fuseprop.build_info()["num_threads"] == fuseprop.get_num_threads()
    with pytest.raises(ValueError, match="num_threads must be >= 1, got 0"):
        fuseprop.set_num_threads(0)
    with pytest.raises(TypeError, match="num_threads must be an integer"):
        fuseprop.set_num_threads(2.5)


def test_set_cpu_level_validates():
    with pytest.raises(ValueError, match="level must be one of generic, avx2, avx512; got 'sse9'"):
        fuseprop.set_cpu_level("sse9")
    if "avx512" not in LEVELS:
        with pytest.raises(ValueError, match="this CPU cannot run the avx512 kernels"):
            fuseprop.set_cpu_level("avx512")
    for level in LEVELS:
        fuseprop.set_cpu_level(level)
        assert fuseprop.cpu_level() == level == fuseprop.build_info()["kernel_level"]


def run_python(code, **env):
    full_env = {**os.environ, **env}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_omp_num_threads_sets_the_default():
    result = run_python("import fuseprop; print(fuseprop.get_num_threads())", OMP_NUM_THREADS="3")
    assert result.stdout.strip() == "3"


@pytest.mark.parametrize("level", LEVELS)
def test_fuseprop_cpu_forces_a_level(level):
    result = run_python("import fuseprop; print(fuseprop.cpu_level())", FUSEPROP_CPU=level)
    assert result.stdout.strip() == level


def test_fuseprop_cpu_unknown_or_unsupported_falls_back_with_a_warning():
    best = LEVELS[-1]
    result = run_python("import fuseprop; print(fuseprop.cpu_level())", FUSEPROP_CPU="fastest")
    assert result.stdout.strip() == best and "ignoring FUSEPROP_CPU=fastest" in result.stderr
    if "avx512" not in LEVELS:
        result = run_python("import fuseprop; print(fuseprop.cpu_level())", FUSEPROP_CPU="avx512")
        assert result.stdout.strip() == best and "not supported by this CPU" in result.stderr


def test_unknown_gemm_path_is_an_error():
    with pytest.raises(ValueError, match="path must be auto, packed, direct or dot"):
        _C._set_gemm_path("fast")


BLOCKING_SCRIPT = r"""
import json, sys
import numpy as np
import fuseprop
from fuseprop import _C, functional as F
out = {"caches": _C.cpu_caches(), "blocking": {}, "max_err": 0.0, "thread_mismatch": []}
_C._set_gemm_path("packed")
rng = np.random.default_rng(3)
for level in _C.cpu_levels_available():
    fuseprop.set_cpu_level(level)
    out["blocking"][level] = _C.gemm_blocking()
    # taller than mc (blocked form, row blocks), wider than nc (several panels), longer than kc (slices),
    # and a short one (whole-K form, still several slices), with ragged edges everywhere
    for m, n, k in [(301, 1100, 333), (50, 300, 70)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.normal(size=(k, m) if ta else (m, k)).astype(np.float32)
                b = rng.normal(size=(n, k) if tb else (k, n)).astype(np.float32)
                want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
                got = []
                for t in (1, 2, 3, 4):
                    fuseprop.set_num_threads(t)
                    got.append(F.matmul(a, b, ta, tb))
                err = float(np.max(np.abs(got[0] - want)) / np.max(np.abs(want)))
                out["max_err"] = max(out["max_err"], err)
                if not all(np.array_equal(g, got[0]) for g in got[1:]):
                    out["thread_mismatch"].append([level, m, n, k, ta, tb])
print(json.dumps(out))
"""


def test_blocking_follows_the_caches_and_every_blocking_is_exact_and_deterministic():
    """FUSEPROP_CACHES shrinks the caches the blocking is derived from, so that moderate shapes take
    the blocked form with several row blocks, column panels and k slices: results stay within float32
    rounding of float64 and identical for 1-4 threads at every level."""
    env = dict(os.environ, FUSEPROP_CACHES="8192,65536,262144")
    proc = subprocess.run([sys.executable, "-c", BLOCKING_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json
    out = json.loads(proc.stdout)
    assert out["caches"] == {"l1d": 8192, "l2": 65536, "l3": 262144}
    for level, b in out["blocking"].items():
        assert b["kc"] < 333 and b["mc"] < 301 and b["nc"] < 1100, (level, b)  # the first shape is cut up every way
        assert b["mc"] % b["mr"] == 0 and b["nc"] % b["nr"] == 0, (level, b)
    assert out["max_err"] < 1e-5
    assert out["thread_mismatch"] == []


def test_cache_sizes_and_blocking_are_reported():
    caches, blocking = fuseprop.build_info()["cpu_caches"], fuseprop.build_info()["gemm_blocking"]
    assert set(caches) == {"l1d", "l2", "l3"} and all(v > 0 for v in caches.values())
    assert blocking["level"] == fuseprop.cpu_level()
    assert blocking["mc"] % blocking["mr"] == 0 and blocking["nc"] % blocking["nr"] == 0 and blocking["kc"] >= 64


def test_malformed_fuseprop_caches_is_ignored_with_a_warning():
    env = dict(os.environ, FUSEPROP_CACHES="lots")
    proc = subprocess.run([sys.executable, "-c", "from fuseprop import _C; print(_C.cpu_caches()['l1d'] > 0)"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True"
    assert "ignoring FUSEPROP_CACHES=lots" in proc.stderr


@pytest.mark.parametrize("threads", [1, 2])
def test_optimizer_updates_are_bitwise_identical_at_every_level(threads):
    """The update loops are compiled once per instruction set without FMA contraction, so every level
    (and every thread count) writes the same bits; a non-finite result is still reported."""
    fuseprop.set_num_threads(threads)
    rng = np.random.default_rng(4)
    n = 300_001  # ragged against every vector width and the test blocks, and split over threads
    p0 = rng.normal(size=n).astype(np.float32)
    g = rng.normal(size=n).astype(np.float32)
    results = {}
    for level in LEVELS:
        fuseprop.set_cpu_level(level)
        p, buf = p0.copy(), np.zeros(n, np.float32)
        for step in (1, 2):
            F.sgd_step(p, g, buf, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, step=step)
        q, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        for step in (1, 2):
            F.adam_step(q, g, m, v, step=step, lr=0.01, weight_decay=0.1, decoupled_weight_decay=step == 2)
        results[level] = (p, buf, q, m, v)
    for level in LEVELS[1:]:
        for a, b in zip(results[LEVELS[0]], results[level]):
            assert np.array_equal(a, b), f"{level} differs from {LEVELS[0]}"
