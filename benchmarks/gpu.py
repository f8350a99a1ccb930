"""GPU benchmarks against PyTorch CUDA, side by side in one run (issue 5's table).

1. GEMM, device-resident operands, CUDA-event time (median of 20 after a warm-up): fuseprop's TF32
   kernel (``_C.cuda_matmul_time_ms``) against ``torch.matmul`` with TF32 allowed, at 4096^3 and at the
   shapes of an MLP's layers.
2. The training step (forward, cross-entropy, backward, SGD update) of 784-128-128-10 and of a 64-wide
   4-layer network (64-64-64-64-10) at batches 2^14, 2^16, 2^18, data already on the GPU: fuseprop
   (``model.train_step`` on DeviceArrays, which waits for the loss every step) against PyTorch eager and
   ``torch.compile`` (each step also ends in ``loss.item()``, the same wait). Median wall time of 20 steps.

Run on a machine with a GPU: ``python benchmarks/gpu.py [--out results.md]`` (cuda/gpu_check.sh runs it).
"""
from __future__ import annotations

import argparse
import datetime
import time

import numpy as np


def median_ms(fn, repeats=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def torch_matmul_ms(torch, M, N, K, repeats=20):
    a = torch.randn(M, K, device="cuda")
    b = torch.randn(K, N, device="cuda")
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def gemm_rows(torch):
    from fuseprop import _C
    rows = []
    for M, N, K in [(4096, 4096, 4096), (65536, 128, 784), (65536, 128, 128), (65536, 784, 128), (128, 784, 65536)]:
        ours = _C.cuda_matmul_time_ms(M, N, K, True, 20)
        theirs = torch_matmul_ms(torch, M, N, K)
        flop = 2.0 * M * N * K
        rows.append((f"{M}x{K} @ {K}x{N}", ours, theirs, flop / ours / 1e9, flop / theirs / 1e9))
    return rows


def torch_model(torch, sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).cuda()


def step_rows(torch):
    import fuseprop
    from fuseprop import cuda, losses, nn, optim
    rows = []
    for sizes in [(784, 128, 128, 10), (64, 64, 64, 64, 10)]:
        for B in (2**14, 2**16, 2**18):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((B, sizes[0])).astype(np.float32)
            y = rng.integers(0, sizes[-1], B)
            # fuseprop
            mods = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                mods.append(nn.Linear(a, b))
                if i + 2 < len(sizes):
                    mods.append(nn.ReLU())
            model = nn.Sequential(*mods).to("cuda")
            opt, loss_fn = optim.SGD(model.parameters(), lr=0.01), losses.CrossEntropyLoss()
            xd, yd = cuda.asarray(x), cuda.asarray(y)
            ours = median_ms(lambda: model.train_step(xd, yd, loss_fn, opt))
            fused = bool(model.train_plan.fused)
            # torch eager and compiled
            xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

            def make_step(net):
                o = torch.optim.SGD(net.parameters(), lr=0.01)
                ce = torch.nn.CrossEntropyLoss()

                def step():
                    o.zero_grad(set_to_none=True)
                    loss = ce(net(xt), yt)
                    loss.backward()
                    o.step()
                    return loss.item()
                return step
            eager = median_ms(make_step(torch_model(torch, sizes)))
            try:
                compiled_net = torch.compile(torch_model(torch, sizes))
                compiled = median_ms(make_step(compiled_net), warmup=5)
            except Exception as e:  # torch.compile needs a working Triton toolchain
                print(f"torch.compile failed for {sizes} B={B}: {type(e).__name__}: {str(e)[:200]}")
                compiled = float("nan")
            rows.append(("-".join(map(str, sizes)), B, ours, eager, compiled, fused))
            del model, opt, xd, yd
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the markdown tables here")
    args = parser.parse_args()
    import torch
    import fuseprop
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    props = fuseprop.cuda.get_device_properties()
    lines = [f"GPU benchmarks, {datetime.date.today()}, {props['name']} (sm_{props['capability'][0]}{props['capability'][1]}), "
             f"torch {torch.__version__}, fuseprop {fuseprop.__version__}. Command: `python benchmarks/gpu.py`", "",
             "| GEMM (TF32) | fuseprop ms | torch ms | fuseprop TFLOP/s | torch TFLOP/s | fuseprop / torch speed |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, ours, theirs, g1, g2 in gemm_rows(torch):
        lines.append(f"| {name} | {ours:.3f} | {theirs:.3f} | {g1 / 1e3:.1f} | {g2 / 1e3:.1f} | {theirs / ours:.2f}x |")
    print("\n".join(lines), flush=True)
    lines += ["", "| train step (SGD, CE) | batch | fuseprop ms | torch eager ms | torch.compile ms | vs eager | vs compile | fused kernel |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, B, ours, eager, compiled, fused in step_rows(torch):
        lines.append(f"| {name} | {B} | {ours:.3f} | {eager:.3f} | {compiled:.3f} | {eager / ours:.2f}x | "
                     f"{compiled / ours:.2f}x | {'yes' if fused else 'no'} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
