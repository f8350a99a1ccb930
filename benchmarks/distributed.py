"""Data-parallel scaling on this machine: 1 vs 2 MPI ranks (fuseprop.distributed), samples/s and the
share of the step spent in communication, next to one process running the fused native step.

    python benchmarks/distributed.py [--ranks 1 2] [--repeat 3] [--windows 5] [--steps 40]

It starts itself under mpirun (fuseprop.distributed.mpirun_command) once per rank count and repeat,
interleaving the rank counts and the single-process baseline, and reports the medians over repeats. Each rank uses
threads_per_rank() threads (1 when mpirun binds a rank per core, as it does by default). Before timing,
every configuration checks that all ranks hold the same weights after a few steps. Figures are medians
over windows of `--steps` steps; "comm" is the part of a step spent starting, testing and waiting for
the gradient all-reduces (what the backward did not hide), "all-reduce" the time of one all-reduce of
the whole gradient buffer alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

NETWORKS = {"784-256-128-10": [784, 256, 128, 10], "784-16-16-10": [784, 16, 16, 10]}
BATCHES = (128, 1024)  # global batches


def build(sizes, seed=0):
    from fuseprop import nn
    g = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, generator=g))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def data(sizes, n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], n)


def worker(args):
    import fuseprop
    from mpi4py import MPI
    from fuseprop import losses, optim
    from fuseprop.distributed import DataParallel, threads_per_rank
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if "OMP_NUM_THREADS" not in os.environ:
        fuseprop.set_num_threads(threads_per_rank(comm))
    rows = []
    for name, sizes in NETWORKS.items():
        for batch in BATCHES:
            model = build(sizes)
            ddp = DataParallel(model, timeout=60)
            opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            loss_fn = losses.CrossEntropyLoss()
            x, y = data(sizes, batch * 8)
            parts = np.array_split(np.arange(batch), size)[rank]
            shards = [(x[i * batch:(i + 1) * batch][parts], y[i * batch:(i + 1) * batch][parts]) for i in range(8)]
            for i in range(5):  # warm up, then check the replicas agree
                ddp.train_step(*shards[i % 8], loss_fn, opt)
            sums = np.array([float(np.sum(p.data, dtype=np.float64)) for p in model.parameters()])
            if not np.array_equal(ddp.allreduce(sums), sums * size):
                raise SystemExit(f"rank {rank}: the replicas differ after the warm-up ({name}, batch {batch})")
            rates, shares = [], []
            for _ in range(args.windows):
                comm.Barrier()
                before = dict(ddp.stats)
                start = time.perf_counter()
                for i in range(args.steps):
                    ddp.train_step(*shards[i % 8], loss_fn, opt)
                seconds = time.perf_counter() - start
                rates.append(args.steps * batch / seconds)
                shares.append((ddp.stats["comm_seconds"] - before["comm_seconds"])
                              / (ddp.stats["step_seconds"] - before["step_seconds"]))
            flat, alone = ddp.grad_buffer.copy(), []
            for _ in range(20):
                comm.Barrier()
                start = time.perf_counter()
                comm.Allreduce(MPI.IN_PLACE, flat)
                alone.append(time.perf_counter() - start)
            rows.append(dict(network=name, batch=batch, ranks=size, threads=fuseprop.get_num_threads(),
                             samples_per_s=float(np.median(rates)), comm_share=float(np.median(shares)),
                             allreduce_us=float(np.median(alone)) * 1e6, buckets=ddp.bucket_count,
                             grad_bytes=ddp.grad_buffer.nbytes))
    if rank == 0:
        print("RESULT " + json.dumps(rows), flush=True)


def single_process(args, threads):
    """One process, no MPI: Sequential.train_step (the fused native step) on `threads` threads."""
    import fuseprop
    from fuseprop import losses, optim
    fuseprop.set_num_threads(threads)
    rows = []
    for name, sizes in NETWORKS.items():
        for batch in BATCHES:
            model = build(sizes)
            opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            loss_fn = losses.CrossEntropyLoss()
            x, y = data(sizes, batch * 8)
            batches = [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(8)]
            for i in range(5):
                model.train_step(*batches[i], loss_fn, opt)
            rates = []
            for _ in range(args.windows):
                start = time.perf_counter()
                for i in range(args.steps):
                    model.train_step(*batches[i % 8], loss_fn, opt)
                rates.append(args.steps * batch / (time.perf_counter() - start))
            rows.append(dict(network=name, batch=batch, samples_per_s=float(np.median(rates))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import fuseprop
    from fuseprop.distributed import mpirun_command
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    runs, base_runs = {}, {}
    for _ in range(args.repeat):
        for ranks in args.ranks:
            proc = subprocess.run(mpirun_command(ranks) + [sys.executable, os.path.abspath(__file__), "--worker",
                                                           "--windows", str(args.windows), "--steps", str(args.steps)],
                                  capture_output=True, text=True, timeout=1800)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"{ranks} rank(s) failed:\n{proc.stdout}\n{proc.stderr}")
            for row in json.loads(line[len("RESULT "):]):
                runs.setdefault((row["network"], row["batch"], ranks), []).append(row)
        for threads in sorted({1, cpus}):
            for r in single_process(args, threads):
                base_runs.setdefault(threads, {}).setdefault((r["network"], r["batch"]), []).append(r["samples_per_s"])
    results = {key: {k: float(np.median([row[k] for row in rows])) for k in ("samples_per_s", "comm_share",
                                                                             "allreduce_us")}
               for key, rows in runs.items()}
    baseline = {t: {key: float(np.median(v)) for key, v in rates.items()} for t, rates in base_runs.items()}

    print(f"fuseprop {fuseprop.__version__}, kernels {fuseprop.cpu_level()}, {cpus} CPUs; load average "
          f"{os.getloadavg()[0]:.2f} at the end; medians over {args.repeat} runs of the medians of {args.windows} "
          f"windows of {args.steps} steps")
    head = f"{'network':16} {'batch':>6}" + "".join(f"  {'fused 1p/' + str(t) + 't':>12}" for t in baseline)
    for ranks in args.ranks:
        head += f"  {str(ranks) + ' rank(s)':>10} {'comm':>5}"
    head += f"  {'2r/1r':>6}  {'all-reduce':>10}" if set(args.ranks) >= {1, 2} else ""
    print(head)
    for name in NETWORKS:
        for batch in BATCHES:
            line = f"{name:16} {batch:6d}" + "".join(f"  {baseline[t][(name, batch)]:12,.0f}" for t in baseline)
            for ranks in args.ranks:
                row = results[(name, batch, ranks)]
                line += f"  {row['samples_per_s']:10,.0f} {row['comm_share']:5.0%}"
            if set(args.ranks) >= {1, 2}:
                two, one = results[(name, batch, 2)], results[(name, batch, 1)]
                line += f"  {two['samples_per_s'] / one['samples_per_s']:5.2f}x  {two['allreduce_us']:8.0f}us"
            print(line)
    print("samples/s of the global batch; 'fused 1p/Nt': one process, no MPI, Sequential.train_step on N threads; "
          "'N rank(s)': DataParallel.train_step under mpirun, 1 thread per rank, 'comm' its share of the step; "
          "'all-reduce': one Allreduce of the whole gradient buffer on 2 ranks")


if __name__ == "__main__":
    main()
