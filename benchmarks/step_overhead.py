"""How much of a training step runs outside fuseprop's native calls: every fuseprop._C entry the layers call is
wrapped in a timer, and the step's wall time is compared with the time spent inside them (Python, argument checks,
the per-layer step's bookkeeping). Best of 7 windows of 10 steps, in-process.

    python benchmarks/step_overhead.py --case cnn|lstm [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import fuseprop
from fuseprop import _C
from fuseprop.bench import cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["cnn", "lstm"], default="cnn")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        fuseprop.set_num_threads(args.threads)
    inside = [0.0]
    for name in dir(_C):
        if name.endswith(("_forward", "_backward", "_step", "_loss")) and not name.startswith("cuda"):
            native = getattr(_C, name)

            def timed(*a, native=native, **k):
                t = time.perf_counter()
                try:
                    return native(*a, **k)
                finally:
                    inside[0] += time.perf_counter() - t
            setattr(_C, name, timed)
    step = (cases.cnn_train_step if args.case == "cnn" else cases.lstm_train_step)(impls=("fuseprop",)).impls["fuseprop"]
    for _ in range(5):
        step()
    best = None
    for _ in range(7):
        inside[0] = 0.0
        t = time.perf_counter()
        for _ in range(10):
            step()
        total, native = (time.perf_counter() - t) / 10, inside[0] / 10
        best = min(best or (total, native), (total, native))
    total, native = best
    print(f"{args.case}: {total * 1e3:.2f} ms a step, {native * 1e3:.2f} ms in native calls, "
          f"{(total - native) * 1e3:.2f} ms outside them ({(total - native) / total:.0%}) on "
          f"{fuseprop.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
