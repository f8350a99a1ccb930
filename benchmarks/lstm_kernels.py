"""The LSTM training step's kernels against PyTorch eager: fuseprop.functional.recurrent_forward +
recurrent_backward vs torch.nn.LSTM forward + backward (autograd), at issue 15's shape by default.

    python benchmarks/lstm_kernels.py [--cell lstm|gru|rnn] [--batch 128] [--steps 28] [--inputs 28]
                                      [--hidden 128] [--threads 2] [--rounds 15] [--window 0.25] [--dtype float32]

Each library runs alone in its own process (this script with --worker), so no thread pool shares one with the
other; the parent asks them in turn, round after round, to time one window of steps, and reports the medians
over rounds and their ratio. Both compute the same things: the outputs and every gradient (x's too, x requiring
grad in torch), for the loss sum(grad_y * y), from the same float32 inputs and weights. Before timing, each
worker checks its step against the float64 NumPy reference (fuseprop.reference) on those inputs. GFLOP/s count
the GEMMs' multiply-adds (forward 2 B T G H (I + H), backward twice that); the peak is fuseprop's measured
multiply-add rate on the same threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def arrays(args, dtype):
    """The step's inputs, weights and output gradient, the same in every process (seeded)."""
    rng = np.random.default_rng(0)
    g, B, T, I, H = GATES[args.cell], args.batch, args.steps, args.inputs, args.hidden
    k = H ** -0.5  # PyTorch's initialisation range
    return dict(x=rng.standard_normal((B, T, I)).astype(dtype), w_ih=rng.uniform(-k, k, (g * H, I)).astype(dtype),
                w_hh=rng.uniform(-k, k, (g * H, H)).astype(dtype), b_ih=rng.uniform(-k, k, g * H).astype(dtype),
                b_hh=rng.uniform(-k, k, g * H).astype(dtype),
                grad_y=(rng.standard_normal((B, T, H)) / np.sqrt(B * T)).astype(dtype))


def expected(args, a):
    """y and the gradients (x, w_ih, w_hh, b_ih, b_hh) in float64 by fuseprop.reference."""
    from fuseprop import reference
    a64 = {k: v.astype(np.float64) for k, v in a.items()}
    y, _, _, saved = reference.recurrent_forward(args.cell, a64["x"], None, None, a64["w_ih"], a64["w_hh"], a64["b_ih"],
                                                 a64["b_hh"])
    g = reference.recurrent_backward(args.cell, a64["grad_y"], None, None, a64["x"], None, None, a64["w_ih"],
                                     a64["w_hh"], a64["b_hh"], y, saved)
    return [y, g[0], g[3], g[4], g[5], g[6]]


def fuseprop_step(args, a):
    import fuseprop
    from fuseprop import functional as F
    fuseprop.set_num_threads(args.threads)

    def step():
        y, _, _, saved = F.recurrent_forward(args.cell, a["x"], None, None, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
        g = F.recurrent_backward(args.cell, a["grad_y"], None, None, a["x"], None, None, a["w_ih"], a["w_hh"],
                                 a["b_hh"], y, saved)
        return [y, g[0], g[3], g[4], g[5], g[6]]
    return step, f"fuseprop {fuseprop.__version__} ({fuseprop.cpu_level()}, {fuseprop.get_num_threads()} threads)"


def torch_step(args, a):
    import torch
    torch.set_num_threads(args.threads)
    layer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[args.cell](
        args.inputs, args.hidden, batch_first=True, dtype=getattr(torch, args.dtype))
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(layer, f"{'weight' if name[0] == 'w' else 'bias'}_{name[2:]}_l0").copy_(torch.from_numpy(a[name]))
    x, grad_y = torch.from_numpy(a["x"]).requires_grad_(), torch.from_numpy(a["grad_y"])
    params = [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0]

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = layer(x)
        y.backward(grad_y)
        return [t.detach().numpy() for t in [y, x.grad] + [p.grad for p in params]]
    return step, f"torch {torch.__version__} eager ({torch.get_num_threads()} threads)"


def worker(args):
    """Builds and validates one library's step, then times a window per request on stdin."""
    a = arrays(args, np.dtype(args.dtype))
    step, name = (fuseprop_step if args.worker == "fuseprop" else torch_step)(args, a)
    tolerance = 1e-4 if args.dtype == "float32" else 1e-10
    for got, want, what in zip(step(), expected(args, a), ("y", "grad_x", "grad_w_ih", "grad_w_hh", "grad_b_ih",
                                                           "grad_b_hh")):
        err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        if not err <= tolerance:
            raise SystemExit(f"{name}: {what} differs from the float64 reference by {err:.2e} (> {tolerance:g})")
    for _ in range(3):
        step()  # warm: allocator, thread pools
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < args.window:
        step()
        calls += 1
    print(json.dumps({"name": name, "calls": calls}), flush=True)
    for line in sys.stdin:
        if line.strip() != "time":
            break
        start = time.perf_counter()
        for _ in range(calls):
            step()
        print(json.dumps({"seconds": (time.perf_counter() - start) / calls}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", choices=sorted(GATES), default="lstm")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--inputs", type=int, default=28)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--window", type=float, default=0.25, help="seconds per timed window")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--worker", choices=["fuseprop", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS=str(args.threads))
    procs, names = {}, {}
    for lib in ("fuseprop", "torch"):
        procs[lib] = subprocess.Popen([sys.executable, __file__, "--worker", lib] + sys.argv[1:], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=env)
        line = procs[lib].stdout.readline()
        if not line:
            raise SystemExit(f"the {lib} worker failed (see above)")
        names[lib] = json.loads(line)["name"]
    times = {lib: [] for lib in procs}
    for _ in range(args.rounds):  # interleaved: one window each, in turn
        for lib, proc in procs.items():
            proc.stdin.write("time\n")
            proc.stdin.flush()
            times[lib].append(json.loads(proc.stdout.readline())["seconds"])
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()

    from fuseprop import _C
    g, B, T, I, H = GATES[args.cell], args.batch, args.steps, args.inputs, args.hidden
    flops = 6 * B * T * g * H * (I + H)
    peak = _C.fma_peak(args.threads) if args.dtype == "float32" else None
    print(f"{args.cell} training step (forward + backward, every gradient), B={B} T={T} I={I} H={H} {args.dtype}, "
          f"{args.threads} threads, median of {args.rounds} windows of ~{args.window:g} s; both checked against the "
          f"float64 reference first")
    med = {lib: float(np.median(t)) for lib, t in times.items()}
    for lib in procs:
        rate = flops / med[lib] / 1e9
        eff = f", {100 * rate / peak:.0f}% of the measured peak {peak:.0f}" if peak else ""
        print(f"  {names[lib]:<45} {med[lib] * 1e3:7.2f} ms (min {min(times[lib]) * 1e3:.2f})  {rate:6.1f} GFLOP/s{eff}")
    print(f"  torch eager / fuseprop: {med['torch'] / med['fuseprop']:.2f}x")


if __name__ == "__main__":
    main()
