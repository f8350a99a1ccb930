"""Bad parameters, hyper-parameters and state given to the optimizers get a clear error, and a refused
step or load changes neither the parameters nor the optimizer state."""
import math
import re

import numpy as np
import pytest

import fuseprop
from fuseprop import nn, optim

from helpers import assert_params_unchanged, params_snapshot, randn, small_mlp


# ---------------------------------------------------------------------------------------------
# optimizers


def test_optimizer_rejects_empty_params():
    with pytest.raises(ValueError, match=r"^optimizer got an empty parameter list"):
        optim.SGD([], lr=0.1)


@pytest.mark.parametrize("params", [
    pytest.param(lambda m: [np.zeros(3, np.float32)], id="ndarray"),
    pytest.param(lambda m: [m.weight, m.bias.data], id="mixed"),
    pytest.param(lambda m: [{"params": [m.weight, 3.0]}], id="group-with-float"),
])
def test_optimizer_rejects_non_parameters(params):
    fuseprop.manual_seed(0)
    with pytest.raises(TypeError, match=r"^optimizer params must be fuseprop\.nn\.Parameter objects, got"):
        optim.SGD(params(nn.Linear(3, 2)), lr=0.1)


@pytest.mark.parametrize("params", [
    pytest.param(lambda m: [m.weight, m.weight], id="same-list"),
    pytest.param(lambda m: [{"params": [m.weight]}, {"params": [m.bias, m.weight]}], id="two-groups"),
])
def test_optimizer_rejects_duplicate_parameters(params):
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=r"^some parameters appear more than once"):
        optim.SGD(params(nn.Linear(3, 2)), lr=0.1)


_BAD_HYPERS = [
    ("SGD", dict(lr=-0.1), "learning rate"),
    ("SGD", dict(lr=math.nan), "learning rate"),
    ("SGD", dict(lr=math.inf), "learning rate"),
    ("SGD", dict(lr=True), "learning rate"),
    ("SGD", dict(lr="0.1"), "learning rate"),
    ("SGD", dict(lr=0.1, momentum=-0.9), "momentum value"),
    ("SGD", dict(lr=0.1, momentum=math.nan), "momentum value"),
    ("SGD", dict(lr=0.1, momentum=True), "momentum value"),
    ("SGD", dict(lr=0.1, dampening=-1.0), "dampening value"),
    ("SGD", dict(lr=0.1, weight_decay=-1e-4), "weight_decay value"),
    ("SGD", dict(lr=0.1, weight_decay=math.nan), "weight_decay value"),
    ("Adam", dict(lr=-1e-3), "learning rate"),
    ("Adam", dict(lr=math.nan), "learning rate"),
    ("Adam", dict(betas=(1.0, 0.999)), "beta parameter at index 0"),
    ("Adam", dict(betas=(0.9, 1.0)), "beta parameter at index 1"),
    ("Adam", dict(betas=(-0.1, 0.999)), "beta parameter at index 0"),
    ("Adam", dict(betas=(0.9, math.nan)), "beta parameter at index 1"),
    ("Adam", dict(betas=(True, 0.999)), "beta parameter at index 0"),
    ("Adam", dict(betas=(0.9, 0.99, 0.9)), "betas"),
    ("Adam", dict(eps=-1e-8), "epsilon value"),
    ("Adam", dict(eps=math.nan), "epsilon value"),
    ("Adam", dict(weight_decay=-0.1), "weight_decay value"),
    ("AdamW", dict(weight_decay=math.inf), "weight_decay value"),
    ("AdamW", dict(betas=(0.9, 1.5)), "beta parameter at index 1"),
]


@pytest.mark.parametrize("cls, kwargs, name", [
    pytest.param(cls, kw, name, id=f"{cls}-" + "-".join(f"{k}={v!r}" for k, v in kw.items()))
    for cls, kw, name in _BAD_HYPERS])
def test_optimizer_rejects_invalid_hyper_parameters(cls, kwargs, name):
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=rf"^Invalid {re.escape(name)}"):
        getattr(optim, cls)(nn.Linear(3, 2).parameters(), **kwargs)


def test_sgd_nesterov_without_momentum_is_an_error():
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=r"^Nesterov momentum requires a momentum and zero dampening"):
        optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, nesterov=True)


