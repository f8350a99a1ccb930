"""TrainPlan.run_batches: many fused steps in one native call, each batch gathered from the whole
training set by an order. It takes exactly the steps TrainPlan.step takes on the same batches, stops at a
refused step and says how far it got, and refuses every bad argument before its first step, changing nothing.
"""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop


def plan_and_data(dtype=np.float32, loss="cross_entropy", n=10):
    rng = np.random.default_rng(28)
    shapes = {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (2, 4), "1.bias": (2,)}
    params = [(name, rng.normal(size=s).astype(dtype), np.zeros(s, dtype), np.zeros(s, dtype), np.zeros(s, dtype), 0)
              for name, s in shapes.items()]
    plan = fuseprop._C.TrainPlan([("tanh", 0.01, True), ("identity", 0.01, True)], params, loss=loss, optimizer="adam")
    x = rng.normal(size=(n, 3)).astype(dtype)
    y = rng.integers(0, 2, n) if loss == "cross_entropy" else rng.normal(size=(n, 2)).astype(dtype)
    return plan, params, x, y


HYPER = [(0.01, 0.9, 0.999, 1e-8, 0.0)]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("shuffled", [True, False])
def test_run_batches_takes_the_steps_step_takes(loss, shuffled):
    a, params_a, x, y = plan_and_data(np.float64, loss)
    b, params_b, _, _ = plan_and_data(np.float64, loss)
    order = np.random.default_rng(1).permutation(len(x)) if shuffled else None
    lrs = np.array([[0.01], [0.02], [0.005]])
    losses_a, correct_a = a.run_batches(x, y, order, 4, 0, 3, HYPER, [1] * 4, 0.0, lrs)
    for j in range(3):
        rows = (order if shuffled else np.arange(len(x)))[j * 4:(j + 1) * 4]
        value = b.step(x[rows], y[rows], [(lrs[j, 0], *HYPER[0][1:])], [j + 1] * 4)
        assert value.hex() == losses_a[j].hex() and b.correct == correct_a[j]
    for pa, pb in zip(params_a, params_b):
        for u, v in zip(pa[1:5], pb[1:5]):
            assert u.tobytes() == v.tobytes()
    assert a.steps == b.steps == 3 and a.batches_done == 3


def test_run_batches_stops_at_a_refused_step_and_reports_how_far_it_got():
    plan, params, x, y = plan_and_data()
    x[6] = np.nan
    before = [p[1].copy() for p in params]
    with pytest.raises(FloatingPointError, match=r"^the loss is nan; the weights were not updated"):
        plan.run_batches(x, y, None, 2, 1, 4, HYPER, [1] * 4)
    assert plan.batches_done == 2 and plan.steps == 3 and not plan.updated
    assert all((p[1] != b).any() for p, b in zip(params, before))


