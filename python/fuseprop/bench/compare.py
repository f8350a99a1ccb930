"""fuseprop vs NumPy, PyTorch eager, torch.compile and JAX jit (those installed), float32, side by side.

Each library runs in its own worker process (worker.py), on the same number of threads, so no two
thread pools share a process. For every repeat the parent asks each worker in turn (the order
rotating) to time one window of the case and waits for its answer: only one library runs at a time,
and machine noise hits them all alike. Every implementation is validated against a float64 NumPy
reference before it is timed (compiled ones compile then, untimed). Each figure is the median of its
windows; the ratios fuseprop/<peer> divide medians of the same run. GEMMs and layers are in GFLOP/s,
training steps in samples/s. The core's multiply-add peak (fuseprop.bench.fma_peak, at fuseprop's
kernel level) is measured at the start, on 1 thread and on the threads used, and again as one more
window in every repeat of every case: "peak" is the median of those, and "fp %peak" fuseprop's GFLOP/s
as a share of it, so that a busy machine holds back the peak as much as the rates it divides.

    python -m fuseprop bench [--quick] [--only gemm|linear|train|cnn|lstm | --case NAME ...] [--threads N]
                             [--peers numpy,torch,torch.compile,jax] [--markdown] [--png ratios.png]
    python benchmarks/compare.py ...          (the same, from a source tree)
"""
from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from .cases import PEERS, SPECS, installed, spec_named

# Idle time before each window: a library's threads spin for a while after its last call before they
# sleep (OpenBLAS's for about 2^28 cycles, ~0.1 s), and would otherwise take cores from the next
# library's window. On the 2-core machine, fma_peak right after a NumPy window reached about 60% of
# what it reached 0.1 s later.
SETTLE = 0.1
BUILD_TIMEOUT = 1800.0  # seconds: torch.compile of the largest network on a busy 2-core machine takes minutes
INFO_TIMEOUT = 300.0    # starting a worker imports its library


class CaseError(Exception):
    """An implementation failed to build or to validate on one case; its worker goes on."""


class WorkerError(Exception):
    """A worker died or stopped answering; it takes no further part in the run."""