def test_sgd_nesterov_with_dampening_is_an_error():
    fuseprop.manual_seed(0)
    with pytest.raises(ValueError, match=r"^Nesterov momentum requires a momentum and zero dampening"):
        optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)


def test_param_group_with_unknown_key_is_an_error():
    fuseprop.manual_seed(0)
    m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"^unknown hyper-parameters in param group: \['lrr'\]"):
        optim.SGD([{"params": [m.weight], "lrr": 0.1}], lr=0.1)


def _model_and_optimizer(cls="SGD", **kwargs):
    model = small_mlp()
    params = list(model.parameters())
    opt = getattr(optim, cls)([{"params": params[:2]}, {"params": params[2:]}], **kwargs)
    r = np.random.default_rng(1)
    for p in params:
        p.grad[...] = randn(r, *p.shape)
    return model, opt


@pytest.mark.parametrize("cls, key, value", [
    pytest.param("SGD", "lr", -1.0, id="SGD-lr"),
    pytest.param("SGD", "momentum", math.nan, id="SGD-momentum"),
    pytest.param("Adam", "lr", -1.0, id="Adam-lr"),
    pytest.param("Adam", "betas", (1.0, 0.999), id="Adam-betas"),
])
@pytest.mark.parametrize("group", [0, 1])
def test_step_after_editing_a_group_to_an_invalid_value_changes_no_parameter(cls, key, value, group):
    model, opt = _model_and_optimizer(cls, lr=0.1)
    opt.step()  # state exists, so "unchanged" covers it too
    snap = params_snapshot(model)
    state = {p: {k: np.copy(v) for k, v in s.items()} for p, s in opt.state.items()}
    opt.param_groups[group][key] = value
    with pytest.raises(ValueError, match=r"^Invalid "):
        opt.step()
    assert_params_unchanged(model, snap)
    for p, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[p][k])


@pytest.mark.parametrize("cls, key", [("SGD", "momentum_buffer"), ("Adam", "exp_avg"), ("Adam", "exp_avg_sq")])
@pytest.mark.parametrize("bad", ["wrong_shape", "int_dtype"])
def test_optimizer_load_state_dict_bad_state_entry_changes_nothing(cls, key, bad):
    kwargs = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1)
    model, opt = _model_and_optimizer(cls, **kwargs)
    opt.step()
    state = opt.state_dict()
    for s in state["state"].values():
        s[key] = s[key] + 1
    for g in state["param_groups"]:
        g["lr"] = 0.5
    last = max(state["state"])
    value = state["state"][last][key]
    state["state"][last][key] = value.reshape(-1)[:-1] if bad == "wrong_shape" else value.astype(np.int64)
    before = opt.state_dict()
    buffers = {p: dict(s) for p, s in opt.state.items()}
    with pytest.raises(ValueError, match=rf"^state '{key}' of parameter {last} must be a float array of shape"):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert [g["lr"] for g in after["param_groups"]] == [g["lr"] for g in before["param_groups"]]
    for i, s in before["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(after["state"][i][k], v)
    for p, s in opt.state.items():  # the very same arrays, not copies
        for k, v in s.items():
            assert v is buffers[p][k]


def test_optimizer_load_state_dict_invalid_group_value_changes_nothing():
    model, opt = _model_and_optimizer("SGD", lr=0.1, momentum=0.9)
    opt.step()
    state = opt.state_dict()
    for s in state["state"].values():
        s["momentum_buffer"] = s["momentum_buffer"] + 1
    state["param_groups"][1]["lr"] = -0.5
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"^Invalid learning rate"):
        opt.load_state_dict(state)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i, s in before["state"].items():
        np.testing.assert_array_equal(after["state"][i]["momentum_buffer"], s["momentum_buffer"])


@pytest.mark.parametrize("step", [-1, None])
def test_adam_load_state_dict_invalid_step_changes_nothing(step):
    # Either load_state_dict refuses the state, or the next step() refuses as a whole: never half an update.
    model, opt = _model_and_optimizer("Adam", lr=0.1)
    opt.step()
    state = opt.state_dict()
    state["state"][len(model.parameters()) - 1]["step"] = step
    snap = params_snapshot(model)
    try:
        opt.load_state_dict(state)
    except ValueError:
        pass
    else:
        with pytest.raises((ValueError, TypeError)):
            opt.step()
    assert_params_unchanged(model, snap)
