"""What the benchmarks time, shared by compare.py (through worker.py, one process per library) and the
pytest-benchmark suites (bench_*.py).

Each case is named by a Spec and built on demand, for the implementations asked for: a 2048^3
GEMM's operands, a network and its optimizer. The built Case holds one zero-argument callable per
implementation on the same float32 operands (fuseprop; NumPy; and, when installed, PyTorch eager,
the torch.compile'd training step and the JAX jit'ted one), the floating-point operations of one call,
and a validator that runs an implementation once and compares its result with a float64 NumPy
reference. PyTorch and JAX are imported only when a case is built for them, so a process that builds
only fuseprop's or NumPy's implementation never loads them. Everything here uses fuseprop's public API.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

import fuseprop
from fuseprop import functional as F
from fuseprop import losses, nn, optim

IMPLS = ("fuseprop", "numpy", "torch", "torch.compile", "jax")
PEERS = IMPLS[1:]
KERNEL_IMPLS = ("fuseprop", "numpy", "torch", "jax")  # GEMMs and layers: torch.compile adds nothing to one op
_MODULE = {"torch": "torch", "torch.compile": "torch", "jax": "jax"}  # what a peer needs installed

LAYERS = ((32, 784, 16), (128, 784, 256), (512, 784, 1024))  # (batch, in, out): each network's first layer
NETWORKS = (((784, 16, 16, 10), 32), ((784, 256, 128, 10), 128), ((784, 1024, 1024, 10), 512))
LR = 0.01
RTOL = 1e-4  # float32 against float64, normwise: the error grows like eps * sqrt(K), about 3e-6 at K = 2048


def installed(impl: str) -> bool:
    """Whether `impl` can run here (its library is importable), without importing it."""
    return impl not in _MODULE or importlib.util.find_spec(_MODULE[impl]) is not None


@dataclass
class Case:
    flops: float                          # floating-point operations of one call
    samples: int                          # samples one call processes (train steps); 0 for kernels
    impls: dict[str, Callable]            # implementation -> zero-argument callable
    validate: Callable[[str], None]       # runs one implementation once; AssertionError when it is wrong


class Spec(NamedTuple):
    name: str
    make: Callable[..., Case]             # make(impls=...) builds the case for those implementations
    impls: tuple[str, ...]                # the implementations this case has
    slow: bool = False

    def build(self, impls: Optional[Sequence[str]] = None) -> Case:
        """The case for `impls` (None: every one this case has), less those not installed here."""
        wanted = self.impls if impls is None else impls
        return self.make(impls=tuple(i for i in self.impls if i in wanted and installed(i)))


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


def _torch():
    return importlib.import_module("torch")


def _jax():
    """jax and jax.numpy. JAX dispatches asynchronously: every callable below waits for its result, as
    the other libraries' calls do, so that a window times the work and not only its dispatch."""
    return importlib.import_module("jax"), importlib.import_module("jax.numpy")


def _op(x, t):
    return x.T if t else x


