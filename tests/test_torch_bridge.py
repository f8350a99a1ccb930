"""fuseprop.torch: twins both ways (to_torch, from_torch), state dicts both ways, and TorchModule (fuseprop's
kernels inside a PyTorch model: gradcheck in float64, training with torch.optim against an all-torch twin,
and the tape's limits refused rather than computed wrongly). Skipped when torch is not installed."""
from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np
import pytest

import fuseprop
from fuseprop import nn

from helpers import assert_params_unchanged, every_layer, params_snapshot, small_mlp

torch = pytest.importorskip("torch")
import fuseprop.torch as ft  # noqa: E402  (after the skip: it imports torch)

DTYPES = [np.float32, np.float64]
TDTYPE = {np.float32: torch.float32, np.float64: torch.float64}
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def inputs(dtype, n=7, features=6, seed=1):
    return np.random.default_rng(seed).normal(size=(n, features)).astype(dtype)


def deterministic(dtype=np.float64, seed=0):
    """every_layer in eval mode (its Dropout the identity): the model gradcheck and the training twins use.
    (The whole model: predict puts every module back in the model's mode afterwards.)"""
    return every_layer(dtype, seed=seed).eval()


# ---------------------------------------------------------------------------------------------
# to_torch / from_torch


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_torch_gives_the_same_outputs_keys_and_weights(dtype):
    model = every_layer(dtype).eval()
    twin = ft.to_torch(model)
    assert isinstance(twin, torch.nn.Sequential) and isinstance(twin[3], torch.nn.Sequential)
    assert not twin.training and not twin[2].training
    ours, theirs = model.state_dict(), twin.state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        assert theirs[k].dtype == TDTYPE[dtype]
        np.testing.assert_array_equal(theirs[k].numpy(), ours[k], err_msg=k)
    x = inputs(dtype)
    np.testing.assert_allclose(twin(torch.from_numpy(x)).detach().numpy(), model.predict(x), **TOL[dtype])


def test_to_torch_copies_the_weights_and_keeps_each_modules_mode():
    model = every_layer()
    model[2].eval()
    twin = ft.to_torch(model)
    assert twin.training and twin[0].training and not twin[2].training
    twin[0].weight.data.zero_()
    assert model[0].weight.data.any()


def test_to_torch_and_from_torch_leave_both_generators_alone():
    torch.manual_seed(5)
    fuseprop.manual_seed(5)
    want_torch, want_ours = torch.rand(3), fuseprop.default_generator().random(3)
    ours, theirs = every_layer(seed=9), torch.nn.Linear(3, 2)  # built first: building draws
    torch.manual_seed(5)
    fuseprop.manual_seed(5)
    ft.from_torch(ft.to_torch(ours))
    ft.from_torch(theirs)
    assert torch.equal(torch.rand(3), want_torch)
    np.testing.assert_array_equal(fuseprop.default_generator().random(3), want_ours)


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_torch_round_trips_every_layer(dtype):
    twin = ft.to_torch(every_layer(dtype))
    back = ft.from_torch(twin)
    assert repr(back) == repr(every_layer(dtype))
    for (k, a), (j, b) in zip(back.state_dict().items(), twin.state_dict().items()):
        assert k == j and a.dtype == dtype
        np.testing.assert_array_equal(a, b.numpy())
    twin.eval()
    back.eval()
    x = inputs(dtype)
    np.testing.assert_allclose(back.predict(x), twin(torch.from_numpy(x)).detach().numpy(), **TOL[dtype])


