"""pytest-benchmark suites, collected only when pointed at: `python -m pytest benchmarks` (or one
bench_*.py file). A plain `python -m pytest` never gets here (the project's testpaths is ["tests"]);
the files are named bench_*.py, which pytest's default pattern (test_*.py) skips, so the hook below
collects them, and only in this folder.

    python -m pytest benchmarks                   # every suite: one group per case, each implementation in it
    python -m pytest benchmarks -m "not slow"     # without the 1024^3 and 2048^3 GEMMs
    python -m pytest benchmarks -k "b32 and not torch"
    python -m pytest benchmarks/bench_gemm.py --benchmark-columns=median,iqr,ops,rounds --benchmark-sort=name

pytest-benchmark times the implementations one after the other, in one process, so on a noisy machine
its ratios drift and the libraries' thread pools share the process; benchmarks/compare.py runs each
library in its own process, interleaves them and prints GFLOP/s, samples/s, ratios and % of peak.
"""
import warnings

import pytest

from fuseprop.bench.cases import IMPLS


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself, whatever its name
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


@pytest.fixture
def run_case(benchmark, impl):
    """run_case(spec): build the case, validate `impl` against the float64 NumPy reference, then time it,
    in the pytest-benchmark group named after the case so the implementations line up side by side."""
    def run(spec):
        if impl not in spec.impls:
            pytest.skip(f"{spec.name} has no {impl} implementation")
        case = spec.build([impl])  # only this one: torch and JAX load only where they are timed
        if impl not in case.impls:
            pytest.skip(f"{impl} is not installed")
        with warnings.catch_warnings():
            # torch.compile's first call imports inductor modules that warn of their own deprecations
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
            case.validate(impl)
        benchmark.group = spec.name
        benchmark.extra_info["gflop_per_call"] = case.flops / 1e9  # for --benchmark-json: GFLOP/s = this * ops
        if spec.slow:  # up to seconds per call: a few rounds are enough
            benchmark.pedantic(case.impls[impl], rounds=3)
        else:
            benchmark(case.impls[impl])
    return run