def gemm(m, n, k, trans_a=False, trans_b=False, *, impls=KERNEL_IMPLS) -> Case:
    """C (M,N) = op(A) op(B); A is stored (K,M) when trans_a, B (N,K) when trans_b. NumPy, torch and JAX
    users write the transposes as .T views, which their matmul hands to BLAS (or XLA's dot) as flags."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    fns = {}
    if "fuseprop" in impls:
        fns["fuseprop"] = lambda: F.matmul(a, b, trans_a, trans_b)
    if "numpy" in impls:
        fns["numpy"] = lambda: _op(a, trans_a) @ _op(b, trans_b)
    if "torch" in impls:
        torch = _torch()
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)  # zero-copy: the very same operands
        fns["torch"] = lambda: torch.matmul(_op(ta, trans_a), _op(tb, trans_b))
    if "jax" in impls:
        jax, jnp = _jax()
        ja, jb = jnp.array(a), jnp.array(b)
        matmul = jax.jit(lambda x, y: jnp.matmul(_op(x, trans_a), _op(y, trans_b)))
        fns["jax"] = lambda: matmul(ja, jb).block_until_ready()
    reference = _op(a.astype(np.float64), trans_a) @ _op(b.astype(np.float64), trans_b)
    return Case(2.0 * m * n * k, 0, fns, _validator(fns, reference))


def _layer(batch, fan_in, fan_out):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, fan_in), dtype=np.float32)
    w = (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
    b = rng.standard_normal(fan_out, dtype=np.float32)
    return x, w, b


def linear_forward(batch, fan_in, fan_out, *, impls=KERNEL_IMPLS) -> Case:
    """(y, z): z = x W^T + b, y = relu(z); x (B,IN), W (OUT,IN)."""
    x, w, b = _layer(batch, fan_in, fan_out)

    def numpy_forward():
        z = x @ w.T + b
        return np.maximum(z, 0), z

    fns = {}
    if "fuseprop" in impls:
        fns["fuseprop"] = lambda: F.linear_forward(x, w, b, "relu")
    if "numpy" in impls:
        fns["numpy"] = numpy_forward
    if "torch" in impls:
        torch = _torch()
        tx, tw, tb = (torch.from_numpy(v) for v in (x, w, b))

        def torch_forward():
            z = torch.nn.functional.linear(tx, tw, tb)
            return torch.relu(z), z

        fns["torch"] = torch_forward
    if "jax" in impls:
        jax, jnp = _jax()
        jx, jw, jb = (jnp.array(v) for v in (x, w, b))

        @jax.jit
        def jax_forward(x, w, b):
            z = x @ w.T + b
            return jax.nn.relu(z), z

        fns["jax"] = lambda: jax.block_until_ready(jax_forward(jx, jw, jb))
    z = x.astype(np.float64) @ w.T.astype(np.float64) + b
    return Case(2.0 * batch * fan_in * fan_out, 0, fns, _validator(fns, (np.maximum(z, 0), z)))


def linear_backward(batch, fan_in, fan_out, *, impls=KERNEL_IMPLS) -> Case:
    """(dx, dW, db) of y = relu(x W^T + b): dz = dy * (z > 0), dx = dz W, dW = dz^T x, db = sum(dz)."""
    x, w, b = _layer(batch, fan_in, fan_out)
    z = x @ w.T + b
    y = np.maximum(z, 0)
    dy = np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32)

    def backward(dy, x, w, z):  # what autograd computes for linear + relu (a mask, two matmuls, a sum), graph-free
        dz = dy * (z > 0)
        return dz @ w, dz.T @ x, dz.sum(0)

    fns = {}
    if "fuseprop" in impls:
        fns["fuseprop"] = lambda: F.linear_backward(dy, x, w, z, y, "relu")
    if "numpy" in impls:
        fns["numpy"] = lambda: backward(dy, x, w, z)
    if "torch" in impls:
        torch = _torch()
        operands = [torch.from_numpy(v) for v in (dy, x, w, z)]
        fns["torch"] = lambda: backward(*operands)
    if "jax" in impls:
        jax, jnp = _jax()
        operands = [jnp.array(v) for v in (dy, x, w, z)]
        jax_backward = jax.jit(backward)
        fns["jax"] = lambda: jax.block_until_ready(jax_backward(*operands))
    dz = dy.astype(np.float64) * (z > 0)  # the float32 z's mask, so that no entry flips sign
    reference = (dz @ w.astype(np.float64), dz.T @ x.astype(np.float64), dz.sum(0))
    return Case(4.0 * batch * fan_in * fan_out, 0, fns, _validator(fns, reference))


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


def _torch_model(torch, sizes, state):
    model = torch.nn.Sequential(*_mlp_layers(torch.nn, sizes))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    return model


def _torch_eager_step(sizes, state, x, y):
    """The usual PyTorch loop body: zero_grad, forward, cross_entropy, backward, SGD step."""
    torch = _torch()
    model = _torch_model(torch, sizes, state)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    return step, lambda: [p.detach().numpy() for p in model.parameters()]


def _torch_compiled_step(sizes, state, x, y):
    """The whole step as ONE compiled graph: torch.func computes the loss and its gradient, and the SGD
    update (p -= lr * g) is written in place into the parameters, all inside the
    function torch.compile(fullgraph=True) compiles (forward, loss, backward, update). The first call
    compiles; the benchmark's validation and warm-up calls absorb it, so no timed window includes it."""
    torch = _torch()
    model = _torch_model(torch, sizes, state)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}  # plain tensors, updated in place

    def loss_of(p, x, y):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    grad_and_loss = torch.func.grad_and_value(loss_of)

    def sgd_step(p, x, y):
        grads, loss = grad_and_loss(p, x, y)
        for name, g in grads.items():
            # p - lr * g, the same float32 result as torch.optim.SGD's p.add_(g, alpha=-lr); but not written
            # that way: torch 2.13's inductor drops alpha for the 2-D weights (an update lr^-1 times too large)
            p[name].sub_(LR * g)
        return loss

    compiled = torch.compile(sgd_step, fullgraph=True)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return (lambda: compiled(params, tx, ty).item()), lambda: [p.numpy() for p in params.values()]


