"""The Python API: build info, seeding, initialisation, state dicts, modes, optimizer state."""
from __future__ import annotations

import importlib.metadata
import math

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim

from helpers import relu_mlp


def small_net(dtype=np.float32):
    return relu_mlp(6, 5, 3, dtype=dtype)


def test_build_info_reports_the_build():
    info = fuseprop.build_info()
    assert info["version"] == fuseprop.__version__ == importlib.metadata.version("fuseprop")
    assert info["compiler"] and info["arch"] in ("x86_64", "aarch64", "other")
    assert info["kernel_level"] in info["kernel_levels_available"] and info["num_threads"] >= 1
    assert info["kernel_levels_available"][0] == "generic"
    assert isinstance(info["cuda_compiled"], bool) and isinstance(info["cuda_available"], bool)
    assert info["cuda_available"] or info["cuda_status"].startswith("no CUDA device")


def test_manual_seed_makes_initialisation_repeatable():
    fuseprop.manual_seed(0)
    a = small_net().state_dict()
    fuseprop.manual_seed(0)
    b = small_net().state_dict()
    fuseprop.manual_seed(1)
    c = small_net().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_explicit_generator_is_used():
    w1 = nn.Linear(4, 3, generator=np.random.default_rng(5)).weight.data
    w2 = nn.Linear(4, 3, generator=np.random.default_rng(5)).weight.data
    np.testing.assert_array_equal(w1, w2)


@pytest.mark.parametrize("init,check", [
    ("default", lambda w, b, fi, fo: np.abs(w).max() <= 1 / math.sqrt(fi) and np.abs(b).max() <= 1 / math.sqrt(fi)
     and np.abs(w).max() > 0.9 / math.sqrt(fi)),
    ("xavier_uniform", lambda w, b, fi, fo: np.abs(w).max() <= math.sqrt(6 / (fi + fo)) and not b.any()),
    ("xavier_normal", lambda w, b, fi, fo: abs(w.std() / math.sqrt(2 / (fi + fo)) - 1) < 0.05 and not b.any()),
    ("he_uniform", lambda w, b, fi, fo: np.abs(w).max() <= math.sqrt(6 / fi) and np.abs(w).max() > 0.9 * math.sqrt(6 / fi)),
    ("he_normal", lambda w, b, fi, fo: abs(w.std() / math.sqrt(2 / fi) - 1) < 0.05 and abs(w.mean()) < 0.01),
])
def test_initialisation_follows_the_named_scheme(init, check):
    fuseprop.manual_seed(2)
    layer = nn.Linear(400, 300, init=init)
    assert check(layer.weight.data, layer.bias.data, 400, 300)
    assert layer.weight.data.dtype == np.float32 and layer.weight.data.flags.c_contiguous


def test_parameters_are_named_and_keyed_as_pytorch():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2, bias=False))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight"]
    assert [p.name for p in model.parameters()] == ["0.weight", "0.bias", "2.weight"]
    assert model[0].weight.shape == (3, 4)  # (out_features, in_features)
    outer = nn.Sequential(model, nn.Linear(2, 2))
    assert [n for n, _ in outer.named_parameters()] == ["0.0.weight", "0.0.bias", "0.2.weight", "1.weight", "1.bias"]
    assert [p.name for p in outer.parameters()][0] == "0.0.weight"


def test_linear_computes_x_times_weight_transposed_plus_bias():
    layer = nn.Linear(3, 2)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(layer(x), x @ layer.weight.data.T + layer.bias.data, rtol=1e-6)


