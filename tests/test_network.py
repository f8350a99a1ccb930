"""Whole networks: loss and every parameter gradient after one backward equal the NumPy reference;
several optimizer steps follow the reference's trajectory; training a 784-16-16-10 network on a
learnable generated problem drives the loss down and the accuracy up."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim, reference, testing

from helpers import every_activation, mlp_784_16_16_10, unfused

ACTIVATION_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
                      nn.Identity: "identity"}


def act_of(module):
    if isinstance(module, nn.GELU):
        return module.activation, 0.01
    return ACTIVATION_MODULES[type(module)], getattr(module, "negative_slope", 0.01)


def reference_loss_and_grads(model, x, labels, label_smoothing=0.0):
    """Forward, cross-entropy and backward of `model` with fuseprop.reference only, in float64."""
    layers = []  # per module: ("linear", W, b, name) or ("act", name, slope)
    for name, m in model._modules.items():
        if isinstance(m, nn.Linear):
            layers.append(("linear", m.weight.data.astype(np.float64),
                           None if m.bias is None else m.bias.data.astype(np.float64), name))
        else:
            layers.append(("act",) + act_of(m))
    h = x.astype(np.float64)
    saved = []
    for layer in layers:
        if layer[0] == "linear":
            y, _ = reference.linear_forward(h, layer[1], layer[2])
        else:
            y = reference.activation_forward(h, layer[1], layer[2])
        saved.append((h, y))
        h = y
    loss, g = reference.cross_entropy_loss(h, labels, label_smoothing)
    grads = {}
    for layer, (inp, out) in zip(reversed(layers), reversed(saved)):
        if layer[0] == "linear":
            _, w, b, name = layer
            g, dw, db = reference.linear_backward(g, inp, w, None, None, has_bias=b is not None)
            grads[f"{name}.weight"] = dw
            if b is not None:
                grads[f"{name}.bias"] = db
        else:
            g = reference.activation_backward(g, inp, out, layer[1], layer[2])
    return loss, grads


def every_activation_net(dtype=np.float32):
    return every_activation(dtype, features=20)


def unfused_net(dtype=np.float32):
    return unfused(dtype, classes=4)


NETWORKS = {"784-16-16-10": (mlp_784_16_16_10, 784, 10), "every-activation": (every_activation_net, 20, 5),
            "unfused": (unfused_net, 12, 4)}


def batch(rng, n, features, classes, dtype):
    return rng.normal(size=(n, features)).astype(dtype), rng.integers(0, classes, size=n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("net", list(NETWORKS))
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_network_loss_and_gradients_match_reference(net, dtype, batch_size):
    fuseprop.manual_seed(1)
    make, features, classes = NETWORKS[net]
    model = make(dtype)
    x, labels = batch(np.random.default_rng(2), batch_size, features, classes, dtype)
    loss_fn = losses.CrossEntropyLoss(label_smoothing=0.05)
    model.zero_grad()
    loss = loss_fn(model(x), labels)
    model.backward(loss_fn.backward())
    want_loss, want_grads = reference_loss_and_grads(model, x, labels, label_smoothing=0.05)
    # Tolerances for float32 allow for rounding through every layer: K is the widest reduction.
    k = max(features, batch_size, 16)
    testing.assert_parity(np.array(loss), np.array(want_loss), dtype=dtype, reduction_length=k, name="loss")
    names = [name for name, _ in model.named_parameters()]
    assert sorted(names) == sorted(want_grads)
    for name, p in model.named_parameters():
        testing.assert_parity(p.grad, want_grads[name], dtype=dtype, reduction_length=k, name=f"grad {name}")


def test_fused_sequential_equals_module_by_module():
    fuseprop.manual_seed(3)
    model = every_activation_net()
    x, labels = batch(np.random.default_rng(4), 9, 20, 5, np.float32)
    out = model(x)
    loss_fn = losses.CrossEntropyLoss()
    loss_fn(out, labels)
    model.zero_grad()
    grad_x = model.backward(loss_fn.backward())
    fused = {n: p.grad.copy() for n, p in model.named_parameters()}

    model.zero_grad()
    h = x
    for m in model:  # each module on its own: no fusion
        h = m(h)
    np.testing.assert_allclose(h, out, rtol=1e-6, atol=1e-7)
    g = loss_fn.backward()
    for m in reversed(list(model)):
        g = m.backward(g)
    np.testing.assert_allclose(g, grad_x, rtol=1e-6, atol=1e-7)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, fused[n], rtol=1e-6, atol=1e-7, err_msg=n)


def test_native_float64_network_against_finite_differences():
    fuseprop.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 4, dtype=np.float64), nn.Tanh(), nn.Linear(4, 4, dtype=np.float64),
                          nn.GELU(), nn.Linear(4, 3, dtype=np.float64))
    x, labels = batch(np.random.default_rng(6), 6, 5, 3, np.float64)
    loss_fn = losses.CrossEntropyLoss()

    def loss():
        return loss_fn(model(x), labels)

    model.zero_grad()
    loss()
    model.backward(loss_fn.backward())
    for name, p in model.named_parameters():
        testing.check_grad(loss, p.data, p.grad.copy(), name=name)


def test_gradients_accumulate_over_micro_batches():
    fuseprop.manual_seed(7)
    model = mlp_784_16_16_10(np.float64)
    x, labels = batch(np.random.default_rng(8), 32, 784, 10, np.float64)
    loss_fn = losses.CrossEntropyLoss(reduction="sum")
    model.zero_grad()
    loss_fn(model(x), labels)
    model.backward(loss_fn.backward())
    whole = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    for half in (slice(0, 13), slice(13, 32)):  # backward adds into .grad
        loss_fn(model(x[half]), labels[half])
        model.backward(loss_fn.backward())
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, whole[n], rtol=1e-10, atol=1e-12, err_msg=n)
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


OPTIMIZERS = {
    "sgd": (lambda ps: optim.SGD(ps, lr=0.05), lambda p, g, s, t: reference.sgd_step(p, g, lr=0.05)),
    "sgd-momentum": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
                     lambda p, g, s, t: reference.sgd_step(p, g, s.setdefault("buf", np.zeros_like(p)), lr=0.05,
                                                           momentum=0.9, step=t)),
    "sgd-nesterov-wd": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                        lambda p, g, s, t: reference.sgd_step(p, g, s.setdefault("buf", np.zeros_like(p)), lr=0.05,
                                                              momentum=0.9, nesterov=True, weight_decay=1e-3, step=t)),
    "adam": (lambda ps: optim.Adam(ps, lr=1e-2),
             lambda p, g, s, t: reference.adam_step(p, g, s.setdefault("m", np.zeros_like(p)),
                                                    s.setdefault("v", np.zeros_like(p)), step=t, lr=1e-2)),
    "adamw": (lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
              lambda p, g, s, t: reference.adam_step(p, g, s.setdefault("m", np.zeros_like(p)),
                                                     s.setdefault("v", np.zeros_like(p)), step=t, lr=1e-2,
                                                     weight_decay=0.1, decoupled_weight_decay=True)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_steps_follow_the_reference(name, dtype):
    make_opt, ref_step = OPTIMIZERS[name]
    fuseprop.manual_seed(9)
    model = mlp_784_16_16_10(dtype)
    opt = make_opt(model.parameters())
    loss_fn = losses.CrossEntropyLoss()
    rng = np.random.default_rng(10)
    ref_params = {n: p.data.astype(np.float64) for n, p in model.named_parameters()}
    ref_state = {n: {} for n in ref_params}
    shadow = mlp_784_16_16_10(np.float64)  # carries the reference weights through reference_loss_and_grads
    for step in range(1, 6):
        x, labels = batch(rng, 32, 784, 10, dtype)
        loss = model.train_step(x, labels, loss_fn, opt)
        shadow.load_state_dict(ref_params)
        want_loss, grads = reference_loss_and_grads(shadow, x, labels)
        for n in ref_params:
            ref_step(ref_params[n], grads[n], ref_state[n], step)
        rtol, atol = (1e-9, 1e-11) if dtype == np.float64 else (1e-4, 1e-5)
        np.testing.assert_allclose(loss, want_loss, rtol=rtol, err_msg=f"loss at step {step}")
        for n, p in model.named_parameters():
            np.testing.assert_allclose(p.data, ref_params[n], rtol=rtol, atol=atol, err_msg=f"{n} after step {step}")


def learnable_problem(rng, n, features=784, classes=10):
    """Gaussian clusters around random class centres: separable, so a small MLP can learn it."""
    centres = rng.normal(size=(classes, features)).astype(np.float32)
    labels = rng.integers(0, classes, size=n)
    x = centres[labels] + 1.5 * rng.normal(size=(n, features)).astype(np.float32)
    return x, labels


def test_training_784_16_16_10_reduces_loss_and_raises_accuracy():
    fuseprop.manual_seed(11)
    rng = np.random.default_rng(12)
    x, y = learnable_problem(rng, 4096)
    model = mlp_784_16_16_10()
    loss_fn = losses.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def evaluate():
        logits = model(x)
        return loss_fn(logits, y), float((logits.argmax(1) == y).mean())

    loss0, acc0 = evaluate()
    for _ in range(3):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 32):
            idx = order[i:i + 32]
            model.train_step(x[idx], y[idx], loss_fn, opt)
    loss1, acc1 = evaluate()
    assert loss1 < 0.25 * loss0, (loss0, loss1)
    assert acc0 < 0.3 and acc1 > 0.95, (acc0, acc1)


def test_same_seed_same_result():
    def run():
        fuseprop.manual_seed(13)
        model = mlp_784_16_16_10()
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = learnable_problem(np.random.default_rng(14), 256)
        for i in range(0, 256, 32):
            model.train_step(x[i:i + 32], y[i:i + 32], losses.CrossEntropyLoss(), opt)
        return model.state_dict()

    a, b = run(), run()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
