"""Sequential.train_step: a step refused for bad data, labels or a non-finite loss leaves the weights
and the optimizer state as they were; an update that overflows is reported at once."""
import math
import re

import numpy as np
import pytest

from fuseprop import losses, optim

from helpers import assert_params_unchanged, params_snapshot, randn, small_mlp


# ---------------------------------------------------------------------------------------------
# Sequential.train_step: a failed step leaves the weights (and the optimizer state) as they were


def _trained_one_step(lr=0.1, loss_fn=None):
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    r = np.random.default_rng(2)
    x, labels = randn(r, 5, 3), np.array([0, 1, 1, 0, 1])
    model.train_step(x, labels, loss_fn or losses.CrossEntropyLoss(), opt)
    return model, opt, x, labels


def _optimizer_state(opt):
    return {id(p): {k: np.copy(v) for k, v in s.items()} for p, s in opt.state.items()}


def _assert_step_refused(model, opt, call, exc, message):
    snap = params_snapshot(model)
    state = _optimizer_state(opt)
    with pytest.raises(exc, match=message):
        call()
    assert_params_unchanged(model, snap)
    for p, s in opt.state.items():
        for k, v in s.items():
            np.testing.assert_array_equal(v, state[id(p)][k])


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_train_step_non_finite_x_raises_and_keeps_weights(value):
    model, opt, x, labels = _trained_one_step()
    x = x.copy()
    x[2, 1] = value
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         FloatingPointError, r"^the loss is (nan|inf); the weights were not updated")


def test_train_step_nan_target_raises_and_keeps_weights():
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    r = np.random.default_rng(2)
    x, target = randn(r, 5, 3), randn(r, 5, 2)
    model.train_step(x, target, losses.MSELoss(), opt)
    target[0, 0] = np.nan
    _assert_step_refused(model, opt, lambda: model.train_step(x, target, losses.MSELoss(), opt),
                         FloatingPointError, r"^the loss is nan")


@pytest.mark.parametrize("labels", [np.array([0, 1, 2, 0, 1]), np.array([0, -1, 1, 0, 1])],
                         ids=["equal_to_C", "negative"])
def test_train_step_labels_out_of_range_raise_and_keep_weights(labels):
    model, opt, x, _ = _trained_one_step()
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         ValueError, r"^(labels|target) must be in \[0, 2\)")


def test_train_step_empty_batch_raises_and_keeps_weights():
    model, opt, _, _ = _trained_one_step()
    x = np.zeros((0, 3), np.float32)
    labels = np.zeros(0, np.int64)
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         ValueError, r"^train_step needs a non-empty batch, got x of shape \(0, 3\)")


def test_train_step_wrong_feature_count_raises_and_keeps_weights():
    model, opt, _, labels = _trained_one_step()
    x = np.zeros((5, 4), np.float32)
    _assert_step_refused(model, opt, lambda: model.train_step(x, labels, losses.CrossEntropyLoss(), opt),
                         ValueError, r"^x must have 3 features")


def test_train_step_huge_lr_overflow_on_a_later_step_raises_and_keeps_weights_finite():
    # lr = 1e10: the first steps return, then the loss overflows; that step must change nothing.
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=1e10)
    r = np.random.default_rng(0)
    x, target = randn(r, 5, 3), randn(r, 5, 2)
    loss_fn = losses.MSELoss()
    losses_seen = []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(10):
            snap = params_snapshot(model)
            try:
                losses_seen.append(model.train_step(x, target, loss_fn, opt))
            except FloatingPointError as e:
                assert re.match(r"^the (loss is (inf|nan)|gradient of \S+ is not finite); the weights were not updated",
                                str(e))
                assert_params_unchanged(model, snap)
                break
        else:
            pytest.fail(f"no FloatingPointError after 10 steps at lr=1e10; losses {losses_seen}")
    assert len(losses_seen) >= 1 and all(math.isfinite(v) for v in losses_seen)
    assert all(np.isfinite(p.data).all() for p in model.parameters())


@pytest.mark.parametrize("lr, x_scale, seed", [(1e38, 50.0, 2), (1e20, 1.0, 0)],
                         ids=["lr=1e38-first-step", "lr=1e20-second-step"])
def test_train_step_reports_an_overflowing_update(lr, x_scale, seed):
    # The loss and gradients are finite, but lr * grad overflows float32. The update is written in
    # place (undoing it would need a copy of every weight per step), so train_step cannot leave the
    # weights as they were; it must stop at once and say so rather than return normally.
    model = small_mlp()
    opt = optim.SGD(model.parameters(), lr=lr)
    r = np.random.default_rng(seed)
    x, labels = x_scale * randn(r, 5, 3), np.array([0, 1, 1, 0, 1])
    loss_fn = losses.CrossEntropyLoss()
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(5):
            try:
                loss = model.train_step(x, labels, loss_fn, opt)
            except FloatingPointError as e:
                assert re.match(r"^(the optimizer update made \S+ non-finite .*the weights were overwritten"
                                r"|the (loss is (inf|nan)|gradient of \S+ is not finite); the weights were not updated)",
                                str(e)), str(e)
                break
            assert math.isfinite(loss)
            bad = [p.name for p in model.parameters() if not np.isfinite(p.data).all()]
            assert not bad, f"step {step} returned loss {loss} but left non-finite values in {bad}"
        else:
            pytest.fail("no FloatingPointError in 5 steps")
