"""The benchmark cases shipped in fuseprop.bench compute the right thing: every implementation each
case times is validated against its float64 NumPy reference (the same check the benchmarks run before
timing), so a benchmark cannot silently time a wrong result. The square 1024^3/2048^3 GEMMs are left
to the benchmarks themselves (seconds each, and the same kernels as the other GEMM cases). The
measured peak (fuseprop.bench.fma_peak) returns a rate and refuses bad arguments by name. No test
here asserts a speed: timings on a shared machine are not a property of the code."""
from __future__ import annotations

import math

import pytest

import fuseprop
from fuseprop import _C
from fuseprop.bench import fma_peak
from fuseprop.bench.cases import SPECS

CASES = [spec for kind in SPECS for spec in SPECS[kind] if not spec.slow]


@pytest.mark.parametrize("spec", CASES, ids=[s.name for s in CASES])
def test_benchmark_case_validates(spec):
    case = spec.build()
    assert case.flops > 0 and {"fuseprop", "numpy"} <= set(case.impls)
    for impl in case.impls:
        case.validate(impl)


# ---- the measured peak that "% of peak" divides by


def test_fma_peak_is_a_positive_finite_rate():
    for threads in (1, 2):
        gflops = fma_peak(threads, seconds=0.02)
        assert math.isfinite(gflops) and gflops > 0
    assert fma_peak(1, 0.02, level=fuseprop.cpu_level()) > 0
    for level in fuseprop.build_info()["kernel_levels_available"]:
        assert fma_peak(1, 0.01, level) > 0


def test_fma_peak_leaves_the_thread_count_as_it_was():
    before = fuseprop.get_num_threads()
    fma_peak(before + 1, seconds=0.01)
    assert fuseprop.get_num_threads() == before


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(threads=0), ValueError, "threads"),
    (dict(threads=-2), ValueError, "threads"),
    (dict(threads=10**6), ValueError, "threads"),
    (dict(threads=1.0), TypeError, "threads"),
    (dict(threads=True), TypeError, "threads"),
    (dict(threads="2"), TypeError, "threads"),
    (dict(threads=1, seconds=0), ValueError, "seconds"),
    (dict(threads=1, seconds=-1.0), ValueError, "seconds"),
    (dict(threads=1, seconds=float("nan")), ValueError, "seconds"),
    (dict(threads=1, seconds=float("inf")), ValueError, "seconds"),
    (dict(threads=1, seconds=1e9), ValueError, "seconds"),
    (dict(threads=1, seconds="0.1"), TypeError, "seconds"),
    (dict(threads=1, seconds=None), TypeError, "seconds"),
    (dict(threads=1, seconds=False), TypeError, "seconds"),
    (dict(threads=1, level="sse9"), ValueError, "level"),
    (dict(threads=1, level=2), TypeError, "level"),
], ids=lambda v: repr(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]!r}" for k in v))
def test_fma_peak_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _C.fma_peak(**kwargs)


def test_fma_peak_refuses_a_level_this_cpu_lacks():
    levels = ("generic", "avx2", "avx512")
    missing = [lvl for lvl in levels if lvl not in fuseprop.build_info()["kernel_levels_available"]]
    if not missing:
        pytest.skip("this CPU runs every level")
    with pytest.raises(ValueError, match="level"):
        fma_peak(1, 0.01, missing[0])
