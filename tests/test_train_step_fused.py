"""Sequential.train_step as one native call (_C.TrainPlan) against the per-layer path.

Every fused step is compared with the per-layer path (``fused_train_step = False``) on a copy of the
same model: both run the same kernels on the same arrays, so losses and parameters agree to the last
bits (the tolerances asked for are float64 1e-12 and float32 1e-6 relative). Then: the plan is really
used; a steady state allocates nothing; models without a fused form still train; runs repeat exactly.
Refused steps: tests/test_train_step_refusals.py; what changes between steps: tests/test_train_step_state.py.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim

from helpers import (NETWORKS, LOSSES, OPTIMIZERS, RTOL, all_pairs, assert_same_params, assert_same_state,
                     mlp_784_16_16_10, no_bias, pair, unfused)


# ---------------------------------------------------------------------------------------------
# (a) parity with the per-layer path, (b) the plan is used


# The loss and the optimizer are separate code in the plan (one computes the output gradient, the other
# updates each parameter), as are the network's layers and the dtype: every pair of values is covered.
STEP_MATRIX = all_pairs({"net": list(NETWORKS), "loss": list(LOSSES), "opt": list(OPTIMIZERS),
                         "dtype": [np.float32, np.float64]})


@pytest.mark.parametrize("net,loss_name,opt_name,dtype", [
    pytest.param(r["net"], r["loss"], r["opt"], r["dtype"], id=f"{r['net']}-{r['loss']}-{r['opt']}-{r['dtype'].__name__}")
    for r in STEP_MATRIX])
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


def softmax_output(dtype):
    return nn.Sequential(nn.Linear(12, 8, dtype=dtype), nn.ReLU(), nn.Linear(8, 5, dtype=dtype), nn.Softmax())


def nested(dtype):
    return nn.Sequential(nn.Sequential(nn.Linear(12, 8, dtype=dtype), nn.ReLU()), nn.Linear(8, 5, dtype=dtype))


class MyMSELoss(losses.MSELoss):
    pass


FALLBACKS = {
    "activation-first": (unfused, lambda: losses.CrossEntropyLoss(), OPTIMIZERS["sgd-momentum"],
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
