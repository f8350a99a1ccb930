"""Sequential.train_step as one native call (fuseprop._train_plan, _C.TrainPlan).

Every fused step is compared with the per-layer path (``fused_train_step = False``) on a copy of the
same model: both run the same kernels on the same arrays, so losses and parameters agree to the last
bits (the tolerances asked for are float64 1e-12 and float32 1e-6 relative). Then: the plan is really
used; a steady state allocates nothing; models without a fused form still train; refused steps change
nothing; schedules, replaced arrays and optimizer state round-trips are followed; runs repeat exactly.
"""
from __future__ import annotations

import copy
import os
import pickle
import re
import threading

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
RTOL = {np.float32: 1e-6, np.float64: 1e-12}


# ---------------------------------------------------------------------------------------------
# models, losses, optimizers


def mlp_784_16_16_10(dtype):
    return nn.Sequential(nn.Linear(784, 16, dtype=dtype), nn.ReLU(), nn.Linear(16, 16, dtype=dtype), nn.ReLU(),
                         nn.Linear(16, 10, dtype=dtype))


def every_activation(dtype):
    d = dict(dtype=dtype)
    return nn.Sequential(
        nn.Linear(12, 16, **d), nn.ReLU(), nn.Linear(16, 16, **d), nn.LeakyReLU(0.2), nn.Linear(16, 16, **d),
        nn.Sigmoid(), nn.Linear(16, 16, **d), nn.Tanh(), nn.Linear(16, 16, **d), nn.GELU(),
        nn.Linear(16, 16, **d), nn.GELU(approximate="tanh"), nn.Linear(16, 16, bias=False, **d), nn.Identity(),
        nn.Linear(16, 5, **d))


def no_bias(dtype):
    d = dict(dtype=dtype, bias=False)
    return nn.Sequential(nn.Linear(12, 10, **d), nn.Tanh(), nn.Linear(10, 8, **d), nn.LeakyReLU(0.05),
                         nn.Linear(8, 5, **d))


def linear_after_linear(dtype):
    # Two Linear layers in a row is still a chain: the first one's activation is the identity.
    d = dict(dtype=dtype)
    return nn.Sequential(nn.Linear(12, 8, **d), nn.Linear(8, 8, bias=False, **d), nn.Sigmoid(), nn.Linear(8, 5, **d))


NETWORKS = {"784-16-16-10": (mlp_784_16_16_10, 784, 10), "every-activation": (every_activation, 12, 5),
            "no-bias": (no_bias, 12, 5), "linear-after-linear": (linear_after_linear, 12, 5)}


def labels_for(rng, n, classes, dtype):
    return rng.integers(0, classes, size=n)


def values_for(rng, n, classes, dtype):
    return rng.normal(size=(n, classes)).astype(dtype)


def probabilities_for(rng, n, classes, dtype):
    return rng.uniform(size=(n, classes)).astype(dtype)


LOSSES = {
    "ce": (lambda: losses.CrossEntropyLoss(), labels_for),
    "ce-smoothing": (lambda: losses.CrossEntropyLoss(label_smoothing=0.1), labels_for),
    "ce-sum": (lambda: losses.CrossEntropyLoss(reduction="sum"), labels_for),
    "ce-smoothing-sum": (lambda: losses.CrossEntropyLoss(label_smoothing=0.2, reduction="sum"), labels_for),
    "mse": (lambda: losses.MSELoss(), values_for),
    "mse-sum": (lambda: losses.MSELoss(reduction="sum"), values_for),
    "bce": (lambda: losses.BCEWithLogitsLoss(), probabilities_for),
    "bce-sum": (lambda: losses.BCEWithLogitsLoss(reduction="sum"), probabilities_for),
}


def two_groups(model, **first):
    """Weights in one group (with its own settings), biases in another, listed in reverse order."""
    named = list(model.named_parameters())
    weights = [p for n, p in reversed(named) if n.endswith("weight")]
    biases = [p for n, p in named if n.endswith("bias")]
    return [{"params": weights, **first}] + ([{"params": biases}] if biases else [])


OPTIMIZERS = {
    "sgd": lambda m: optim.SGD(m.parameters(), lr=0.05),
    "sgd-momentum": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True),
    "sgd-dampening-wd": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
    "sgd-groups": lambda m: optim.SGD(two_groups(m, lr=0.01, momentum=0.5), lr=0.05, momentum=0.9),
    "adam-l2": lambda m: optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "adamw": lambda m: optim.AdamW(m.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
    "adam-groups": lambda m: optim.Adam(two_groups(m, lr=3e-3, eps=1e-6), lr=1e-2),
}


def pair(make, dtype, seed=0):
    """The same model twice: the first trains fused, the second layer by layer."""
    fuseprop.manual_seed(seed)
    fused = make(dtype)
    fuseprop.manual_seed(seed)
    per_layer = make(dtype)
    per_layer.fused_train_step = False
    return fused, per_layer