def test_from_torch_numbers_named_children_and_keeps_modes():
    theirs = torch.nn.Sequential(OrderedDict(fc=torch.nn.Linear(3, 4), act=torch.nn.GELU("tanh"),
                                             drop=torch.nn.Dropout(0.1), out=torch.nn.Linear(4, 2)))
    theirs[2].eval()
    ours = ft.from_torch(theirs)
    assert list(ours.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert ours.training and not ours[2].training and ours[2].p == pytest.approx(0.1)
    assert ours[1].approximate == "tanh"


@pytest.mark.parametrize("module, where, name", [
    (torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Conv1d(1, 1, 1)), "module '1'", "torch.nn.modules.conv.Conv1d"),
    (torch.nn.Sequential(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.SiLU())), "module '0.1'",
     "torch.nn.modules.activation.SiLU"),
    (torch.nn.Unflatten(1, (2, 2)), "the model", "torch.nn.modules.flatten.Unflatten"),
], ids=["conv", "nested", "top"])
def test_from_torch_refuses_a_module_fuseprop_has_no_layer_for(module, where, name):
    with pytest.raises(TypeError, match=rf"^from_torch: {re.escape(where)} is a {re.escape(name)}, which fuseprop has no layer for"):
        ft.from_torch(module)


def test_from_torch_refuses_a_subclass():
    class Scaled(torch.nn.ReLU):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match=r"^from_torch: module '0' is a .*Scaled, which fuseprop has no layer for"):
        ft.from_torch(torch.nn.Sequential(Scaled()))


def test_from_torch_refuses_half_precision_and_an_implicit_or_other_softmax_axis():
    with pytest.raises(TypeError, match=r"^from_torch: the model \(torch.nn.Linear\) is torch.float16"):
        ft.from_torch(torch.nn.Linear(2, 2).half())
    with pytest.raises(ValueError, match=r"^from_torch: module '0' \(torch.nn.Softmax\): .*dim=None.*needs it stated"):
        ft.from_torch(torch.nn.Sequential(torch.nn.Softmax()))
    with pytest.raises(ValueError, match=r"^from_torch: the model \(torch.nn.LogSoftmax\): .*dim must be -1 or 1, got 0"):
        ft.from_torch(torch.nn.LogSoftmax(dim=0))


def test_to_torch_refuses_a_module_without_a_twin():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"^to_torch: module '1' is a .*Custom, which has no torch.nn twin"):
        ft.to_torch(nn.Sequential(nn.ReLU(), Custom()))


# ---------------------------------------------------------------------------------------------
# state dicts both ways


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dicts_trade_both_ways(dtype):
    model = every_layer(dtype)
    twin = ft.to_torch(every_layer(dtype, seed=3))
    twin.load_state_dict(ft.state_dict_to_torch(model.state_dict()))  # fuseprop -> torch
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(twin.state_dict()[k].numpy(), v)
    other = every_layer(dtype, seed=4)
    other.load_state_dict(dict(twin.named_parameters()))  # requires_grad tensors, torch -> fuseprop
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    other.load_state_dict(ft.to_torch(every_layer(dtype, seed=5)).state_dict())
    np.testing.assert_array_equal(other.state_dict()["0.weight"], every_layer(dtype, seed=5).state_dict()["0.weight"])
    assert list(ft.state_dict_to_torch(model)) == list(model.state_dict())  # a model works too


def test_a_bfloat16_tensor_is_refused_naming_the_key():
    model = small_mlp()
    snap = params_snapshot(model)
    theirs = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"^state_dict\['0\.weight'\] has dtype torch.bfloat16, the parameter has dtype float32"):
        model.load_state_dict(theirs)
    assert_params_unchanged(model, snap)


def test_a_float64_torch_state_dict_is_refused_by_a_float32_model_and_changes_nothing():
    model = small_mlp()
    snap = params_snapshot(model)
    theirs = {k: torch.from_numpy(v.astype(np.float64) + 1).requires_grad_() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"^state_dict\['0\.weight'\] has dtype float64, the parameter has dtype float32"):
        model.load_state_dict(theirs)
    assert_params_unchanged(model, snap)


# ---------------------------------------------------------------------------------------------
# TorchModule