def _jax_step(sizes, state, x, y):
    """The whole step under one jax.jit: value_and_grad of the loss, then the SGD update, with the
    parameters donated (donate_argnums) so XLA may write the new ones over the old, as in-place updates do."""
    jax, jnp = _jax()
    params = [(jnp.array(state[f"{2 * i}.weight"]), jnp.array(state[f"{2 * i}.bias"])) for i in range(len(sizes) - 1)]

    def loss_of(params, x, y):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w.T + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))

    def sgd_step(params, x, y):
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), loss

    jitted = jax.jit(sgd_step, donate_argnums=0)
    jx, jy = jnp.array(x), jnp.array(y.astype(np.int32))  # JAX's integers are 32-bit unless x64 is enabled
    current = [params]

    def step():
        current[0], loss = jitted(current[0], jx, jy)
        return float(loss)  # waits for the step, as .item() does in torch

    return step, lambda: [np.array(p) for wb in current[0] for p in wb]


def train_step(sizes, batch, *, impls=IMPLS) -> Case:
    """One SGD step (forward, softmax cross-entropy, backward, update) of a ReLU MLP, from one shared initial state."""
    fuseprop.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=batch)
    model = nn.Sequential(*_mlp_layers(nn, sizes))
    state = model.state_dict()
    fns, params = {}, {}
    if "fuseprop" in impls:
        opt, loss_fn = optim.SGD(model.parameters(), lr=LR), losses.CrossEntropyLoss()
        fns["fuseprop"] = lambda: model.train_step(x, y, loss_fn, opt)
        params["fuseprop"] = lambda: [p.data for p in model.parameters()]
    if "numpy" in impls:
        mlp = NumpyMLP(state)
        fns["numpy"], params["numpy"] = (lambda: mlp.step(x, y)), mlp.parameters
    for impl, make in (("torch", _torch_eager_step), ("torch.compile", _torch_compiled_step), ("jax", _jax_step)):
        if impl in impls:
            fns[impl], params[impl] = make(sizes, state, x, y)
    ref = NumpyMLP({k: v.astype(np.float64) for k, v in state.items()})
    ref_before = [p.copy() for p in ref.parameters()]
    ref_loss = ref.step(x.astype(np.float64), y)
    ref_updates = [after - before for after, before in zip(ref.parameters(), ref_before)]

    names = [f"parameter {i}" for i in range(len(ref_updates))]
    return Case(train_flops(sizes, batch), batch, fns, _step_validator(fns, params, names, ref_loss, ref_updates))


def _step_validator(fns, params, names, ref_loss, ref_updates):
    """validate(name) of a training step: the first step's loss and every parameter's update (not the updated
    weights, which barely move) against the float64 reference's; ref_updates in the order of names (a list) or by
    name (a dict)."""
    def validate(name):
        before = [np.array(p, copy=True) for p in params[name]()]
        assert_close(fns[name](), ref_loss, f"{name} loss")
        for i, (pname, after, b) in enumerate(zip(names, params[name](), before)):
            want = ref_updates[pname] if isinstance(ref_updates, dict) else ref_updates[i]
            # float32 weights hold the update only to eps * |w|, which is up to 2e-4 of the first layer's update
            assert_close(after.astype(np.float64) - b, want, f"{name} update of {pname}",
                         atol=np.finfo(np.float32).eps * np.abs(after))
    return validate