def assert_same_params(a, b, dtype, what=""):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=RTOL[dtype], atol=0, err_msg=f"{name} {what}")


def assert_same_state(opt_a, opt_b):
    assert_same_state_dict(opt_a.state_dict(), opt_b.state_dict())


def assert_same_state_dict(sa, sb):
    assert sa["param_groups"] == sb["param_groups"]
    assert sorted(sa["state"]) == sorted(sb["state"])
    for i, entry in sa["state"].items():
        assert sorted(entry) == sorted(sb["state"][i])
        for k, v in entry.items():
            np.testing.assert_array_equal(v, sb["state"][i][k], err_msg=f"state {i} {k}")


def snapshot(model, opt):
    return ([p.data.copy() for p in model.parameters()],
            {id(p): {k: np.copy(v) for k, v in s.items()} for p, s in opt.state.items()})


def assert_unchanged(model, opt, snap):
    params, state = snap
    for p, before in zip(model.parameters(), params):
        np.testing.assert_array_equal(p.data, before, err_msg=f"{p.name} changed")
    assert {id(p) for p, s in opt.state.items() if s} == {i for i, s in state.items() if s}
    for p, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[id(p)][k], err_msg=f"state {k} of {p.name} changed")


# ---------------------------------------------------------------------------------------------
# (a) parity with the per-layer path, (b) the plan is used


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("net", list(NETWORKS))
def test_fused_steps_equal_the_per_layer_path(net, loss_name, opt_name, dtype):
    make, features, classes = NETWORKS[net]
    fused, per_layer = pair(make, dtype)
    make_loss, make_target = LOSSES[loss_name]
    loss_a, loss_b = make_loss(), make_loss()
    opt_a, opt_b = OPTIMIZERS[opt_name](fused), OPTIMIZERS[opt_name](per_layer)
    rng = np.random.default_rng(1)
    sizes = [8, 8, 5, 11]  # a smaller batch reuses the workspace, a larger one grows it
    for step, n in enumerate(sizes):
        x = rng.normal(size=(n, features)).astype(dtype)
        y = make_target(rng, n, classes, dtype)
        got, want = fused.train_step(x, y, loss_a, opt_a), per_layer.train_step(x, y, loss_b, opt_b)
        assert type(got) is float
        np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=0, err_msg=f"loss at step {step}")
        assert_same_params(fused, per_layer, dtype, f"after step {step}")
    np.testing.assert_allclose(loss_a.backward(), loss_b.backward(), rtol=RTOL[dtype], atol=0)
    assert_same_state(opt_a, opt_b)
    plan = fused.train_plan
    assert plan is not None and plan.steps == len(sizes)
    assert plan.allocations == 2 and plan.capacity == 11
    assert per_layer.train_plan is None


def test_the_plan_is_built_once_and_reused():
    fused, _ = pair(mlp_784_16_16_10, np.float32)
    opt, loss_fn = optim.Adam(fused.parameters()), losses.CrossEntropyLoss()
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(32, 784)).astype(np.float32), rng.integers(0, 10, size=32)
    fused.train_step(x, y, loss_fn, opt)
    plan = fused.train_plan
    for _ in range(5):
        fused.train_step(x, y, loss_fn, opt)
    assert fused.train_plan is plan and plan.steps == 6 and plan.allocations == 1


# ---------------------------------------------------------------------------------------------
# (c) no allocation in a steady state


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_steady_state_allocates_nothing():
    fused, _ = pair(mlp_784_16_16_10, np.float32)
    opt, loss_fn = optim.Adam(fused.parameters(), lr=1e-3), losses.CrossEntropyLoss()
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(1000, 784)).astype(np.float32), rng.integers(0, 10, size=1000)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 1000, 32)]  # the last one has 8 rows
    for xb, yb in batches[:3] + batches[-1:]:  # warm up: the plan, the GEMM's packing buffers
        fused.train_step(xb, yb, loss_fn, opt)
    plan = fused.train_plan
    allocations, rss = plan.allocations, resident_bytes()
    for step in range(200):
        xb, yb = batches[step % len(batches)]
        fused.train_step(xb, yb, loss_fn, opt)
    assert fused.train_plan is plan and plan.steps == 204
    assert plan.allocations == allocations == 1 and plan.capacity == 32
    grown = resident_bytes() - rss
    assert grown < 1 << 20, f"resident memory grew by {grown} bytes over 200 steps"


# ---------------------------------------------------------------------------------------------
# (d) models without a fused form take the per-layer path, and train


def activation_first(dtype):
    # An activation first, two Linear layers in a row, two activations in a row.
    d = dict(dtype=dtype)
    return nn.Sequential(nn.Tanh(), nn.Linear(12, 8, **d), nn.Linear(8, 8, bias=False, **d), nn.Sigmoid(),
                         nn.Tanh(), nn.Linear(8, 5, **d))