def test_torch_module_shares_the_weights_and_keys_of_the_fuseprop_model():
    model = deterministic()
    wrapper = ft.TorchModule(model)
    assert list(wrapper.state_dict()) == list(model.state_dict())
    for name, p in model.named_parameters():
        tp = wrapper.get_parameter(name)
        assert isinstance(tp, torch.nn.Parameter) and tp.dtype == torch.float64
        assert tp.data_ptr() == p.data.ctypes.data
    wrapper.load_state_dict({k: torch.zeros_like(v) for k, v in wrapper.state_dict().items()})
    assert not model[0].weight.data.any()  # written in place into fuseprop's arrays


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_module_forward_is_the_models(dtype):
    model = deterministic(dtype)
    wrapper = ft.TorchModule(model)
    x = inputs(dtype)
    want = model.predict(x)
    np.testing.assert_array_equal(wrapper(torch.from_numpy(x)).detach().numpy(), want)
    with torch.no_grad():
        np.testing.assert_array_equal(wrapper(torch.from_numpy(x)).numpy(), want)
    strided = torch.from_numpy(np.asfortranarray(x))  # not contiguous: taken as a contiguous copy
    assert not strided.is_contiguous()
    np.testing.assert_array_equal(wrapper(strided).detach().numpy(), want)


@pytest.mark.parametrize("make", [deterministic, lambda: nn.Linear(6, 3, dtype=np.float64), nn.LogSoftmax],
                         ids=["every-layer", "linear", "parameterless"])
def test_torch_module_gradcheck_in_float64_for_the_input_and_every_weight(make):
    wrapper = ft.TorchModule(make())
    x = torch.from_numpy(inputs(np.float64, n=3)).requires_grad_()
    params = tuple(wrapper.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: wrapper(x), (x,) + params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_torch_module_gradients_with_a_frozen_input_and_frozen_weights():
    model = deterministic()
    wrapper, twin = ft.TorchModule(model), ft.to_torch(model)
    wrapper.get_parameter("0.weight").requires_grad_(False)
    twin[0].weight.requires_grad_(False)
    x = torch.from_numpy(inputs(np.float64))
    (wrapper(x) ** 2).sum().backward()
    (twin(x) ** 2).sum().backward()
    for (name, a), (_, b) in zip(wrapper.named_parameters(), twin.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **TOL[np.float64], err_msg=name)


def sandwich(middle):
    """torch Linear -> middle -> torch Linear, in float64, seeded."""
    torch.manual_seed(0)
    first, last = torch.nn.Linear(5, 6).double(), torch.nn.Linear(4, 3).double()
    return torch.nn.Sequential(first, middle, last)


def test_a_fuseprop_network_trains_inside_a_torch_model_as_its_torch_twin():
    model = deterministic()
    ours, theirs = sandwich(ft.TorchModule(model)), sandwich(ft.to_torch(model))
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ours, theirs)]
    rng = np.random.default_rng(2)
    for step in range(12):
        x = torch.from_numpy(rng.normal(size=(16, 5)))
        y = torch.from_numpy(rng.integers(0, 3, size=16))
        losses = []
        for net, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-11), f"loss at step {step}"
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(model[0].weight.data, ours[1].get_parameter("0.weight").detach().numpy())


def test_two_forwards_then_one_backward_gives_the_right_gradients():
    model = deterministic()
    wrapper, twin = ft.TorchModule(model), ft.to_torch(model)
    a, b = (torch.from_numpy(inputs(np.float64, seed=s)).requires_grad_() for s in (1, 2))
    ta, tb = (t.detach().clone().requires_grad_() for t in (a, b))
    (wrapper(a).sum() + (wrapper(b) ** 2).sum()).backward()  # the first forward's tape is gone: run again
    (twin(ta).sum() + (twin(tb) ** 2).sum()).backward()
    for got, want in ((a.grad, ta.grad), (b.grad, tb.grad)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL[np.float64])
    for (name, p), (_, q) in zip(wrapper.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL[np.float64], err_msg=name)


def test_backward_twice_with_retain_graph_accumulates_twice_as_torch_does():
    model = deterministic()
    wrapper, twin = ft.TorchModule(model), ft.to_torch(model)
    x = torch.from_numpy(inputs(np.float64))
    for net in (wrapper, twin):
        loss = (net(x) ** 2).sum()
        loss.backward(retain_graph=True)
        loss.backward()
    for (name, p), (_, q) in zip(wrapper.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **TOL[np.float64], err_msg=name)


