"""Against an independent framework: PyTorch (skipped when it is not installed).

Weights trade with torch.nn.Sequential as they are; forward, gradients, losses and optimizer
updates match PyTorch's in float64 (and optimizer steps in float32 too).
"""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim

torch = pytest.importorskip("torch")


def pair(dtype=np.float64):
    """The same network in fuseprop and in torch, torch loaded from fuseprop's state dict."""
    fuseprop.manual_seed(0)
    ours = nn.Sequential(nn.Linear(10, 8, dtype=dtype), nn.LeakyReLU(0.1), nn.Linear(8, 8, dtype=dtype), nn.GELU(),
                         nn.Linear(8, 8, dtype=dtype), nn.GELU(approximate="tanh"), nn.Linear(8, 6, dtype=dtype),
                         nn.Sigmoid(), nn.Linear(6, 6, dtype=dtype), nn.Tanh(), nn.Linear(6, 4, dtype=dtype))
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    theirs = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.LeakyReLU(0.1), torch.nn.Linear(8, 8),
                                 torch.nn.GELU(), torch.nn.Linear(8, 8), torch.nn.GELU(approximate="tanh"),
                                 torch.nn.Linear(8, 6), torch.nn.Sigmoid(), torch.nn.Linear(6, 6), torch.nn.Tanh(),
                                 torch.nn.Linear(6, 4)).to(tdtype)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def test_forward_and_gradients_match_torch_in_float64():
    ours, theirs = pair()
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 10)), rng.integers(0, 4, size=16)
    loss_fn = losses.CrossEntropyLoss(label_smoothing=0.1)
    loss = loss_fn(ours(x), y)
    ours.zero_grad()
    ours.backward(loss_fn.backward())
    t_loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y), label_smoothing=0.1)
    t_loss.backward()
    assert abs(loss - t_loss.item()) < 1e-12
    grads = {n: p.grad.numpy() for n, p in theirs.named_parameters()}
    for n, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, grads[n], rtol=1e-10, atol=1e-13, err_msg=n)


def test_torch_state_dict_loads_into_fuseprop():
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ours = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mse", "bce"])
def test_elementwise_losses_match_torch(name):
    rng = np.random.default_rng(3)
    pred, target = rng.normal(size=(5, 3)) * 3, rng.uniform(size=(5, 3))
    ours = losses.MSELoss() if name == "mse" else losses.BCEWithLogitsLoss()
    fn = torch.nn.functional.mse_loss if name == "mse" else torch.nn.functional.binary_cross_entropy_with_logits
    tp = torch.from_numpy(pred).requires_grad_()
    t_loss = fn(tp, torch.from_numpy(target))
    t_loss.backward()
    assert abs(ours(pred, target) - t_loss.item()) < 1e-12
    np.testing.assert_allclose(ours.backward(), tp.grad.numpy(), rtol=1e-12, atol=1e-15)


OPTIMIZERS = [
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    (lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-2), lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-2)),
    (lambda ps: optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99)), lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("make", OPTIMIZERS, ids=["sgd-momentum-wd", "sgd-nesterov", "adam-l2", "adamw"])
def test_training_steps_match_torch(make, dtype):
    ours, theirs = pair(dtype)
    opt, t_opt = make[0](ours.parameters()), make[1](theirs.parameters())
    rng = np.random.default_rng(4)
    loss_fn = losses.CrossEntropyLoss()
    for _ in range(5):
        x, y = rng.normal(size=(16, 10)).astype(dtype), rng.integers(0, 4, size=16)
        ours.train_step(x, y, loss_fn, opt)
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        t_opt.step()
    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-6)
    t_params = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        np.testing.assert_allclose(p.data, t_params[n].detach().numpy(), rtol=rtol, atol=atol, err_msg=n)
