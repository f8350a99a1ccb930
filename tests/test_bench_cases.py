"""The benchmark cases shipped in fuseprop.bench compute the right thing: every implementation each
case times is validated against its float64 NumPy reference (the same check the benchmarks run before
timing), so a benchmark cannot silently time a wrong result. The square 1024^3/2048^3 GEMMs are left
to the benchmarks themselves (seconds each, and the same kernels as the other GEMM cases), and
torch.compile is validated on the smallest network only (it compiles for seconds per network; one
function builds every network's step). The side-by-side runner runs end to end with its workers on a
tiny selection; the measured peak (fuseprop.bench.fma_peak) returns a rate and refuses bad arguments by
name. No test here asserts a speed: timings on a shared machine are not a property of the code."""
from __future__ import annotations

import math
import re

import pytest

import fuseprop
from fuseprop import _C
from fuseprop.bench import compare, fma_peak
from fuseprop.bench.cases import SPECS, installed, spec_named

SMALLEST_NETWORK = SPECS["train"][0].name


def _pairs():
    for kind in SPECS:
        for spec in SPECS[kind]:
            if spec.slow:
                continue
            for impl in spec.impls:
                if impl == "torch.compile" and spec.name != SMALLEST_NETWORK:
                    continue
                marks = () if installed(impl) else pytest.mark.skip(reason=f"{impl} is not installed")
                yield pytest.param(spec, impl, id=f"{spec.name}-{impl}", marks=marks)


# torch.compile's inductor imports modules that warn of their own deprecations (torch.jit.script_method)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
@pytest.mark.parametrize("spec, impl", list(_pairs()))
def test_benchmark_case_validates(spec, impl):
    case = spec.build([impl])
    assert case.flops > 0 and list(case.impls) == [impl]
    case.validate(impl)


def test_every_case_has_fuseprop_and_numpy_and_known_names():
    names = [s.name for kind in SPECS.values() for s in kind]
    assert len(names) == len(set(names))
    for name in names:
        # The CNN's and the LSTM's peers are PyTorch's (eager and compiled): a NumPy CNN or LSTM is not what their
        # users compare with.
        torch_peers = {s.name for s in SPECS["cnn"] + SPECS["lstm"]}
        expected = {"fuseprop", "torch"} if name in torch_peers else {"fuseprop", "numpy"}
        assert expected <= set(spec_named(name).impls)
        assert re.fullmatch(r"[\w .\-]+", name), name  # what `pytest -k` can select
    with pytest.raises(KeyError, match="no benchmark case"):
        spec_named("gemm 1x1-1")


# ---- the side-by-side runner: one worker process per library


def test_compare_runs_each_library_in_its_own_worker(capsys):
    cases = ["gemm 32x784-16 x.W.T", SMALLEST_NETWORK]
    compare.main(["--peers", "numpy", "--repeats", "2", "--window", "0.01", "--threads", "1"]
                 + [a for c in cases for a in ("--case", c)])
    out = capsys.readouterr().out
    assert "numpy " in out and "each library in its own process" in out
    peak = re.search(r"peak \(fma_peak, (\w+) multiply-adds.*?([\d.]+) GFLOP/s on 1 thread", out)
    assert peak and peak.group(1) == fuseprop.cpu_level() and float(peak.group(2)) > 0
    header = next(line for line in out.splitlines() if line.startswith("case"))
    assert header.split() == ["case", "unit", "fuseprop", "numpy", "fp/numpy", "peak", "GFLOP/s", "fp", "%peak"]
    for name, unit in zip(cases, ("GFLOP/s", "samples/s")):
        row = next(line for line in out.splitlines() if line.startswith(name))
        got_unit, fp, numpy, ratio, row_peak, share = row[len(name):].split()
        assert got_unit == unit
        assert float(fp.replace(",", "")) > 0 and float(numpy.replace(",", "")) > 0 and float(row_peak) > 0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
        assert share.endswith("%") and float(share[:-1]) > 0


def test_compare_markdown_table(capsys):
    compare.main(["--peers", "numpy", "--repeats", "1", "--window", "0.01", "--threads", "1", "--markdown",
                  "--case", "linear 784-16 b32 relu fwd"])
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| case | unit | fuseprop | numpy | fp/numpy | peak GFLOP/s | fp %peak |"
    assert table[2].startswith("| linear 784-16 b32 relu fwd | GFLOP/s | ") and len(table) == 3


def test_numpy_worker_runs_without_the_old_openblas_settings(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    env = compare.worker_env("numpy", 3)
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env and env["OMP_NUM_THREADS"] == "3"


def test_a_worker_reports_a_case_it_cannot_build():
    failures = []
    workers, infos = compare.start_workers(["numpy"], 1, None, failures)
    try:
        assert not failures and infos[0]["impl"] == "numpy" and infos[0]["threads"] == 1
        with pytest.raises(compare.CaseError, match="no benchmark case named 'gemm 1x1-1'"):
            workers[0].ask(30, cmd="build", case="gemm 1x1-1", window=0.01)
        with pytest.raises(compare.CaseError, match="unknown command"):
            workers[0].ask(30, cmd="run_anything")
        assert workers[0].proc.poll() is None  # still serving
    finally:
        workers[0].close()
    assert workers[0].proc.returncode == 0


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


@pytest.mark.parametrize("option", [["--threads", "0"], ["--repeats", "0"], ["--window", "0"], ["--window", "-1"]])
def test_compare_refuses_zero_and_negative_options(option, capsys):
    """0 is reported, not taken for the default (it used to run the whole table)."""
    with pytest.raises(SystemExit) as exit_info:
        compare.main(option + ["--peers", "numpy", "--case", "gemm 1024x1024-1024"])
    assert exit_info.value.code == 2
    assert "--repeats and --threads must be >= 1 and --window > 0" in capsys.readouterr().err