# -- the Fashion-MNIST CNN's training step (python -m fuseprop train --model cnn): two 3x3 conv / batch norm /
# ReLU / 2x2 max pool blocks of 32 and 64 channels, Linear(3136, 128), ReLU, Linear(128, 10); SGD

CNN_BATCH = 128


def _cnn_layers(module, dtype=None):
    kw = {} if dtype is None else {"dtype": dtype}
    layers = []
    for c, o in ((1, 32), (32, 64)):
        layers += [module.Conv2d(c, o, 3, padding=1, bias=False, **kw), module.BatchNorm2d(o, **kw), module.ReLU(),
                   module.MaxPool2d(2)]
    return layers + [module.Flatten(), module.Linear(64 * 7 * 7, 128, **kw), module.ReLU(),
                     module.Linear(128, 10, **kw)]


def cnn_flops(batch):
    """Forward, and backward's weight gradients everywhere and input gradients but for the first conv."""
    conv1, conv2 = 2.0 * 32 * 9 * 28 * 28, 2.0 * 64 * 32 * 9 * 14 * 14
    dense = 2.0 * (64 * 7 * 7 * 128 + 128 * 10)
    return batch * (3 * (conv1 + conv2 + dense) - conv1)


def _cnn_reference_step(state, x, y):
    """(loss, {name: update}) of one float64 SGD step computed with fuseprop.reference (NumPy, no native code)."""
    from fuseprop import reference as R
    p = {k: v.astype(np.float64) for k, v in state.items()}
    h, tape = x.astype(np.float64), []
    for i, (w, bn) in enumerate((("0", "1"), ("4", "5"))):
        z, _ = R.conv2d_forward(h, p[f"{w}.weight"], None, padding=(1, 1))
        rm, rv = p[f"{bn}.running_mean"].copy(), p[f"{bn}.running_var"].copy()
        b, mean, invstd = R.batch_norm_forward(z, p[f"{bn}.weight"], p[f"{bn}.bias"], rm, rv, True)
        r = np.maximum(b, 0)
        pooled, idx = R.max_pool2d_forward(r, 2)
        tape.append((h, z, b, mean, invstd, r, idx))
        h = pooled
    flat = h.reshape(len(h), -1)
    a1, _ = R.linear_forward(flat, p["9.weight"], p["9.bias"])
    r1 = np.maximum(a1, 0)
    logits, _ = R.linear_forward(r1, p["11.weight"], p["11.bias"])
    loss, g = R.cross_entropy_loss(logits, y)
    grads = {}
    g, grads["11.weight"], grads["11.bias"] = R.linear_backward(g, r1, p["11.weight"], None, None)
    g, grads["9.weight"], grads["9.bias"] = R.linear_backward(g * (a1 > 0), flat, p["9.weight"], None, None)
    g = g.reshape(h.shape)
    for (w, bn), (hin, z, b, mean, invstd, r, idx) in zip((("4", "5"), ("0", "1")), reversed(tape)):
        g = R.max_pool2d_backward(g, idx, r.shape[2:]) * (b > 0)
        g, grads[f"{bn}.weight"], grads[f"{bn}.bias"] = R.batch_norm_backward(g, z, p[f"{bn}.weight"], mean, invstd,
                                                                              True)
        g, grads[f"{w}.weight"], _ = R.conv2d_backward(g, hin, p[f"{w}.weight"], None, None, padding=(1, 1),
                                                       has_bias=False, need_grad_x=w != "0")
    return loss, {k: -LR * v for k, v in grads.items()}


def _torch_cnn(torch, state):
    model = torch.nn.Sequential(*_cnn_layers(torch.nn))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    return model


def _fuseprop_sgd_step(model, x, y):
    """(step, parameters) of fuseprop's SGD training step of model on (x, y), cross-entropy."""
    opt, loss_fn = optim.SGD(model.parameters(), lr=LR), losses.CrossEntropyLoss()
    return (lambda: model.train_step(x, y, loss_fn, opt)), (lambda: [p.data for p in model.parameters()])