def test_state_dict_is_a_copy_and_round_trips():
    fuseprop.manual_seed(3)
    a, b = small_net(), small_net()
    sd = a.state_dict()
    sd["0.weight"][...] = 0
    assert a[0].weight.data.any()
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_writes_in_place():
    model = small_net()
    weight = model[0].weight.data
    sd = {k: v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    assert model[0].weight.data is weight and weight.dtype == np.float32
    np.testing.assert_array_equal(weight, sd["0.weight"])


def test_load_state_dict_takes_python_lists_in_the_parameters_dtype():
    # Lists carry no dtype to disagree with: their numbers convert to the parameter's dtype.
    model = small_net()
    sd = {k: (v + 1).tolist() for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    for name, p in model.named_parameters():
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p.data, np.asarray(sd[name], np.float32))


def test_load_state_dict_non_strict_reports_missing_and_unexpected():
    model = small_net()
    sd = model.state_dict()
    del sd["2.bias"]
    sd["extra"] = np.zeros(1)
    result = model.load_state_dict(sd, strict=False)
    assert result == {"missing_keys": ["2.bias"], "unexpected_keys": ["extra"]}


def test_train_and_eval_set_the_mode_everywhere():
    model = nn.Sequential(small_net(), nn.Linear(3, 3))
    assert all(m.training for _, m in model.named_modules())
    model.eval()
    assert not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_zero_grad_clears_in_place():
    model = small_net()
    grads = [p.grad for p in model.parameters()]
    for g in grads:
        g += 1
    model.zero_grad()
    assert all(p.grad is g and not g.any() for p, g in zip(model.parameters(), grads))


def test_losses_return_python_floats_and_gradients():
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    for loss_fn, target in [(losses.CrossEntropyLoss(), np.array([0, 2, 1, 1], np.int32)),
                            (losses.MSELoss(), np.ones((4, 3))), (losses.BCEWithLogitsLoss(), np.ones((4, 3)))]:
        value = loss_fn(logits, target)
        assert type(value) is float
        grad = loss_fn.backward()
        assert grad.shape == logits.shape and grad.dtype == np.float32


def train(model, opt, steps, seed):
    rng = np.random.default_rng(seed)
    loss_fn = losses.CrossEntropyLoss()
    for _ in range(steps):
        x = rng.normal(size=(8, 6)).astype(np.float32)
        model.train_step(x, rng.integers(0, 3, size=8), loss_fn, opt)


@pytest.mark.parametrize("make_opt", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                      lambda ps: optim.Adam(ps, lr=0.01), lambda ps: optim.AdamW(ps, lr=0.01)],
                         ids=["sgd", "adam", "adamw"])
def test_resuming_from_model_and_optimizer_state_is_exact(make_opt):
    fuseprop.manual_seed(4)
    model = small_net()
    opt = make_opt(model.parameters())
    train(model, opt, 3, seed=1)
    model_state, opt_state = model.state_dict(), opt.state_dict()
    assert sorted(opt_state) == ["param_groups", "state"] and opt_state["param_groups"][0]["params"] == [0, 1, 2, 3]
    train(model, opt, 2, seed=2)

    resumed = small_net()
    resumed.load_state_dict(model_state)
    resumed_opt = make_opt(resumed.parameters())
    resumed_opt.load_state_dict(opt_state)
    train(resumed, resumed_opt, 2, seed=2)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v)


def test_param_groups_take_their_own_hyper_parameters():
    model = small_net()
    frozen = [p.data.copy() for p in model[0].parameters()]
    opt = optim.SGD([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}], lr=0.5)
    assert opt.param_groups[1]["lr"] == 0.5
    train(model, opt, 2, seed=3)
    assert all(np.array_equal(a, p.data) for a, p in zip(frozen, model[0].parameters()))
    opt.param_groups[0]["lr"] = 0.1  # as a schedule would
    train(model, opt, 1, seed=4)
    assert not np.array_equal(frozen[0], model[0].weight.data)


def test_repr_reads_like_pytorch():
    text = repr(nn.Sequential(nn.Linear(4, 3), nn.LeakyReLU(0.2), nn.GELU(approximate="tanh")))
    assert "(0): Linear(in_features=4, out_features=3, bias=True)" in text
    assert "(1): LeakyReLU(negative_slope=0.2)" in text and "GELU(approximate='tanh')" in text