def available_cpus():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def worker_env(impl, threads):
    """The environment a worker starts with: what each library reads once, when it loads."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if impl == "numpy":
        # Set on this machine for old OpenBLAS builds; they hold a current one to older, slower kernels.
        for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            env.pop(var, None)
    if impl == "torch.compile":
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # compile in the worker: no pool of compile processes lingers
    if impl == "jax":
        env["JAX_PLATFORMS"] = "cpu"
        if threads == 1:
            # What limits older jaxlibs to one thread. jax 0.10's runtime ignores it and sizes its pool by
            # the CPUs the process may use, which the worker's pinning (--cpus) sets.
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                " intra_op_parallelism_threads=1").strip()
    return env


class Worker:
    """The parent's handle on one worker process: JSON requests in, one JSON reply line out."""

    def __init__(self, impl, threads, cpus):
        self.impl = impl
        self.log = tempfile.TemporaryFile()  # the worker's stderr, shown when it fails
        command = [sys.executable, "-m", "fuseprop.bench.worker", "--impl", impl, "--threads", str(threads)]
        if cpus:
            command += ["--cpus", ",".join(map(str, cpus))]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=worker_env(impl, threads))
        self.pending = b""
        self.dead = None  # why it stopped, once it has

    def ask(self, timeout, **request):
        if self.dead:
            raise WorkerError(self.dead)
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            reply = json.loads(self._readline(timeout))
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            self.dead = f"{self.impl} worker: {str(e) or type(e).__name__}{self.stderr_tail()}"
            self.close()
            raise WorkerError(self.dead) from None
        if not reply.pop("ok"):
            raise CaseError(reply["error"])
        return reply

    def _readline(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no answer within {timeout:.0f} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"the process ended (exit status {self.proc.wait()})")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line

    def stderr_tail(self, lines=6):
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace").strip().splitlines()[-lines:]
        return "".join("\n    " + line for line in tail)

    def close(self):
        """Asks the worker to quit (kills it if it will not) and closes its pipes and log."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.log):
            try:
                stream.close()
            except OSError:  # the pipe broke with the worker
                pass


def measure(spec, workers, repeats, window, threads, failures):
    """Build, validate and time one case on every worker that has it: {impl: [seconds per call in each
    window]}, the peak's GFLOP/s in each repeat, and the case's FLOPs and samples per call. The workers
    take turns: one window each, one worker at a time, the order rotating from repeat to repeat; the
    fuseprop worker also runs one window of fma_peak in every repeat, in the rotation too."""
    taking_part, work = [], None
    for w in workers:
        if w.impl not in spec.impls or w.dead:
            continue
        try:
            work = w.ask(BUILD_TIMEOUT, cmd="build", case=spec.name, window=window)
            taking_part.append(w)
        except (CaseError, WorkerError) as e:
            failures.append(f"{w.impl} on {spec.name}: {e}")
    times = {w.impl: [] for w in taking_part}
    slots = [(w.impl, w, {"cmd": "time"}) for w in taking_part]
    if taking_part and not workers[0].dead:  # workers[0] is fuseprop's
        slots.append(("peak", workers[0], {"cmd": "peak", "threads": [threads], "seconds": window, "repeats": 1}))
        times["peak"] = []
    for r in range(repeats):
        # rotate the order, so that no implementation always runs right after the same other one
        k = r % max(1, len(slots))
        for label, w, request in slots[k:] + slots[:k]:
            if label not in times:
                continue
            time.sleep(SETTLE)
            try:
                reply = w.ask(60.0 + 50.0 * window, **request)
                times[label].append(reply["gflops"][0] if label == "peak" else reply["seconds"])
            except (CaseError, WorkerError) as e:
                failures.append(f"{label} on {spec.name}: {e}")
                del times[label]
    peak = times.pop("peak", [])
    return times, peak, work


class Table:
    """The rows, as aligned text or as a Markdown table, printed as each case finishes."""

    def __init__(self, impls, markdown):
        self.impls, self.peers, self.markdown = impls, [i for i in impls if i != "fuseprop"], markdown
        self.columns = (["case", "unit"] + list(impls) + [f"fp/{p}" for p in self.peers]
                        + ["peak GFLOP/s", "fp %peak"])
        self.widths = [31, 10] + [max(len(c), 9) + 2 for c in self.columns[2:]]

    def line(self, cells):
        if self.markdown:
            return "| " + " | ".join(cells) + " |"
        return "".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, self.widths)))

    def header(self):
        print(self.line(self.columns))
        if self.markdown:
            print("|" + "|".join(["---"] * 2 + ["---:"] * (len(self.columns) - 2)) + "|")

    def row(self, spec, times, work, peak):
        """Prints the row of one case (peak: the GFLOP/s fuseprop's are a share of); returns its ratios
        {peer: fuseprop's rate / the peer's}."""
        rate = {}
        if work:
            unit, per_call = ("samples/s", work["samples"]) if work["samples"] else ("GFLOP/s", work["flops"] / 1e9)
            rate = {impl: per_call / statistics.median(t) for impl, t in times.items() if t}
        else:  # nothing could be built
            unit = "samples/s" if spec.name.startswith("train") else "GFLOP/s"
        fmt = "{:,.0f}" if unit == "samples/s" else "{:.1f}"
        cells = [spec.name, unit]
        for impl in self.impls:
            cells.append(fmt.format(rate[impl]) if impl in rate else "failed" if impl in spec.impls else "-")
        ratio = {p: rate["fuseprop"] / rate[p] for p in self.peers if p in rate and "fuseprop" in rate}
        cells += [f"{ratio[p]:.2f}x" if p in ratio else "-" for p in self.peers]
        cells.append(f"{peak:.1f}")
        if "fuseprop" in rate:
            gflops = work["flops"] / statistics.median(times["fuseprop"]) / 1e9
            cells.append(f"{100 * gflops / peak:.1f}%")
        else:
            cells.append("-")
        print(self.line(cells), flush=True)
        return ratio


def load_pyplot():
    try:
        import matplotlib
    except ImportError:
        print("--png: matplotlib is not installed, so no chart will be written (pip install matplotlib)")
        return None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def write_chart(plt, chart, peers, path):
    """Horizontal bars of fuseprop/<peer> per case, on a log scale around 1 (parity)."""
    peers = [p for p in peers if any(p in ratio for _, ratio in chart)]
    y = np.arange(len(chart))
    height = 0.8 / max(1, len(peers))
    fig, ax = plt.subplots(figsize=(9, 0.2 * len(chart) * max(2, len(peers)) + 1.5))
    for i, peer in enumerate(peers):
        ax.barh(y + height * (i - (len(peers) - 1) / 2), [ratio.get(peer, np.nan) for _, ratio in chart],
                height=height, label=f"fuseprop / {peer}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, [name for name, _ in chart])
    ax.invert_yaxis()
    ax.set_xlabel("speed ratio (> 1: fuseprop is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"chart written to {path}")


def parse_args(argv, prog):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 windows of >= 0.1 s instead of 7 of >= 0.3 s")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", choices=list(SPECS), help="one kind of case")
    which.add_argument("--case", action="append", metavar="NAME", help="one case by its name (repeatable)")
    parser.add_argument("--threads", type=int, help="threads per library (default: every CPU this process may use)")
    parser.add_argument("--peers", help=f"comma-separated, of {','.join(PEERS)} (default: those installed)")
    parser.add_argument("--repeats", type=int, help="timed windows per implementation (default 7; 3 with --quick)")
    parser.add_argument("--window", type=float, help="seconds per window (default 0.3; 0.1 with --quick)")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown, for benchmarks/RESULTS.md")
    parser.add_argument("--png", metavar="PATH", help="also write a bar chart of the ratios (needs matplotlib)")
    args = parser.parse_args(argv)
    # Checked as given: 0 is a mistake to report, not a request for the default.
    if (args.repeats is not None and args.repeats < 1) or (args.threads is not None and args.threads < 1) or (
            args.window is not None and not args.window > 0):
        parser.error("--repeats and --threads must be >= 1 and --window > 0")
    args.repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    args.window = args.window if args.window is not None else (0.1 if args.quick else 0.3)
    args.threads = args.threads if args.threads is not None else len(available_cpus())
    if args.peers is None:
        args.peers = [p for p in PEERS if installed(p)]
    else:
        args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        for p in args.peers:
            if p not in PEERS:
                parser.error(f"--peers: unknown peer {p!r}; choose from {', '.join(PEERS)}")
            if not installed(p):
                parser.error(f"--peers: {p} is not installed")
    try:
        args.specs = ([spec_named(name) for name in args.case] if args.case
                      else SPECS[args.only] if args.only else [s for kind in SPECS.values() for s in kind])
    except KeyError as e:
        parser.error(f"--case: {e.args[0]}")
    return args


def describe(info):
    """One library's part of the header."""
    if info["impl"] == "fuseprop":
        return f"fuseprop {info['version']} ({info['level']} kernels)"
    if info["impl"] == "numpy":
        return f"numpy {info['version']} ({info['blas']})"
    if info["impl"] == "torch.compile":
        return f"torch.compile (torch {info['version']}, inductor)"
    return f"{info['impl']} {info['version']}"


def start_workers(impls, threads, cpus, failures):
    """One worker per implementation, started side by side (each imports its library); their infos."""
    workers = [Worker(impl, threads, cpus) for impl in impls]
    infos = []
    for w in workers:
        try:
            infos.append(w.ask(INFO_TIMEOUT, cmd="info")["info"])
        except (CaseError, WorkerError) as e:
            failures.append(f"{w.impl} did not start: {e}")
    return workers, infos


def print_header(args, infos, cpus, pinned, peaks, level):
    say = (lambda line: print(f"- {line}")) if args.markdown else print  # a list in Markdown, not one paragraph
    skipped = [p for p in PEERS if p not in args.peers and installed(p)]
    absent = [p for p in PEERS if not installed(p)]
    say(", ".join(describe(i) for i in infos) + f"; python {infos[0]['python']}"
        + (f"; not asked for: {', '.join(skipped)}" if skipped else "")
        + (f"; not installed: {', '.join(absent)}" if absent else ""))
    say(f"each library in its own process on {args.threads} thread(s) of {len(cpus)} CPU(s)"
        + (f" (all pinned to CPUs {','.join(map(str, pinned))})" if pinned else "")
        + f", taking turns window by window: medians of {args.repeats} windows of >= {args.window} s; every result "
        f"validated against float64 NumPy first; load average {os.getloadavg()[0]:.2f} at the start")
    say(f"peak (fma_peak, {level} multiply-adds, best of {args.repeats}): "
        + ", ".join(f"{g:.1f} GFLOP/s on {t} thread(s)" for t, g in peaks.items())
        + f"; every case measures the {args.threads}-thread peak again, one window per repeat (peak GFLOP/s)")
    if len(peaks) > 1 and peaks[args.threads] < 0.75 * min(args.threads, len(cpus)) * peaks[1]:
        say(f"note: at the start the {args.threads}-thread peak was well below {args.threads} x the 1-thread peak: "
            "other processes were using the CPUs (each row's peak says how much they left)")
    print()


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    plt = load_pyplot() if args.png else None
    cpus = available_cpus()
    pinned = cpus[:args.threads] if args.threads < len(cpus) else None  # fewer threads than CPUs: the same CPUs for all
    # a worker for each implementation some selected case has (torch.compile times only training steps)
    impls = ["fuseprop"] + [p for p in PEERS if p in args.peers and any(p in s.impls for s in args.specs)]
    failures, chart = [], []
    workers, infos = start_workers(impls, args.threads, pinned, failures)
    try:
        if workers[0].dead:
            raise SystemExit(f"the fuseprop worker did not start: {workers[0].dead}")
        # the peak on 1 thread and on the threads every library uses, measured while the other workers wait
        thread_counts = sorted({1, args.threads})
        time.sleep(SETTLE)
        peak = workers[0].ask(INFO_TIMEOUT, cmd="peak", threads=thread_counts, seconds=max(args.window, 0.05),
                              repeats=args.repeats)
        peaks = dict(zip(thread_counts, peak["gflops"]))
        print_header(args, infos, cpus, pinned, peaks, peak["level"])
        table = Table(impls, args.markdown)
        table.header()
        for spec in args.specs:
            times, peak, work = measure(spec, workers, args.repeats, args.window, args.threads, failures)
            peak = statistics.median(peak) if peak else peaks[args.threads]
            chart.append((spec.name, table.row(spec, times, work, peak)))
    finally:
        for w in workers:
            w.close()
    if plt:
        write_chart(plt, chart, impls[1:], args.png)
    if failures:
        print("\nnot timed (failed to start, build or validate):\n  " + "\n  ".join(failures))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
