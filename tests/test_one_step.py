"""One per-layer step (fuseprop.engine.step) behind Sequential.train_step, fit and DataParallel: the same
checks, the same messages and the same numbers on every path; and the module protocol it talks to (any
Module trains with it, and a layer the plans do not know stays on it).

Before the step was shared, fit's copy skipped the check that the update left the weights finite, and
its gradient message named no parameter: test_every_path_refuses_the_same_way failed there."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim
from fuseprop.distributed import DataParallel, run_local


def model(seed=0):
    # Dropout(0.0) has no native form: every path takes the per-layer step.
    fuseprop.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 3))


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, size=n)


class NanGradient(losses.CrossEntropyLoss):
    """A finite loss whose gradient is NaN."""

    def backward(self):
        return np.full_like(super().backward(), np.nan)


class InfiniteLoss(losses.CrossEntropyLoss):
    def __call__(self, logits, labels):
        super().__call__(logits, labels)
        return float("inf")


def run_train_step(m, x, y, loss_fn, opt):
    return m.train_step(x, y, loss_fn, opt)


def run_fit(m, x, y, loss_fn, opt):
    return m.fit(x, y, loss=loss_fn, optimizer=opt, epochs=1, batch_size=len(x), shuffle=False, verbose=0,
                 l2=0.0).history["loss"][0]


def run_data_parallel(m, x, y, loss_fn, opt):
    def rank(comm):
        return DataParallel(m, comm, timeout=20).train_step(x, y, loss_fn, opt)
    return run_local(1, rank)[0]


PATHS = {"train_step": run_train_step, "fit": run_fit, "DataParallel": run_data_parallel}

REFUSALS = {
    "non-finite loss": (InfiniteLoss, lambda p: optim.SGD(p, lr=0.1), r"^the loss is inf; the weights were not updated$",
                        True),
    "non-finite gradient": (NanGradient, lambda p: optim.SGD(p, lr=0.1),
                            r"^the gradient of 0\.weight is not finite; the weights were not updated$", True),
    "overflowing update": (losses.CrossEntropyLoss, lambda p: optim.SGD(p, lr=3e38),
                           r"^the optimizer update made \S+ non-finite \(is the learning rate too large\?\); the weights "
                           r"were overwritten: reload them from a checkpoint$", False),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_path_refuses_the_same_way(path, case):
    make_loss, make_opt, message, unchanged = REFUSALS[case]
    m, (x, y) = model(), data()
    x = x * np.float32(1e3) if case == "overflowing update" else x
    before = {n: p.data.copy() for n, p in m.named_parameters()}
    opt = make_opt(m.parameters())
    with pytest.raises(FloatingPointError, match=message):
        PATHS[path](m, x, y, make_loss(), opt)
    if unchanged:
        for n, p in m.named_parameters():
            np.testing.assert_array_equal(p.data, before[n], err_msg=n)
        assert not opt.state or not any(opt.state.values())


@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_takes_the_same_step(path):
    x, y = data()
    ref = model()
    expected = run_train_step(ref, x, y, losses.CrossEntropyLoss(), optim.Adam(ref.parameters(), lr=1e-2))
    m = model()
    loss = PATHS[path](m, x, y, losses.CrossEntropyLoss(), optim.Adam(m.parameters(), lr=1e-2))
    assert loss == pytest.approx(expected, rel=1e-6)
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7, err_msg=n)


class Residual(nn.Module):
    """A module fuseprop does not ship: y = x + linear(x). It trains through the protocol alone."""

    def __init__(self, features):
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x):
        self._x = x
        return x + self.linear(x)

    def backward(self, grad_out):
        return grad_out + self.linear.backward(grad_out)


def test_any_module_trains_with_the_per_layer_step():
    fuseprop.manual_seed(0)
    m = Residual(6)
    x = np.random.default_rng(1).normal(size=(32, 6)).astype(np.float32)
    target = x * np.float32(2.0)
    opt = optim.SGD(m.parameters(), lr=0.1)
    losses_seen = [m.train_step(x, target, losses.MSELoss(), opt) for _ in range(60)]
    assert losses_seen[-1] < 0.05 * losses_seen[0]
    assert m.train_plan is None
    with pytest.raises(ValueError, match=r"^train_step needs a non-empty batch, got x of shape \(0, 6\)$"):
        m.train_step(x[:0], target[:0], losses.MSELoss(), opt)


class ScaledLinear(nn.Linear):
    """A Linear subclass that computes something else: the plans must not take it for a Linear."""

    def forward(self, x):
        return super().forward(x) * np.float32(2.0)

    def backward(self, grad_out):
        return super().backward(grad_out * np.float32(2.0))


def test_a_layer_the_plans_do_not_know_stays_on_the_per_layer_step():
    fuseprop.manual_seed(0)
    m = nn.Sequential(ScaledLinear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    assert m[0].native_layer() is None and m[2].native_layer() is not None
    x, y = data()
    m.train_step(x, y, losses.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1))
    assert m.train_plan is None
    assert "module 0 (ScaledLinear)" in m._fused.why_not
