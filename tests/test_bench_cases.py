"""The benchmark cases shipped in fuseprop.bench compute the right thing: every implementation each
case times is validated against its float64 NumPy reference (the same check the benchmarks run before
timing), so a benchmark cannot silently time a wrong result. The square 1024^3/2048^3 GEMMs are left
to the benchmarks themselves (seconds each, and the same kernels as the other GEMM cases)."""
from __future__ import annotations

import pytest

from fuseprop.bench.cases import SPECS

CASES = [spec for kind in SPECS for spec in SPECS[kind] if not spec.slow]


@pytest.mark.parametrize("spec", CASES, ids=[s.name for s in CASES])
def test_benchmark_case_validates(spec):
    case = spec.build()
    assert case.flops > 0 and {"fuseprop", "numpy"} <= set(case.impls)
    for impl in case.impls:
        case.validate(impl)
