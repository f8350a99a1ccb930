"""fuseprop vs NumPy vs PyTorch eager (when installed), float32, measured side by side in one run.

One table: GEMMs and fused linear layers in GFLOP/s, training steps in samples/s, the ratios
fuseprop/NumPy and fuseprop/torch, and fuseprop's share of the machine's peak, estimated as the best
GFLOP/s NumPy reaches on a 2048^3 GEMM in the same run. Every implementation's result is validated
against a float64 NumPy reference before it is timed. Each figure is the median over several timed
windows; inside each repeat the implementations take turns, so machine noise hits them alike.

    python -m fuseprop bench [--quick] [--only gemm|linear|train] [--png ratios.png]
    python benchmarks/compare.py ...          (the same, from a source tree)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np

import fuseprop
from .cases import IMPLS, SPECS, torch

PEAK_SPEC = next(s for s in SPECS["gemm"] if s.name == "gemm 2048x2048x2048")


def run_calls(fn, n):
    """Seconds per call over n back-to-back calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def calls_per_window(fn, seconds):
    """Enough calls to fill a window of `seconds`, so that the timer's resolution and the loop do not count."""
    n = 1
    while True:
        total = run_calls(fn, n) * n
        if total >= seconds / 4:
            return max(1, round(n * seconds / total))
        n *= 2


def measure(case, repeats, seconds):
    """{implementation: [seconds per call in each window]}, the implementations interleaved in every repeat."""
    names = list(case.impls)
    calls = {name: calls_per_window(case.impls[name], seconds) for name in names}
    times = {name: [] for name in names}
    for r in range(repeats):
        # rotate the order, so that no implementation always runs right after the same other one
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(run_calls(case.impls[name], calls[name]))
    return times


def measure_spec(spec, repeats, seconds, impl=None):
    """Build, validate and time one case: all its implementations, or only `impl`."""
    case = spec.build()
    if impl:
        case = dataclasses.replace(case, impls={impl: case.impls[impl]})
    for name in case.impls:  # validate before timing; this is also each implementation's warm-up call
        case.validate(name)
    return case, measure(case, repeats, seconds)


def load_pyplot():
    try:
        import matplotlib
    except ImportError:
        print("--png: matplotlib is not installed, so no chart will be written (pip install matplotlib)")
        return None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def write_chart(plt, chart, path):
    """Horizontal bars of fuseprop/NumPy and fuseprop/torch per case, on a log scale around 1 (parity)."""
    y = np.arange(len(chart))
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(chart) + 1.5))
    for i, other in enumerate(o for o in ("numpy", "torch") if any(o in ratio for _, ratio in chart)):
        ax.barh(y + 0.4 * i - 0.2, [ratio.get(other, np.nan) for _, ratio in chart], height=0.4,
                label=f"fuseprop / {other}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, [name for name, _ in chart])
    ax.invert_yaxis()
    ax.set_xlabel("speed ratio (> 1: fuseprop is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"chart written to {path}")


def table_row(name, case, times, peak):
    """The printed row of one case, and its ratios {other: fuseprop's rate / other's rate}."""
    median = {impl: statistics.median(t) for impl, t in times.items()}
    unit, work = ("samples/s", case.samples) if case.samples else ("GFLOP/s", case.flops / 1e9)
    rate = {impl: work / t for impl, t in median.items()}
    ratio = {other: rate["fuseprop"] / rate[other] for other in ("numpy", "torch") if other in rate}
    value = "{:>11,.0f}" if case.samples else "{:>11.1f}"
    return (f"{name:<32}{unit:<11}"
            + "".join(value.format(rate[impl]) if impl in rate else f"{'n/a':>11}" for impl in IMPLS)
            + "".join(f"{ratio[o]:>9.2f}x" if o in ratio else f"{'n/a':>10}" for o in ("numpy", "torch"))
            + f"{100 * case.flops / median['fuseprop'] / 1e9 / peak:>9.1f}%"), ratio


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 windows of >= 0.1 s instead of 7 of >= 0.3 s")
    parser.add_argument("--only", choices=list(SPECS), help="one kind of case")
    parser.add_argument("--png", metavar="PATH", help="also write a bar chart of the ratios (needs matplotlib)")
    args = parser.parse_args(argv)
    repeats, seconds = (3, 0.1) if args.quick else (7, 0.3)
    plt = load_pyplot() if args.png else None

    info = fuseprop.build_info()
    print(f"fuseprop {info['version']} (kernels {info['kernel_level']}, {info['num_threads']} thread(s)), "
          f"numpy {np.__version__}, " + (f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
                                         if torch else "torch not installed") + f"; {os.cpu_count()} CPUs")
    # the machine is shared: other processes stall multithreaded calls most, so say how busy it was
    print(f"medians of {repeats} windows of >= {seconds} s per implementation; all results validated first; "
          f"load average {os.getloadavg()[0]:.2f} at the start")

    # the peak comes first, as every row's %peak needs it; when the GEMM rows run, its row is one of them
    with_gemm = args.only in (None, "gemm")
    peak_case, peak_times = measure_spec(PEAK_SPEC, repeats, seconds, impl=None if with_gemm else "numpy")
    peak = peak_case.flops / min(peak_times["numpy"]) / 1e9
    print(f"peak: {peak:.1f} GFLOP/s (the best NumPy window on {PEAK_SPEC.name} in this run)\n")

    print(f"{'case':<32}{'unit':<11}" + "".join(f"{impl:>11}" for impl in IMPLS)
          + f"{'fp/numpy':>10}{'fp/torch':>10}{'fp %peak':>10}")
    chart = []
    for kind in [args.only] if args.only else list(SPECS):
        for spec in SPECS[kind]:
            case, times = (peak_case, peak_times) if spec is PEAK_SPEC else measure_spec(spec, repeats, seconds)
            line, ratio = table_row(spec.name, case, times, peak)
            print(line, flush=True)
            chart.append((spec.name, ratio))
    if plt:
        write_chart(plt, chart, args.png)


if __name__ == "__main__":
    main()
