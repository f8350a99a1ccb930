"""Refused training steps change nothing and say why, as the per-layer path does; _C.TrainPlan at its
boundary names every bad argument and writes nothing when it refuses."""
from __future__ import annotations

import re

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, optim

from helpers import (LOSSES, OPTIMIZERS, assert_same_params, assert_same_state, assert_unchanged, every_activation,
                     no_bias, pair, snapshot)


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
        "labels-fractional-float": ("ce", np.full(7, 0.5), ValueError),  # whole floats are labels; 0.5 is not
        "labels-bool": ("ce", np.zeros(7, bool), TypeError),
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
