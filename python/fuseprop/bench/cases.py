"""What the benchmarks time, shared by compare.py and the pytest-benchmark suites (bench_*.py).

Each case is named by a Spec and built on demand (a 2048^3 GEMM's operands, a network and its
optimizer): the built Case holds one zero-argument callable per implementation (fuseprop, NumPy
and, when it is installed, PyTorch eager) on the same float32 operands, the floating-point
operations of one call, and a validator that runs an implementation once and compares its result
with a float64 NumPy reference. Everything here uses fuseprop's public API only.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import numpy as np

import fuseprop
from fuseprop import functional as F
from fuseprop import losses, nn, optim

try:
    import torch
except ImportError:
    torch = None

IMPLS = ("fuseprop", "numpy", "torch")
LAYERS = ((32, 784, 16), (128, 784, 256), (512, 784, 1024))  # (batch, in, out): each network's first layer
NETWORKS = (((784, 16, 16, 10), 32), ((784, 256, 128, 10), 128), ((784, 1024, 1024, 10), 512))
LR = 0.01
RTOL = 1e-4  # float32 against float64, normwise: the error grows like eps * sqrt(K), about 3e-6 at K = 2048


@dataclass
class Case:
    flops: float                          # floating-point operations of one call
    samples: int                          # samples one call processes (train steps); 0 for kernels
    impls: dict[str, Callable]            # implementation -> zero-argument callable
    validate: Callable[[str], None]       # runs one implementation once; AssertionError when it is wrong


class Spec(NamedTuple):
    name: str
    build: Callable[[], Case]
    slow: bool = False


def assert_close(got, want, what, atol=0.0):
    """Normwise relative error max(|got - want| - atol) / max|want| <= RTOL (entrywise would fail near zeros)."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == np.shape(want), f"{what}: shape {got.shape}, expected {np.shape(want)}"
    err = np.max(np.abs(got - want) - atol) / np.max(np.abs(want))
    assert err <= RTOL, f"{what}: normwise relative error {err:.2e} > {RTOL:.0e}"


def _validator(impls, reference):
    """Validates implementations that return an array, or a tuple of arrays, against `reference` (the same)."""
    def validate(name):
        got = impls[name]()
        got, want = (got, reference) if isinstance(reference, tuple) else ((got,), (reference,))
        assert len(got) == len(want), f"{name}: {len(got)} outputs, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{name} output {i}")
    return validate


def _torch(*arrays):
    return [torch.from_numpy(a) for a in arrays]  # zero-copy: the very same operands