BAD_RUNS = {
    "x-float64": (dict(x=lambda x: x.astype(np.float64)), TypeError, r"^x must have the same dtype as the parameters"),
    "x-list": (dict(x=lambda x: x.tolist()), TypeError, r"^x must be a numpy\.ndarray, got list"),
    "x-strided": (dict(x=lambda x: np.repeat(x, 2, axis=1)[:, ::2]), ValueError, r"^x must be C-contiguous"),
    "x-3d": (dict(x=lambda x: x[None]), ValueError, r"^x must be 2-D"),
    "x-features": (dict(x=lambda x: x[:, :2].copy()), ValueError, r"^x must have 3 features"),
    "labels-int32": (dict(y=lambda y: y.astype(np.int32)), TypeError, r"^labels must be class indices with dtype int64"),
    "labels-rows": (dict(y=lambda y: y[:-1].copy()), ValueError, r"^labels must have shape \(10,\), got \(9,\)"),
    "labels-range": (dict(y=lambda y: np.where(np.arange(10) == 7, 2, y)), ValueError,
                     r"^labels must be in \[0, 2\) for logits with 2 classes; labels\[7\] is 2"),
    "labels-negative": (dict(y=lambda y: np.where(np.arange(10) == 0, -1, y)), ValueError, r"labels\[0\] is -1"),
    "order-int32": (dict(order=lambda o: o.astype(np.int32)), TypeError, r"^order must hold row indices with dtype int64"),
    "order-2d": (dict(order=lambda o: o.reshape(2, 5)), ValueError, r"^order must be 1-D"),
    "order-strided": (dict(order=lambda o: np.repeat(o, 2)[::2]), ValueError, r"^order must be C-contiguous"),
    "order-range": (dict(order=lambda o: np.where(o == 3, 10, o)), ValueError,
                    r"^order\[\d\] is 10: row indices must be in \[0, 10\)"),
    "order-negative": (dict(order=lambda o: np.where(o == 3, -1, o)), ValueError, r"^order\[\d\] is -1"),
    "batch-size": (dict(batch_size=0), ValueError, r"^batch_size must be >= 1, got 0"),
    "too-many-batches": (dict(n_batches=4), ValueError, r"^batches 0 \.\. 0 \+ 4 do not exist: 10 rows make 3 batches of 4"),
    "first-batch": (dict(first_batch=-1), ValueError, r"^batches -1 \.\. -1 \+ 3 do not exist"),
    "lrs-shape": (dict(lrs=np.full((2, 1), 0.1)), ValueError, r"^lrs must have shape \(3, 1\), got \(2, 1\)"),
    "lrs-float32": (dict(lrs=np.full((3, 1), 0.1, np.float32)), TypeError, r"^lrs must have dtype float64"),
    "lrs-negative": (dict(lrs=np.array([[0.1], [-0.1], [0.1]])), ValueError,
                     r"^lrs\[1, 0\] \(the lr of param group 0 in batch 1\) must be finite and >= 0, got -0\.1"),
    "lrs-nan": (dict(lrs=np.array([[0.1], [0.1], [np.nan]])), ValueError, r"^lrs\[2, 0\] .* got nan"),
    "hyper": (dict(hyper=[(0.01, 1.5, 0.999, 1e-8, 0.0)]), ValueError, r"^param group 0: beta1 must be in \[0, 1\)"),
    "steps": (dict(steps=[1, 1, 0, 1]), ValueError, r"^steps\[2\] \(1\.weight\) must be >= 1"),
    "max-grad-norm": (dict(max_grad_norm=-1.0), ValueError, r"^max_grad_norm must be >= 0"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_run_batches_refuses_bad_arguments_before_any_step(case):
    plan, params, x, y = plan_and_data()
    # a first run, so that a refused one must also leave batches_done, updated and correct as they were
    plan.run_batches(x, y, None, 5, 0, 1, HYPER, [1] * 4)
    args = dict(x=x, target=y, order=np.random.default_rng(2).permutation(10), batch_size=4, first_batch=0,
                n_batches=3, hyper=HYPER, steps=[2] * 4, max_grad_norm=0.0, lrs=None)
    change, exc, message = BAD_RUNS[case]
    for key, value in change.items():
        key = "target" if key == "y" else key
        args[key] = value(args[key]) if callable(value) else value
    before = [a.copy() for p in params for a in p[1:5]]
    counters = (plan.steps, plan.allocations, plan.updated, plan.correct)
    with pytest.raises(exc, match=message):
        plan.run_batches(**args)
    for a, b in zip([a for p in params for a in p[1:5]], before):
        assert a.tobytes() == b.tobytes()
    assert (plan.steps, plan.allocations, plan.updated, plan.correct) == counters and plan.batches_done == 0


def test_run_batches_refuses_bad_targets_for_mse():
    plan, params, x, y = plan_and_data(loss="mse")
    with pytest.raises(ValueError, match=r"^target must have shape \(10, 2\), got \(10, 3\)"):
        plan.run_batches(x, np.zeros((10, 3), np.float32), None, 4, 0, 3, HYPER, [1] * 4)
    with pytest.raises(TypeError, match=r"^target must have the same dtype as x"):
        plan.run_batches(x, y.astype(np.float64), None, 4, 0, 3, HYPER, [1] * 4)
    assert plan.steps == 0


def test_run_batches_of_nothing_and_one_short_batch():
    plan, params, x, y = plan_and_data()
    losses_, correct = plan.run_batches(x, y, None, 4, 3, 0, HYPER, [1] * 4)
    assert losses_.shape == correct.shape == (0,) and plan.steps == 0
    losses_, correct = plan.run_batches(x, y, np.arange(10)[::-1].copy(), 4, 2, 1, HYPER, [1] * 4)
    assert plan.steps == 1 and plan.capacity == 2 and 0 <= correct[0] <= 2
