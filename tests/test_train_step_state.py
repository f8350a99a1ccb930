"""What changes between fused training steps is followed: schedules, hyper-parameters, replaced arrays
and layers, optimizer state round-trips, switching paths, copies of a model and of a loss."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim

from helpers import OPTIMIZERS, assert_same_params, assert_same_state, assert_same_state_dict, every_activation, no_bias, pair


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