def gemm(m, n, k, trans_a=False, trans_b=False) -> Case:
    """C (M,N) = op(A) op(B); A is stored (K,M) when trans_a, B (N,K) when trans_b. NumPy and torch
    users write the transposes as .T views, which their matmul hands to BLAS as transpose flags."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)

    def op(x, t):
        return x.T if t else x

    impls = {"fuseprop": lambda: F.matmul(a, b, trans_a, trans_b),
             "numpy": lambda: op(a, trans_a) @ op(b, trans_b)}
    if torch:
        ta, tb = _torch(a, b)
        impls["torch"] = lambda: torch.matmul(op(ta, trans_a), op(tb, trans_b))
    reference = op(a.astype(np.float64), trans_a) @ op(b.astype(np.float64), trans_b)
    return Case(2.0 * m * n * k, 0, impls, _validator(impls, reference))


def _layer(batch, fan_in, fan_out):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, fan_in), dtype=np.float32)
    w = (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
    b = rng.standard_normal(fan_out, dtype=np.float32)
    return x, w, b


def linear_forward(batch, fan_in, fan_out) -> Case:
    """(y, z): z = x W^T + b, y = relu(z); x (B,IN), W (OUT,IN)."""
    x, w, b = _layer(batch, fan_in, fan_out)

    def numpy_forward():
        z = x @ w.T + b
        return np.maximum(z, 0), z

    impls = {"fuseprop": lambda: F.linear_forward(x, w, b, "relu"), "numpy": numpy_forward}
    if torch:
        tx, tw, tb = _torch(x, w, b)

        def torch_forward():
            z = torch.nn.functional.linear(tx, tw, tb)
            return torch.relu(z), z

        impls["torch"] = torch_forward
    z = x.astype(np.float64) @ w.T.astype(np.float64) + b
    return Case(2.0 * batch * fan_in * fan_out, 0, impls, _validator(impls, (np.maximum(z, 0), z)))


def linear_backward(batch, fan_in, fan_out) -> Case:
    """(dx, dW, db) of y = relu(x W^T + b): dz = dy * (z > 0), dx = dz W, dW = dz^T x, db = sum(dz)."""
    x, w, b = _layer(batch, fan_in, fan_out)
    z = x @ w.T + b
    y = np.maximum(z, 0)
    dy = np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32)

    def numpy_backward():
        dz = dy * (z > 0)
        return dz @ w, dz.T @ x, dz.sum(0)

    impls = {"fuseprop": lambda: F.linear_backward(dy, x, w, z, y, "relu"), "numpy": numpy_backward}
    if torch:
        tdy, tx, tw, tz = _torch(dy, x, w, z)

        def torch_backward():  # what autograd computes for linear + relu (a mask, two matmuls, a sum), graph-free
            dz = tdy * (tz > 0)
            return dz @ tw, dz.T @ tx, dz.sum(0)

        impls["torch"] = torch_backward
    dz = dy.astype(np.float64) * (z > 0)  # the float32 z's mask, so that no entry flips sign
    reference = (dz @ w.astype(np.float64), dz.T @ x.astype(np.float64), dz.sum(0))
    return Case(4.0 * batch * fan_in * fan_out, 0, impls, _validator(impls, reference))


class NumpyMLP:
    """The straightforward NumPy training step of a ReLU MLP (softmax cross-entropy, SGD), as a user writes it."""

    def __init__(self, state):
        self.w = [state[f"{2 * i}.weight"].copy() for i in range(len(state) // 2)]
        self.b = [state[f"{2 * i}.bias"].copy() for i in range(len(state) // 2)]

    def parameters(self):
        return [p for wb in zip(self.w, self.b) for p in wb]  # the state-dict order: 0.weight, 0.bias, ...

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


def _mlp_layers(module, sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [module.Linear(a, b)] + ([module.ReLU()] if i < len(sizes) - 2 else [])
    return layers


def train_flops(sizes, batch):
    """Forward x W^T, backward dW = dz^T x for every layer and dx = dz W for all but the first."""
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2.0 * batch * (2 * sum(macs) + sum(macs[1:]))


def train_step(sizes, batch) -> Case:
    """One SGD step (forward, softmax cross-entropy, backward, update) of a ReLU MLP, from one shared initial state."""
    fuseprop.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=batch)
    model = nn.Sequential(*_mlp_layers(nn, sizes))
    opt, loss_fn = optim.SGD(model.parameters(), lr=LR), losses.CrossEntropyLoss()
    state = model.state_dict()
    mlp = NumpyMLP(state)
    impls = {"fuseprop": lambda: model.train_step(x, y, loss_fn, opt), "numpy": lambda: mlp.step(x, y)}
    params = {"fuseprop": lambda: [p.data for p in model.parameters()], "numpy": mlp.parameters}
    if torch:
        tmodel = torch.nn.Sequential(*_mlp_layers(torch.nn, sizes))
        tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        topt = torch.optim.SGD(tmodel.parameters(), lr=LR)

        def torch_step():
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
            loss.backward()
            topt.step()
            return loss.item()

        impls["torch"] = torch_step
        params["torch"] = lambda: [p.detach().numpy() for p in tmodel.parameters()]
    ref = NumpyMLP({k: v.astype(np.float64) for k, v in state.items()})
    ref_before = [p.copy() for p in ref.parameters()]
    ref_loss = ref.step(x.astype(np.float64), y)
    ref_updates = [after - before for after, before in zip(ref.parameters(), ref_before)]

    def validate(name):
        """The first step's loss and every parameter's update (not the updated weights, which barely move)."""
        before = [p.copy() for p in params[name]()]
        assert_close(impls[name](), ref_loss, f"{name} loss")
        for i, (after, b, want) in enumerate(zip(params[name](), before, ref_updates)):
            # float32 weights hold the update only to eps * |w|, which is up to 2e-4 of the first layer's update
            assert_close(after.astype(np.float64) - b, want, f"{name} update of parameter {i}",
                         atol=np.finfo(np.float32).eps * np.abs(after))

    return Case(train_flops(sizes, batch), batch, impls, validate)


def _gemm_specs():
    specs = [Spec(f"gemm {n}x{n}x{n}", partial(gemm, n, n, n), slow=True) for n in (1024, 2048)]
    for batch, fan_in, fan_out in LAYERS:
        layer = f"{fan_in}-{fan_out} b{batch}"
        specs += [Spec(f"gemm {layer} fwd x.W.T", partial(gemm, batch, fan_out, fan_in, trans_b=True)),
                  Spec(f"gemm {layer} dW dz.T.x", partial(gemm, fan_out, fan_in, batch, trans_a=True)),
                  Spec(f"gemm {layer} dx dz.W", partial(gemm, batch, fan_in, fan_out))]
    return specs


# names: MxNxK GEMMs, in-out layers, networks, b<batch>; only characters that `pytest -k` accepts
SPECS = {
    "gemm": _gemm_specs(),
    "linear": [Spec(f"linear {i}-{o} b{b} relu {d}", partial(f, b, i, o))
               for b, i, o in LAYERS for d, f in (("fwd", linear_forward), ("bwd", linear_backward))],
    "train": [Spec(f"train {'-'.join(map(str, sizes))} b{batch}", partial(train_step, sizes, batch))
              for sizes, batch in NETWORKS],
}