def _torch_sgd_step(torch, forward_loss, parameters, x, y, compiled):
    """(step, parameters) of a torch SGD step: forward_loss(x, y) (torch.compile'd when compiled: its backward
    with it), backward, update."""
    parameters = list(parameters)
    opt = torch.optim.SGD(parameters, lr=LR)
    forward_loss = torch.compile(forward_loss) if compiled else forward_loss
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = forward_loss(tx, ty)
        loss.backward()
        opt.step()
        return loss.item()
    return step, (lambda: [p.detach().numpy() for p in parameters])


def cnn_train_step(batch=CNN_BATCH, *, impls=IMPLS) -> Case:
    """One SGD step of the Fashion-MNIST CNN, from one shared initial state (batch statistics: training mode)."""
    fuseprop.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=batch)
    model = nn.Sequential(*_cnn_layers(nn))
    state = model.state_dict()
    names = [k for k, _ in model.named_parameters()]
    fns, params = {}, {}
    if "fuseprop" in impls:
        fns["fuseprop"], params["fuseprop"] = _fuseprop_sgd_step(model, x, y)
    for impl in ("torch", "torch.compile"):
        if impl in impls:
            torch = _torch()
            twin = _torch_cnn(torch, state)
            fns[impl], params[impl] = _torch_sgd_step(
                torch, lambda xb, yb, twin=twin: torch.nn.functional.cross_entropy(twin(xb), yb), twin.parameters(), x,
                y, compiled=impl == "torch.compile")
    ref_loss, ref_updates = _cnn_reference_step(state, x, y)

    return Case(cnn_flops(batch), batch, fns, _step_validator(fns, params, names, ref_loss, ref_updates))


# -- the row-sequential Fashion-MNIST LSTM's training step (python -m fuseprop train --model lstm): each image
# 28 steps of 28 pixels, LSTM(28, 128), Linear(128, 10) on its last state; SGD

LSTM_BATCH, LSTM_STEPS, LSTM_FEATURES, LSTM_HIDDEN = 128, 28, 28, 128


def lstm_flops(batch, steps=LSTM_STEPS, features=LSTM_FEATURES, hidden=LSTM_HIDDEN):
    """The GEMMs: forward (input and recurrent projections, the classifier), their backward twice over (the
    weights' and the inputs' gradients; the input's gradient of the first layer included)."""
    forward = 2.0 * batch * steps * 4 * hidden * (features + hidden) + 2.0 * batch * hidden * 10
    return 3 * forward


def _lstm_reference_step(state, x, y):
    """(loss, {name: update}) of one float64 SGD step computed with fuseprop.reference (NumPy)."""
    from fuseprop import reference as R
    p = {k: v.astype(np.float64) for k, v in state.items()}
    x = x.astype(np.float64)
    seq, h_n, c_n, saved = R.recurrent_forward("lstm", x, None, None, p["0.weight_ih_l0"], p["0.weight_hh_l0"],
                                               p["0.bias_ih_l0"], p["0.bias_hh_l0"])
    logits, _ = R.linear_forward(h_n, p["1.weight"], p["1.bias"])
    loss, g = R.cross_entropy_loss(logits, y)
    grads = {}
    g, grads["1.weight"], grads["1.bias"] = R.linear_backward(g, h_n, p["1.weight"], None, None)
    _, _, _, *rec = R.recurrent_backward("lstm", None, g, None, x, None, None, p["0.weight_ih_l0"],
                                         p["0.weight_hh_l0"], p["0.bias_hh_l0"], seq, saved)
    for name, grad in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), rec):
        grads[f"0.{name}"] = grad
    return loss, {k: -LR * v for k, v in grads.items()}