def test_a_second_forward_with_dropout_in_training_makes_the_first_backward_raise():
    wrapper = ft.TorchModule(every_layer(np.float64))  # its Dropout draws a new mask per forward
    x = torch.from_numpy(inputs(np.float64)).requires_grad_()
    first, second = wrapper(x), wrapper(x)
    second.sum().backward()  # the last forward's backward: fine
    assert x.grad is not None
    with pytest.raises(RuntimeError, match=r"^fuseprop.torch.TorchModule: this backward belongs to an earlier forward "
                                           r".*module '2' \(Dropout\) draws a new dropout mask"):
        first.sum().backward()


def test_dropout_in_training_backpropagates_through_its_own_mask():
    wrapper = ft.TorchModule(nn.Sequential(nn.Dropout(0.5)))
    x = torch.from_numpy(inputs(np.float64, n=50)).requires_grad_()
    y = wrapper(x)
    y.sum().backward()
    kept = (y != 0).numpy()
    assert 0 < kept.mean() < 1
    np.testing.assert_array_equal(x.grad.numpy(), np.where(kept, 2.0, 0.0))


def test_an_optimizer_step_between_forward_and_backward_is_refused_by_torch():
    wrapper = ft.TorchModule(deterministic())
    opt = torch.optim.SGD(wrapper.parameters(), lr=0.1)
    out = wrapper(torch.from_numpy(inputs(np.float64)))
    (out ** 2).sum().backward(retain_graph=True)
    opt.step()  # the weights change in place under the graph
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (out ** 2).sum().backward()


def test_a_replaced_fuseprop_array_makes_the_forward_raise():
    model = deterministic()
    wrapper = ft.TorchModule(model)
    model[0].weight.data = model[0].weight.data.copy()
    with pytest.raises(RuntimeError, match=r"^TorchModule: the torch Parameter '0.weight' no longer shares memory"):
        wrapper(torch.from_numpy(inputs(np.float64)))


def test_torch_module_refuses_another_dtype_device_or_type():
    wrapper = ft.TorchModule(deterministic())
    with pytest.raises(TypeError, match=r"^the input has dtype torch.float32, the fuseprop model's parameters are torch.float64"):
        wrapper(torch.zeros(2, 6))
    with pytest.raises(TypeError, match=r"^TorchModule takes a torch.Tensor, got ndarray"):
        wrapper(np.zeros((2, 6)))
    with pytest.raises(TypeError, match=r"^TorchModule wraps a fuseprop.nn.Module, got Linear"):
        ft.TorchModule(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"^TorchModule needs parameters of one dtype, the model has float32, float64"):
        ft.TorchModule(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, dtype=np.float64)))


def test_train_and_eval_reach_the_fuseprop_model():
    model = every_layer()
    wrapper = ft.TorchModule(model)
    assert wrapper.training and model.training
    wrapper.eval()
    assert not model.training and not model[2].training
    wrapper.train()
    assert model[2].training


def test_torch_grads_accumulate_over_backwards_and_fuseprops_hold_the_last():
    model = deterministic()
    wrapper = ft.TorchModule(model)
    x1, x2 = (torch.from_numpy(inputs(np.float64, seed=s)) for s in (1, 2))
    wrapper(x1).sum().backward()
    g1 = wrapper.get_parameter("0.weight").grad.clone()
    wrapper(x2).sum().backward()
    g_sum = wrapper.get_parameter("0.weight").grad.clone()
    last = model[0].weight.grad.copy()  # fuseprop's: the second backward's gradient alone
    model.zero_grad()
    model.backward(np.ones_like(model(x2.numpy())))
    np.testing.assert_array_equal(last, model[0].weight.grad)
    np.testing.assert_allclose(g_sum.numpy(), g1.numpy() + last, **TOL[np.float64])