def softmax_output(dtype):
    return nn.Sequential(nn.Linear(12, 8, dtype=dtype), nn.ReLU(), nn.Linear(8, 5, dtype=dtype), nn.Softmax())


def nested(dtype):
    return nn.Sequential(nn.Sequential(nn.Linear(12, 8, dtype=dtype), nn.ReLU()), nn.Linear(8, 5, dtype=dtype))


class MyMSELoss(losses.MSELoss):
    pass


FALLBACKS = {
    "activation-first": (activation_first, lambda: losses.CrossEntropyLoss(), OPTIMIZERS["sgd-momentum"],
                         "module 0 (Tanh)"),
    "softmax": (softmax_output, lambda: losses.MSELoss(), OPTIMIZERS["adam-l2"], "module 3 (Softmax)"),
    "nested": (nested, lambda: losses.CrossEntropyLoss(), OPTIMIZERS["adamw"], "module 0 (Sequential)"),
    "loss-subclass": (no_bias, MyMSELoss, OPTIMIZERS["sgd"], "MyMSELoss has no fused form"),
    "frozen-layer": (no_bias, lambda: losses.CrossEntropyLoss(), lambda m: optim.SGD(m[2].parameters(), lr=0.1),
                     "param groups do not hold exactly the model's parameters"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_models_without_a_fused_form_train_layer_by_layer(case):
    make, make_loss, make_opt, why = FALLBACKS[case]
    model, _ = pair(make, np.float64)
    fuseprop.manual_seed(0)
    manual = make(np.float64)  # the same steps, written out with the step-by-step API
    loss_fn, opt, manual_opt = make_loss(), make_opt(model), make_opt(manual)
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(5, 12))
    first = last = None
    for step in range(30):
        labels = rng.integers(0, 5, size=16)
        x = centres[labels] + 0.3 * rng.normal(size=(16, 12))
        y = labels if isinstance(loss_fn, losses.CrossEntropyLoss) else np.eye(5)[labels]
        loss = model.train_step(x, y, loss_fn, opt)
        manual.zero_grad()
        want = loss_fn(manual(x), y)
        manual.backward(loss_fn.backward())
        manual_opt.step()
        assert loss == want
        first, last = first if first is not None else loss, loss
    assert model.train_plan is None and why in model._fused.why_not
    assert_same_params(model, manual, np.float64)
    assert last < first


def test_a_model_that_becomes_fusable_is_fused():
    model = nn.Sequential(nn.Linear(6, 4, dtype=np.float64), nn.Softmax())
    opt, loss_fn = optim.SGD(model.parameters(), lr=0.1), losses.CrossEntropyLoss()
    x, y = np.random.default_rng(5).normal(size=(4, 6)), np.array([0, 1, 2, 3])
    model.train_step(x, y, loss_fn, opt)
    assert model.train_plan is None
    model.append(nn.Linear(4, 3, dtype=np.float64))  # Linear, Softmax, Linear: still not a chain
    opt.add_param_group({"params": model[2].parameters()})
    model.train_step(x, y % 3, loss_fn, opt)
    assert model.train_plan is None
    model.__setattr__("1", nn.Tanh())  # Linear, Tanh, Linear
    model.train_step(x, y % 3, loss_fn, opt)
    assert model.train_plan is not None and model.train_plan.steps == 1


# ---------------------------------------------------------------------------------------------
# (e) refused steps change nothing and say why, as the per-layer path does


def trained_pair(opt_name="adam-l2", loss_name="ce", dtype=np.float32, steps=2):
    fused, per_layer = pair(every_activation, dtype)
    make_loss, make_target = LOSSES[loss_name]
    loss_fn = make_loss()
    opts = OPTIMIZERS[opt_name](fused), OPTIMIZERS[opt_name](per_layer)
    rng = np.random.default_rng(6)
    for _ in range(steps):
        x, y = rng.normal(size=(7, 12)).astype(dtype), make_target(rng, 7, 5, dtype)
        fused.train_step(x, y, loss_fn, opts[0])
        per_layer.train_step(x, y, loss_fn, opts[1])
    return (fused, opts[0]), (per_layer, opts[1]), loss_fn, rng


def refused(model, opt, call, exc):
    """call() raises exc and changes neither the weights nor the optimizer state; returns the message."""
    snap = snapshot(model, opt)
    with pytest.raises(exc) as info:
        call()
    assert_unchanged(model, opt, snap)
    return str(info.value)


@pytest.mark.parametrize("steps", [0, 2], ids=["first-step", "later-step"])
@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam-l2"])
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_loss_is_refused(value, opt_name, steps):
    (fused, opt_a), (per_layer, opt_b), loss_fn, rng = trained_pair(opt_name, steps=steps)
    x, y = rng.normal(size=(7, 12)).astype(np.float32), rng.integers(0, 5, size=7)
    x[3, 4] = value
    messages = [refused(m, o, lambda: m.train_step(x, y, loss_fn, o), FloatingPointError)
                for m, o in ((fused, opt_a), (per_layer, opt_b))]
    assert messages[0] == messages[1] and re.match(r"^the loss is (nan|inf); the weights were not updated$", messages[0])
    if steps == 0:
        assert not any(opt_a.state.values())  # no state is created by a refused first step
    # and the next good step is the same on both paths
    x[3, 4] = 0
    assert fused.train_step(x, y, loss_fn, opt_a) == per_layer.train_step(x, y, loss_fn, opt_b)
    assert_same_params(fused, per_layer, np.float32)
    assert_same_state(opt_a, opt_b)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_non_finite_gradient_is_refused(reduction):
    # A float32 MSE whose value (summed in double) is finite but whose gradient 2 (pred - target) overflows.
    fused, per_layer = pair(no_bias, np.float32)
    opts = optim.Adam(fused.parameters()), optim.Adam(per_layer.parameters())
    loss_fn = losses.MSELoss(reduction=reduction)
    x = np.random.default_rng(7).normal(size=(4, 12)).astype(np.float32)
    target = np.full((4, 5), 3e38, np.float32)
    messages = [refused(m, o, lambda: m.train_step(x, target, loss_fn, o), FloatingPointError)
                for m, o in ((fused, opts[0]), (per_layer, opts[1]))]
    assert messages[0] == messages[1]
    assert re.match(r"^the gradient of \S+ is not finite; the weights were not updated$", messages[0])
    assert not any(opts[0].state.values())


@pytest.mark.parametrize("opt_name", ["sgd", "adam-l2"])
def test_an_overflowing_update_is_reported_after_it(opt_name):
    fused, per_layer = pair(no_bias, np.float32)
    opts = [OPTIMIZERS[opt_name](m) for m in (fused, per_layer)]
    for o in opts:
        o.param_groups[0]["lr"] = 1e38
    # The loss and its gradient 2 (pred - 1000) are finite; lr times the gradient overflows float32.
    x = np.random.default_rng(8).normal(size=(6, 12)).astype(np.float32)
    y = np.full((6, 5), 1000, np.float32)
    loss_fn = losses.MSELoss(reduction="sum")
    messages = []
    with np.errstate(over="ignore", invalid="ignore"):
        for m, o in zip((fused, per_layer), opts):
            with pytest.raises(FloatingPointError) as info:
                m.train_step(x, y, loss_fn, o)
            messages.append(str(info.value))
    assert messages[0] == messages[1], messages
    assert "non-finite" in messages[0] and "the weights were overwritten" in messages[0]
    assert_same_params(fused, per_layer, np.float32)  # overwritten the same way, NaNs included
    assert_same_state(*opts)  # Adam counted the update that overflowed


def bad_x_cases():
    rng = np.random.default_rng(9)
    return {
        "wrong-features": (rng.normal(size=(7, 11)), ValueError),
        "one-dimensional": (rng.normal(size=12), ValueError),
        "three-dimensional": (rng.normal(size=(7, 12, 1)), ValueError),
        "empty-batch": (np.zeros((0, 12), np.float32), ValueError),
        "empty-batch-float64": (np.zeros((0, 12)), ValueError),
        "strings": (np.full((7, 12), "a"), TypeError),
        "complex": (np.ones((7, 12), np.complex64), TypeError),
        "objects": (np.array([[object()] * 12] * 7), TypeError),
    }


@pytest.mark.parametrize("case", list(bad_x_cases()))
def test_bad_x_is_refused_with_the_per_layer_message(case):
    x, exc = bad_x_cases()[case]
    (fused, opt_a), (per_layer, opt_b), loss_fn, rng = trained_pair()
    y = rng.integers(0, 5, size=len(x) if x.ndim else 1)
    grads = [p.grad.copy() for p in fused.parameters()]
    got = refused(fused, opt_a, lambda: fused.train_step(x, y, loss_fn, opt_a), exc)
    want = refused(per_layer, opt_b, lambda: per_layer.train_step(x, y, loss_fn, opt_b), exc)
    assert got == want
    for p, g in zip(fused.parameters(), grads):  # the fused path checks before it writes anything at all
        np.testing.assert_array_equal(p.grad, g)


def bad_target_cases():
    return {
        "label-equal-to-C": ("ce", np.array([0, 1, 2, 3, 4, 5, 0]), ValueError),
        "label-negative": ("ce", np.array([0, 1, -1, 3, 4, 0, 0]), ValueError),
        "labels-too-few": ("ce", np.array([0, 1, 2]), ValueError),
        "labels-2d": ("ce", np.zeros((7, 1), np.int64), ValueError),
        "labels-float": ("ce", np.zeros(7), TypeError),
        "labels-huge-unsigned": ("ce", np.full(7, 2 ** 64 - 1, np.uint64), ValueError),
        "target-wrong-shape": ("mse", np.zeros((7, 4)), ValueError),
        "target-flat": ("bce", np.zeros(35), ValueError),
        "target-strings": ("mse", np.full((7, 5), "a"), TypeError),
    }


@pytest.mark.parametrize("case", list(bad_target_cases()))
def test_bad_targets_are_refused_with_the_per_layer_message(case):
    loss_name, y, exc = bad_target_cases()[case]
    (fused, opt_a), (per_layer, opt_b), loss_fn, rng = trained_pair(loss_name=loss_name)
    x = rng.normal(size=(7, 12)).astype(np.float32)
    got = refused(fused, opt_a, lambda: fused.train_step(x, y, loss_fn, opt_a), exc)
    want = refused(per_layer, opt_b, lambda: per_layer.train_step(x, y, loss_fn, opt_b), exc)
    assert got == want


@pytest.mark.parametrize("hyper", [("lr", -1.0), ("lr", float("nan")), ("betas", (0.9, 1.0)), ("eps", -1e-8)])
def test_bad_hyper_parameters_are_refused_with_the_optimizer_message(hyper):
    (fused, opt_a), (per_layer, opt_b), loss_fn, rng = trained_pair()
    for o in (opt_a, opt_b):
        o.param_groups[0][hyper[0]] = hyper[1]
    x, y = rng.normal(size=(7, 12)).astype(np.float32), rng.integers(0, 5, size=7)
    got = refused(fused, opt_a, lambda: fused.train_step(x, y, loss_fn, opt_a), ValueError)
    assert got == refused(per_layer, opt_b, lambda: per_layer.train_step(x, y, loss_fn, opt_b), ValueError)


def test_inputs_are_converted_as_the_per_layer_path_converts_them():
    fused, per_layer = pair(every_activation, np.float32)
    opts = optim.SGD(fused.parameters(), lr=0.1), optim.SGD(per_layer.parameters(), lr=0.1)
    loss_fn = losses.CrossEntropyLoss()
    rng = np.random.default_rng(10)
    base = rng.normal(size=(7, 12))
    for x, y in [(base, rng.integers(0, 5, size=7).astype(np.int32)),  # float64 x, int32 labels
                 (np.asfortranarray(base.astype(np.float32)), list(range(5)) + [0, 1]),  # strided x, list labels
                 (base.astype(np.float32)[::-1], rng.integers(0, 5, size=7).astype(np.uint8)),
                 (base.tolist(), np.arange(7) % 5),
                 ((base > 0), np.arange(7) % 5)]:  # bool x
        before = x.copy() if isinstance(x, np.ndarray) else None
        assert fused.train_step(x, y, loss_fn, opts[0]) == per_layer.train_step(x, y, loss_fn, opts[1])
        if before is not None:
            np.testing.assert_array_equal(x, before)  # the caller's array is never written
    assert_same_params(fused, per_layer, np.float32)
    assert fused.train_plan.steps == 5


# ---------------------------------------------------------------------------------------------
# (f) what changes between steps is followed


def train_both(pair_, opts, loss_fn, rng, steps, between=None, features=12, classes=5):
    for step in range(steps):
        if between:
            between(step)
        x, y = rng.normal(size=(9, features)), rng.integers(0, classes, size=9)
        assert pair_[0].train_step(x, y, loss_fn, opts[0]) == pair_[1].train_step(x, y, loss_fn, opts[1])


@pytest.mark.parametrize("opt_name", ["sgd-groups", "adam-groups"])
def test_learning_rate_schedules_take_effect_without_a_rebuild(opt_name):
    models = pair(every_activation, np.float64)
    opts = [OPTIMIZERS[opt_name](m) for m in models]
    loss_fn = losses.CrossEntropyLoss()
    train_both(models, opts, loss_fn, np.random.default_rng(11), 1)
    plan = models[0].train_plan

    def schedule(step):
        for o in opts:
            for i, g in enumerate(o.param_groups):
                g["lr"] = 0.02 / (step + 1) / (i + 1)

    train_both(models, opts, loss_fn, np.random.default_rng(12), 6, schedule)
    assert_same_params(*models, np.float64)
    assert models[0].train_plan is plan and plan.allocations == 1
    # lr 0 for every group: the next step changes nothing
    for o in opts:
        for g in o.param_groups:
            g["lr"] = 0.0
    before = [p.data.copy() for p in models[0].parameters()]
    train_both(models, opts, loss_fn, np.random.default_rng(13), 1)
    for p, b in zip(models[0].parameters(), before):
        np.testing.assert_array_equal(p.data, b)


def test_momentum_switched_on_later_matches():
    models = pair(no_bias, np.float64)
    opts = [optim.SGD(m.parameters(), lr=0.05) for m in models]
    loss_fn = losses.CrossEntropyLoss()

    def switch(step):
        if step == 2:
            for o in opts:
                o.param_groups[0]["momentum"] = 0.9
                o.param_groups[0]["dampening"] = 0.1

    train_both(models, opts, loss_fn, np.random.default_rng(14), 5, switch)
    assert_same_params(*models, np.float64)
    assert_same_state(*opts)


def test_replacing_a_parameter_array_rebuilds_the_plan():
    models = pair(every_activation, np.float64)
    opts = [optim.Adam(m.parameters(), lr=1e-2) for m in models]
    loss_fn = losses.CrossEntropyLoss()
    train_both(models, opts, loss_fn, np.random.default_rng(15), 2)
    plan = models[0].train_plan
    for m in models:
        m[0].weight.data = np.full_like(m[0].weight.data, 0.01)
    train_both(models, opts, loss_fn, np.random.default_rng(16), 2)
    assert models[0].train_plan is not plan
    plan = models[0].train_plan
    for m in models:
        m[2].bias.grad = np.zeros_like(m[2].bias.grad)
    train_both(models, opts, loss_fn, np.random.default_rng(17), 2)
    assert models[0].train_plan is not plan
    assert_same_params(*models, np.float64)
    np.testing.assert_array_equal(models[0][2].bias.grad, models[1][2].bias.grad)  # the new grad array is written


def test_replacing_an_activation_or_its_slope_rebuilds_the_plan():
    models = pair(no_bias, np.float64)
    opts = [optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    loss_fn = losses.CrossEntropyLoss()

    def change(step):
        for m in models:
            if step == 1:
                m[3].negative_slope = 0.3
            if step == 2:
                m.__setattr__("1", nn.GELU())

    train_both(models, opts, loss_fn, np.random.default_rng(17), 4, change)
    assert_same_params(*models, np.float64)
    assert models[0].train_plan.steps == 2  # built anew after the last change


def test_replacing_optimizer_state_arrays_is_followed():
    models = pair(every_activation, np.float64)
    opts = [optim.Adam(m.parameters(), lr=1e-2) for m in models]
    loss_fn = losses.CrossEntropyLoss()

    def replace(step):
        if step == 2:
            for o in opts:
                p = o.param_groups[0]["params"][3]
                o.state[p]["exp_avg"] = o.state[p]["exp_avg"] * 0.5
                o.state[p]["step"] = 1

    train_both(models, opts, loss_fn, np.random.default_rng(18), 5, replace)
    assert_same_params(*models, np.float64)
    assert_same_state(*opts)


@pytest.mark.parametrize("opt_name", ["sgd-nesterov", "adam-groups", "adamw"])
def test_optimizer_state_dict_round_trip_resumes_exactly(opt_name):
    fuseprop.manual_seed(19)
    model = every_activation(np.float64)
    fuseprop.manual_seed(0)
    resumed = every_activation(np.float64)
    opt, resumed_opt = OPTIMIZERS[opt_name](model), OPTIMIZERS[opt_name](resumed)
    loss_fn = losses.CrossEntropyLoss(label_smoothing=0.1)
    rng = np.random.default_rng(20)
    batches = [(rng.normal(size=(9, 12)), rng.integers(0, 5, size=9)) for _ in range(6)]
    for x, y in batches[:3]:
        model.train_step(x, y, loss_fn, opt)
    saved_model, saved_opt = model.state_dict(), copy.deepcopy(opt.state_dict())
    if "adam" in opt_name:
        assert all(s["step"] == 3 for s in saved_opt["state"].values())
    for x, y in batches[3:]:
        model.train_step(x, y, loss_fn, opt)
    want = model.state_dict()
    want_opt = copy.deepcopy(opt.state_dict())

    # into the optimizer that trained: its state arrays are replaced, nothing else moves
    opt.load_state_dict(saved_opt)
    model.load_state_dict(saved_model)
    plan = model.train_plan
    for x, y in batches[3:]:
        model.train_step(x, y, loss_fn, opt)
    assert model.train_plan is not plan
    # into a new model and optimizer
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    for x, y in batches[3:]:
        resumed.train_step(x, y, loss_fn, resumed_opt)
    for m, o in ((model, opt), (resumed, resumed_opt)):
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, want[k], err_msg=k)
        assert_same_state_dict(o.state_dict(), want_opt)


def test_switching_paths_midway_matches():
    models = pair(every_activation, np.float32)
    opts = [optim.AdamW(m.parameters(), lr=1e-2) for m in models]
    loss_fn = losses.CrossEntropyLoss()

    def switch(step):
        models[0].fused_train_step = step % 3 != 1  # fused, per-layer, fused, ...

    train_both(models, opts, loss_fn, np.random.default_rng(21), 7, switch)
    assert_same_params(*models, np.float32)
    assert_same_state(*opts)


def test_a_model_copy_trains_on_its_own_plan():
    fused, _ = pair(no_bias, np.float64)
    opt, loss_fn = optim.SGD(fused.parameters(), lr=0.1, momentum=0.9), losses.CrossEntropyLoss()
    x, y = np.random.default_rng(22).normal(size=(5, 12)), np.arange(5)
    fused.train_step(x, y, loss_fn, opt)
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert clone.train_plan is None
        clone_opt = optim.SGD(clone.parameters(), lr=0.1, momentum=0.9)
        clone.train_step(x, y, loss_fn, clone_opt)
        assert clone.train_plan is not None and clone.train_plan is not fused.train_plan


def test_loss_backward_after_a_fused_step_and_after_a_direct_call():
    fused, per_layer = pair(every_activation, np.float64)
    loss_fn = losses.BCEWithLogitsLoss()
    opt = optim.SGD(fused.parameters(), lr=0.1)
    x, y = np.random.default_rng(23).normal(size=(6, 12)), np.ones((6, 5))
    fused.train_step(x, y, loss_fn, opt)
    for clone in (copy.deepcopy(loss_fn), pickle.loads(pickle.dumps(loss_fn))):
        np.testing.assert_array_equal(clone.backward(), loss_fn.backward())
    g = loss_fn.backward()
    assert g.shape == (6, 5) and loss_fn.backward() is g
    loss_fn(np.zeros((2, 3)), np.ones((2, 3)))  # a direct call takes over
    assert loss_fn.backward().shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# (g) the same seed gives the same run


def test_same_seed_same_run():
    def run():
        fuseprop.manual_seed(24)
        model = mlp_784_16_16_10(np.float32)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(25)
        seen = [model.train_step(rng.normal(size=(32, 784)).astype(np.float32), rng.integers(0, 10, size=32),
                                 losses.CrossEntropyLoss(), opt) for _ in range(10)]
        return seen, model.state_dict()

    (losses_a, state_a), (losses_b, state_b) = run(), run()
    assert losses_a == losses_b
    for k in state_a:
        np.testing.assert_array_equal(state_a[k], state_b[k])


def test_threads_training_their_own_models_get_the_serial_results():
    def train(model, out):
        opt, loss_fn = optim.Adam(model.parameters(), lr=1e-3), losses.CrossEntropyLoss()
        rng = np.random.default_rng(26)
        for _ in range(20):
            model.train_step(rng.normal(size=(32, 784)).astype(np.float32), rng.integers(0, 10, size=32), loss_fn, opt)
        out.append(model.state_dict())

    serial, threaded = [], []
    for _ in range(2):
        fuseprop.manual_seed(27)
        train(mlp_784_16_16_10(np.float32), serial)
    models = []
    for _ in range(2):
        fuseprop.manual_seed(27)
        models.append(mlp_784_16_16_10(np.float32))
    threads = [threading.Thread(target=train, args=(m, threaded)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for state in threaded:
        for k in serial[0]:
            np.testing.assert_array_equal(state[k], serial[0][k])


# ---------------------------------------------------------------------------------------------
# _C.TrainPlan at its boundary: every bad argument is named, and a refused call changes nothing


def plan_arrays(dtype=np.float32, adam=False):
    """A 3-4-2 chain with bias: layers and params for _C.TrainPlan."""
    rng = np.random.default_rng(28)
    shapes = {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (2, 4), "1.bias": (2,)}
    params = []
    for name, shape in shapes.items():
        data = rng.normal(size=shape).astype(dtype)
        a = np.zeros(shape, dtype) if adam else None
        b = np.zeros(shape, dtype) if adam else None
        params.append([name, data, np.zeros(shape, dtype), a, b, 0])
    return [("tanh", 0.01, True), ("identity", 0.01, True)], params


def make_plan(layers, params, **kw):
    kw = {"loss": "cross_entropy", "optimizer": "sgd", **kw}
    return fuseprop._C.TrainPlan(layers, [tuple(p) for p in params], **kw)


def test_plan_refuses_a_grad_sharing_memory_with_a_weight():
    layers, params = plan_arrays()
    params[0][2] = params[0][1].reshape(4, 3)
    with pytest.raises(ValueError, match=r"0\.weight is written in place and must not share memory with 0\.weight\.grad"):
        make_plan(layers, params)


def test_plan_refuses_layers_that_do_not_chain():
    layers, params = plan_arrays()
    params[2][1], params[2][2] = np.zeros((2, 5), np.float32), np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match=r"^1\.weight has shape \(2, 5\): its in_features must be 4"):
        make_plan(layers, params)


def test_plan_refuses_a_bias_of_the_wrong_length():
    layers, params = plan_arrays()
    params[1][1], params[1][2] = np.zeros(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"^0\.bias must have shape \(4,\), got \(3,\)"):
        make_plan(layers, params)


def test_plan_refuses_mixed_dtypes():
    layers, params = plan_arrays(adam=True)
    params[3][3] = params[3][3].astype(np.float64)
    with pytest.raises(TypeError, match=r"^state 'exp_avg' of 1\.bias must have the same dtype as the parameters"):
        make_plan(layers, params, optimizer="adam")


def test_plan_refuses_a_read_only_or_strided_parameter():
    layers, params = plan_arrays()
    params[0][1].flags.writeable = False
    with pytest.raises(ValueError, match=r"^0\.weight is written in place, so it must be writeable"):
        make_plan(layers, params)
    layers, params = plan_arrays()
    params[2][2] = np.zeros((4, 2), np.float32).T
    with pytest.raises(ValueError, match=r"^1\.weight\.grad must be C-contiguous"):
        make_plan(layers, params)


def test_plan_refuses_missing_adam_state_and_unknown_names():
    layers, params = plan_arrays()
    with pytest.raises(ValueError, match=r"^state 'exp_avg' of 0\.weight is required"):
        make_plan(layers, params, optimizer="adam")
    with pytest.raises(ValueError, match=r"^optimizer must be one of 'sgd', 'adam', 'adamw'; got 'rmsprop'"):
        make_plan(layers, params, optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"^loss must be one of"):
        make_plan(layers, params, loss="hinge")
    with pytest.raises(ValueError, match=r"^params has 4 entries; the layers take 2"):
        make_plan(layers[:1], params)


STEP_CASES = {
    "x-strided": (lambda x, y: (np.repeat(x, 2, axis=1)[:, ::2], y), ValueError, r"^x must be C-contiguous"),
    "x-float64": (lambda x, y: (x.astype(np.float64), y), TypeError, r"^x must have the same dtype as the parameters"),
    "x-features": (lambda x, y: (x[:, :2].copy(), y), ValueError, r"^x must have 3 features"),
    "x-empty": (lambda x, y: (x[:0], y[:0]), ValueError, r"^train_step needs a non-empty batch"),
    "labels-int32": (lambda x, y: (x, y.astype(np.int32)), TypeError, r"^labels must be class indices with dtype int64"),
    "labels-range": (lambda x, y: (x, y + 1), ValueError, r"^labels must be in \[0, 2\)"),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_plan_step_refuses_bad_batches_and_writes_nothing(case):
    layers, params = plan_arrays()
    plan = make_plan(layers, params)
    x, y = np.random.default_rng(29).normal(size=(5, 3)).astype(np.float32), np.array([0, 1, 1, 0, 1])
    bad, exc, message = STEP_CASES[case]
    before = [np.copy(a) for p in params for a in p[1:3]]
    with pytest.raises(exc, match=message):
        plan.step(*bad(x, y), [(0.1, 0.0, 0.0, False, 0.0)], [1] * 4)
    for a, b in zip([a for p in params for a in p[1:3]], before):
        np.testing.assert_array_equal(a, b)
    assert plan.steps == 0


@pytest.mark.parametrize("hyper, steps, message", [
    ([(-0.1, 0.0, 0.0, False, 0.0)], [1] * 4, r"^param group 0: lr must be in \[0, inf\)"),
    ([(0.1, 0.9, 0.0, False, 0.0)], [1] * 4, r"^0\.weight has no momentum_buffer, but its group's momentum is 0\.9"),
    ([(0.1, 0.0, 0.5, True, 0.0)], [1] * 4, r"^param group 0: nesterov momentum requires"),
    ([(0.1, 0.0, 0.0, False, 0.0)], [1, 1, 0, 1], r"^steps\[2\] \(1\.weight\) must be >= 1"),
    ([(0.1, 0.0, 0.0, False, 0.0)] * 2, [1] * 4, r"^hyper must have one tuple per param group \(1\), got 2"),
    ([(0.1, 0.0, 0.0, False, float("inf"))], [1] * 4, r"^param group 0: weight_decay must be finite"),
], ids=["negative-lr", "momentum-without-buffer", "nesterov-dampening", "step-zero", "groups", "inf-weight-decay"])
def test_plan_step_refuses_bad_hyper_parameters(hyper, steps, message):
    layers, params = plan_arrays()
    plan = make_plan(layers, params)
    with pytest.raises(ValueError, match=message):
        plan.step(np.zeros((2, 3), np.float32), np.array([0, 1]), hyper, steps)
    assert plan.steps == 0


def test_a_state_array_of_the_wrong_dtype_is_refused_before_any_update():
    # The per-layer path would update the parameters before the bad one; the fused path checks them all first.
    fused, _ = pair(no_bias, np.float32)
    opt, loss_fn = optim.Adam(fused.parameters(), lr=1e-2), losses.CrossEntropyLoss()
    x, y = np.random.default_rng(30).normal(size=(5, 12)), np.arange(5)
    fused.train_step(x, y, loss_fn, opt)
    last = fused[4].weight
    opt.state[last]["exp_avg_sq"] = opt.state[last]["exp_avg_sq"].astype(np.float64)
    message = refused(fused, opt, lambda: fused.train_step(x, y, loss_fn, opt), TypeError)
    assert message.startswith("state 'exp_avg_sq' of 4.weight must have the same dtype as the parameters (float32)")