def lstm_train_step(batch=LSTM_BATCH, *, impls=IMPLS) -> Case:
    """One SGD step of the row-sequential LSTM classifier, from one shared initial state."""
    fuseprop.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, LSTM_STEPS, LSTM_FEATURES), dtype=np.float32)
    y = rng.integers(0, 10, size=batch)
    model = nn.Sequential(nn.LSTM(LSTM_FEATURES, LSTM_HIDDEN), nn.Linear(LSTM_HIDDEN, 10))
    state = model.state_dict()
    names = [k for k, _ in model.named_parameters()]
    fns, params = {}, {}
    if "fuseprop" in impls:
        fns["fuseprop"], params["fuseprop"] = _fuseprop_sgd_step(model, x, y)
    for impl in ("torch", "torch.compile"):
        if impl not in impls:
            continue
        torch = _torch()
        lstm = torch.nn.LSTM(LSTM_FEATURES, LSTM_HIDDEN, batch_first=True)
        head = torch.nn.Linear(LSTM_HIDDEN, 10)
        lstm.load_state_dict({k[2:]: torch.from_numpy(v.copy()) for k, v in state.items() if k.startswith("0.")})
        head.load_state_dict({k[2:]: torch.from_numpy(v.copy()) for k, v in state.items() if k.startswith("1.")})

        def forward_loss(xb, yb, lstm=lstm, head=head):
            return torch.nn.functional.cross_entropy(head(lstm(xb)[0][:, -1]), yb)
        fns[impl], params[impl] = _torch_sgd_step(torch, forward_loss, [*lstm.parameters(), *head.parameters()], x, y,
                                                  compiled=impl == "torch.compile")
    ref_loss, ref_updates = _lstm_reference_step(state, x, y)

    return Case(lstm_flops(batch), batch, fns, _step_validator(fns, params, names, ref_loss, ref_updates))


def _gemm_specs():
    """Named `gemm MxK-N <product>`: op(A) (M,K) times op(B) (K,N), as the layers compute it; x (B,IN),
    W (OUT,IN), dz (B,OUT). Forward x.W.T: B x IN -> OUT; dW = dz.T.x: OUT x B -> IN; dx = dz.W: B x OUT -> IN."""
    specs = [Spec(f"gemm {n}x{n}-{n}", partial(gemm, n, n, n), KERNEL_IMPLS, slow=True) for n in (1024, 2048)]
    for batch, fan_in, fan_out in LAYERS:
        specs += [Spec(f"gemm {batch}x{fan_in}-{fan_out} x.W.T", partial(gemm, batch, fan_out, fan_in, trans_b=True),
                       KERNEL_IMPLS),
                  Spec(f"gemm {fan_out}x{batch}-{fan_in} dz.T.x", partial(gemm, fan_out, fan_in, batch, trans_a=True),
                       KERNEL_IMPLS),
                  Spec(f"gemm {batch}x{fan_out}-{fan_in} dz.W", partial(gemm, batch, fan_in, fan_out), KERNEL_IMPLS)]
    return specs


# names: MxK-N GEMMs, in-out layers, networks, b<batch>; only characters that `pytest -k` accepts
SPECS = {
    "gemm": _gemm_specs(),
    "linear": [Spec(f"linear {i}-{o} b{b} relu {d}", partial(f, b, i, o), KERNEL_IMPLS)
               for b, i, o in LAYERS for d, f in (("fwd", linear_forward), ("bwd", linear_backward))],
    "train": [Spec(f"train {'-'.join(map(str, sizes))} b{batch}", partial(train_step, sizes, batch), IMPLS)
              for sizes, batch in NETWORKS],
    "cnn": [Spec(f"train cnn 1x28x28-c32-c64-128-10 b{CNN_BATCH}", cnn_train_step, ("fuseprop", "torch", "torch.compile"))],
    "lstm": [Spec(f"train lstm 28x28-128-10 b{LSTM_BATCH}", lstm_train_step, ("fuseprop", "torch", "torch.compile"))],
}


def spec_named(name: str) -> Spec:
    """The Spec called `name`; KeyError listing the names when there is none."""
    for specs in SPECS.values():
        for spec in specs:
            if spec.name == name:
                return spec
    raise KeyError(f"no benchmark case named {name!r}; cases: " + ", ".join(s.name for v in SPECS.values() for s in v))
