"""One benchmark worker: one implementation (fuseprop, numpy, torch, torch.compile or jax) alone in its
own process, so that no other library's thread pool shares it. compare.py starts one per
implementation and asks each in turn to time one window, so that only one library runs at a time.

    python -m fuseprop.bench.worker --impl numpy --threads 2 [--cpus 0,1]

The parent prepares the environment (OMP_NUM_THREADS, XLA_FLAGS, OpenBLAS variables) before the
libraries load; here the worker pins itself to --cpus, if given, before importing torch or JAX, and sets
its library's thread count. Protocol: one JSON object per line on stdin, one reply per line on the
stdout the process started with (kept for replies only: anything printed goes to stderr):

    {"cmd": "info"}                                   -> {"ok": true, "info": {...}}
    {"cmd": "peak", "threads": [1, 2], "seconds": s, "repeats": r}   (fuseprop only)
                                                      -> {"ok": true, "level": "avx512", "gflops": [.., ..]}
    {"cmd": "build", "case": name, "window": s}       -> {"ok": true, "calls": n, "flops": f, "samples": b}
    {"cmd": "time"}                                   -> {"ok": true, "seconds": seconds per call in one window}
    {"cmd": "quit"}

"build" builds the case, validates the result against the float64 NumPy reference (the first call:
compiled implementations compile here), warms up, and picks the calls that fill one window. A
failure replies {"ok": false, "error": "..."}.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback


def pin(cpus):
    """Every thread of this process (OpenBLAS's, started when NumPy loaded) onto `cpus`; threads started
    later inherit it. JAX sizes its pool by these CPUs: in jax 0.10 XLA_FLAGS no longer limits it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that has just ended
            pass
    os.sched_setaffinity(0, cpus)


def blas_info():
    """NumPy's BLAS as threadpoolctl sees it: library, version, kernel architecture, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed (pip install fuseprop[bench]): BLAS kernels unknown"
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return "; ".join(f"{p.get('internal_api')} {p.get('version')} {p.get('architecture') or ''} "
                     f"{p.get('num_threads')} thread(s)".replace("  ", " ") for p in pools) or "no BLAS found"


def setup(impl, threads):
    """Sets `impl`'s thread count; returns what the header says about it."""
    import numpy as np
    info = {"impl": impl, "threads": threads}
    try:  # NumPy's BLAS in every worker: the timed one in numpy's, operands and references elsewhere
        from threadpoolctl import threadpool_limits
        setup.limits = threadpool_limits(limits=threads, user_api="blas")  # kept alive: the limit lasts
    except ImportError:
        pass  # OMP_NUM_THREADS, set by the parent, limits OpenBLAS too
    if impl == "fuseprop":
        import fuseprop
        fuseprop.set_num_threads(threads)
        info.update(version=fuseprop.__version__, level=fuseprop.cpu_level(), python=sys.version.split()[0])
    elif impl == "numpy":
        info.update(version=np.__version__, blas=blas_info())
    elif impl in ("torch", "torch.compile"):
        import torch
        torch.set_num_threads(threads)
        info.update(version=torch.__version__, threads=torch.get_num_threads())
    elif impl == "jax":
        import jax
        info.update(version=jax.__version__, devices=str(jax.devices()))
    return info


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


COMMANDS = ("info", "peak", "build", "time")


class Worker:
    def __init__(self, impl, threads):
        self.impl, self.threads = impl, threads
        self.fn, self.calls = None, 0

    def info(self):
        return {"info": setup(self.impl, self.threads)}

    def peak(self, threads, seconds, repeats):
        import fuseprop
        from .peak import fma_peak
        level = fuseprop.cpu_level()
        return {"level": level, "gflops": [max(fma_peak(t, seconds, level) for _ in range(repeats)) for t in threads]}

    def build(self, case, window):
        from .cases import spec_named
        self.fn = None
        gc.collect()  # the previous case's arrays go before the next one's are made
        built = spec_named(case).build([self.impl])
        if self.impl not in built.impls:
            raise RuntimeError(f"{case} has no {self.impl} implementation here")
        built.validate(self.impl)  # the first call, from the shared initial state; compiles what compiles
        fn = built.impls[self.impl]
        for _ in range(2):  # untimed: a second compilation, if any, caches, first-touch page faults
            fn()
        self.fn, self.calls = fn, calls_per_window(fn, window)
        return {"calls": self.calls, "flops": built.flops, "samples": built.samples}

    def time(self):
        """One window: an untimed call first, which wakes the library's threads (they sleep while the
        other workers run), then the calibrated number of calls."""
        self.fn()
        return {"seconds": run_calls(self.fn, self.calls)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fuseprop.bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=("fuseprop", "numpy", "torch", "torch.compile", "jax"))
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--cpus", help="comma-separated CPUs to run on")
    args = parser.parse_args(argv)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what libraries print (to fd 1 or sys.stdout) goes to stderr, never into a reply
    sys.stdout = sys.stderr
    if args.cpus:
        pin({int(c) for c in args.cpus.split(",")})
    worker = Worker(args.impl, args.threads)
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            break
        try:
            if cmd not in COMMANDS:
                raise ValueError(f"unknown command {cmd!r}; expected one of {', '.join(COMMANDS)} or quit")
            reply = {"ok": True, **getattr(worker, cmd)(**request)}
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent, which reports it
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
