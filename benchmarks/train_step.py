"""Train-step throughput, side by side in one run: fuseprop vs a plain NumPy implementation vs
PyTorch eager (when installed). One step = forward, softmax cross-entropy, backward, SGD update,
float32, for dense ReLU networks. Every implementation is first checked to compute the same step.

    python benchmarks/train_step.py [--repeats 7] [--seconds 0.5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fuseprop
from fuseprop import losses, nn, optim

CONFIGS = [((784, 16, 16, 10), 32), ((784, 256, 128, 10), 128), ((784, 1024, 1024, 10), 512)]
LR = 0.01


class NumpyMLP:
    """The straightforward NumPy training step, as a user would write it."""

    def __init__(self, state):
        self.w = [state[f"{2 * i}.weight"].copy() for i in range(len(state) // 2)]
        self.b = [state[f"{2 * i}.bias"].copy() for i in range(len(state) // 2)]

    def step(self, x, y):
        hs = [x]
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            z = hs[-1] @ w.T + b
            hs.append(np.maximum(z, 0) if i < len(self.w) - 1 else z)
        logits = hs[-1]
        e = np.exp(logits - logits.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        n = len(y)
        loss = -np.log(p[np.arange(n), y]).mean()
        g = p
        g[np.arange(n), y] -= 1
        g /= n
        for i in range(len(self.w) - 1, -1, -1):
            dw, db = g.T @ hs[i], g.sum(0)
            if i > 0:
                g = (g @ self.w[i]) * (hs[i] > 0)
            self.w[i] -= LR * dw
            self.b[i] -= LR * db
        return loss


def make_fuseprop(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    model = nn.Sequential(*layers)
    opt, loss_fn = optim.SGD(model.parameters(), lr=LR), losses.CrossEntropyLoss()
    return model, (lambda x, y: model.train_step(x, y, loss_fn, opt))


def make_torch(state, sizes):
    try:
        import torch
    except ImportError:
        return None
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    model = torch.nn.Sequential(*layers)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return loss.item()

    return step


def samples_per_second(step, x, y, batch, repeats, seconds):
    """Median over `repeats` timed windows of at least `seconds` each."""
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            step(x, y)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        rates.append(n * batch / elapsed)
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    info = fuseprop.build_info()
    print(f"fuseprop {info['version']} kernels={info['kernel_level']} threads={info['num_threads']}, numpy {np.__version__}")
    print(f"{'network':<20}{'batch':>6}{'fuseprop':>14}{'numpy':>14}{'torch':>14}{'vs numpy':>10}{'vs torch':>10}")
    for sizes, batch in CONFIGS:
        fuseprop.manual_seed(0)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], size=batch)
        model, fp_step = make_fuseprop(sizes)
        state = model.state_dict()
        np_model = NumpyMLP(state)
        torch_step = make_torch(state, sizes)
        # validate before timing: the first step's loss agrees across implementations
        first = [fp_step(x, y), np_model.step(x, y)] + ([torch_step(x, y)] if torch_step else [])
        assert np.allclose(first, first[0], rtol=1e-4), first
        rate = {"fuseprop": samples_per_second(fp_step, x, y, batch, args.repeats, args.seconds),
                "numpy": samples_per_second(np_model.step, x, y, batch, args.repeats, args.seconds)}
        if torch_step:
            rate["torch"] = samples_per_second(torch_step, x, y, batch, args.repeats, args.seconds)
        t = rate.get("torch")
        torch_rate = f"{t:,.0f}" if t else "n/a"
        vs_torch = f"{rate['fuseprop'] / t:.2f}x" if t else "n/a"
        print(f"{'-'.join(map(str, sizes)):<20}{batch:>6}{rate['fuseprop']:>14,.0f}{rate['numpy']:>14,.0f}"
              f"{torch_rate:>14}{rate['fuseprop'] / rate['numpy']:>9.2f}x{vs_torch:>10}")


if __name__ == "__main__":
    main()
