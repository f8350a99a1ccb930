"""fit's epochs as native runs of many fused steps (training.native_epochs.NativeEpochs, _C.TrainPlan.run_batches).

Every case fits the same model twice from the same start: once with native runs, once stepping batch by
batch from Python (native_epochs._NATIVE_EPOCHS = False, today's loop, which the other test files check against
the per-layer path and the reference). Both must agree to the last bit: the history, every weight and
gradient, the optimizer's state and param groups, the schedules, the plan's counters, the loss's gradient,
and, when a batch is refused, the exception and everything it leaves behind. The cases that need Python
per batch really take the per-batch loop. (TrainPlan.run_batches on its own: tests/test_run_batches.py.)
"""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim, training
from fuseprop.engine import FusedStep
from fuseprop.training import native_epochs

from helpers import relu_mlp

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
N, FEATURES, CLASSES = 60, 12, 4


# ---------------------------------------------------------------------------------------------
# models, data, and the two runs compared


def relu(dtype):
    return relu_mlp(FEATURES, 16, 16, CLASSES, dtype=dtype)


def every_activation(dtype):
    d = dict(dtype=dtype)
    return nn.Sequential(nn.Linear(FEATURES, 10, **d), nn.LeakyReLU(0.2), nn.Linear(10, 10, **d), nn.Sigmoid(),
                         nn.Linear(10, 10, **d), nn.Tanh(), nn.Linear(10, 10, **d), nn.GELU(),
                         nn.Linear(10, 10, bias=False, **d), nn.GELU(approximate="tanh"), nn.Linear(10, CLASSES, **d))


def no_bias(dtype):
    d = dict(dtype=dtype, bias=False)
    return nn.Sequential(nn.Linear(FEATURES, 10, **d), nn.Tanh(), nn.Linear(10, 8, **d), nn.Identity(),
                         nn.Linear(8, CLASSES, **d))


NETWORKS = {"relu": relu, "every-activation": every_activation, "no-bias": no_bias}

LOSSES = {
    "ce": lambda: losses.CrossEntropyLoss(),
    "ce-smoothing": lambda: losses.CrossEntropyLoss(label_smoothing=0.1),
    "ce-sum": lambda: losses.CrossEntropyLoss(reduction="sum"),
    "mse": lambda: losses.MSELoss(),
    "mse-sum": lambda: losses.MSELoss(reduction="sum"),
    "bce": lambda: losses.BCEWithLogitsLoss(),
}


def two_groups(model, cls, first, second):
    params = model.parameters()
    return cls([{"params": params[:2], **first}, {"params": params[2:], **second}])


OPTIMIZERS = {
    "sgd": lambda m: optim.SGD(m.parameters(), lr=0.05),
    "sgd-nesterov-wd": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd-dampening": lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.5, dampening=0.3),
    "sgd-groups": lambda m: two_groups(m, optim.SGD, dict(lr=0.1, momentum=0.9), dict(lr=0.02, momentum=0.0)),
    "adam": lambda m: optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3),
    "adamw": lambda m: optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.05),
    "adam-groups": lambda m: two_groups(m, optim.Adam, dict(lr=1e-2), dict(lr=3e-3, betas=(0.8, 0.99))),
}


def data(loss_name, dtype=np.float32, n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(dtype)
    if loss_name.startswith("ce"):
        return x, rng.integers(0, CLASSES, n)
    if loss_name.startswith("bce"):
        return x, (rng.random((n, CLASSES)) < 0.5).astype(dtype)
    return x, rng.normal(size=(n, CLASSES)).astype(dtype)


def setup(net="relu", loss="ce", opt="adam", dtype=np.float32, n=N, schedules=(), extra_callbacks=()):
    """A fresh, identical start: (model, optimizer, loss, callbacks, x, y)."""
    fuseprop.manual_seed(7)
    model = NETWORKS[net](dtype)
    optimizer = OPTIMIZERS[opt](model)
    callbacks = [make(optimizer) for make in schedules] + [make() for make in extra_callbacks]
    return (model, optimizer, LOSSES[loss](), callbacks, *data(loss, dtype, n))


@pytest.fixture
def native_runs(monkeypatch):
    """The batch counts of every FusedStep.run_batches call."""
    runs = []
    original = FusedStep.run_batches

    def spy(self, model, x, y, order, batch_size, first, count, *args, **kw):
        runs.append(count)
        return original(self, model, x, y, order, batch_size, first, count, *args, **kw)

    monkeypatch.setattr(FusedStep, "run_batches", spy)
    return runs


def outcome(native, monkeypatch, make, epochs=3, **fit_kw):
    """Everything a fit leaves behind, with native runs on or off."""
    monkeypatch.setattr(native_epochs, "_NATIVE_EPOCHS", native)
    model, opt, loss_fn, callbacks, x, y = make()
    error = history = None
    try:
        history = model.fit(x, y, loss=loss_fn, optimizer=opt, epochs=epochs, verbose=0, seed=3, callbacks=callbacks,
                            **{"batch_size": 8, **fit_kw})
    except Exception as e:  # noqa: BLE001  (compared below)
        error = (type(e), str(e))
    plan = model.train_plan
    try:
        loss_grad = loss_fn.backward()
    except Exception as e:  # noqa: BLE001
        loss_grad = (type(e), str(e))
    return dict(
        error=error,
        history=None if history is None else (history.history, history.epoch, history.params),
        params=[(name, p.data.copy(), p.grad.copy()) for name, p in model.named_parameters()],
        state=opt.state_dict(),
        raw_state=[sorted(opt.state.get(p, {"missing": None})) for p in model.parameters()],
        groups=[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        schedules=[(cb.last_epoch, cb.get_last_lr()) for cb in callbacks if isinstance(cb, training.LRScheduler)],
        plan=None if plan is None else (plan.steps, plan.allocations, plan.capacity, plan.updated, plan.correct,
                                        plan.grad_norm),
        loss_grad=loss_grad,
        tape=model._tape is None,
        training=model.training,
    )


def assert_same(a, b, where="outcome"):
    """Equal to the last bit: arrays by dtype, shape and bytes; floats by their bits (NaN equals NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, float) and isinstance(b, float):
        assert a.hex() == b.hex(), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def compare(monkeypatch, runs, make, expect_native=True, **kw):
    """The per-batch loop's outcome and the native one's; they must be the same."""
    runs.clear()
    per_batch = outcome(False, monkeypatch, make, **kw)
    assert not runs
    native = outcome(True, monkeypatch, make, **kw)
    assert bool(runs) == expect_native, runs
    assert_same(native, per_batch)
    return native


# ---------------------------------------------------------------------------------------------
# the same numbers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("net", list(NETWORKS))
def test_networks_and_losses(net, loss, dtype, monkeypatch, native_runs):
    out = compare(monkeypatch, native_runs, lambda: setup(net, loss, "adam", dtype))
    assert out["error"] is None and out["history"][2]["fused"] is True


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizers(opt, dtype, monkeypatch, native_runs):
    compare(monkeypatch, native_runs, lambda: setup("relu", "ce", opt, dtype), epochs=4)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 12, 60, 64])
def test_batch_sizes_drop_last_and_shuffle(batch_size, drop_last, shuffle, monkeypatch, native_runs):
    make = lambda: setup("relu", "ce", "sgd-nesterov-wd", np.float32)  # noqa: E731
    out = compare(monkeypatch, native_runs, make, expect_native=not (drop_last and batch_size > N),
                  batch_size=batch_size, drop_last=drop_last, shuffle=shuffle)
    assert out["error"] is None if not (drop_last and batch_size > N) else out["error"][0] is ZeroDivisionError


@pytest.mark.parametrize("opt", ["sgd-nesterov-wd", "adam", "adamw"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_stays_native(opt, dtype, monkeypatch, native_runs):
    out = compare(monkeypatch, native_runs, lambda: setup("relu", "ce", opt, dtype), clip_grad_norm=0.05)
    assert out["plan"][5] > 0.05  # the last step did clip


def test_validation_data_and_split(monkeypatch, native_runs):
    x_val, y_val = data("ce", seed=9)
    out = compare(monkeypatch, native_runs, lambda: setup("relu", "ce", "adam"), validation_data=(x_val, y_val))
    assert set(out["history"][0]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    compare(monkeypatch, native_runs, lambda: setup("relu", "mse", "sgd"), validation_split=0.25)


def test_a_strided_x_and_other_integer_labels(monkeypatch, native_runs):
    def make():
        model, opt, loss_fn, callbacks, x, y = setup("relu", "ce", "adam", np.float64)
        return model, opt, loss_fn, callbacks, np.asfortranarray(x), y.astype(np.uint8)
    compare(monkeypatch, native_runs, make)


def test_many_epochs_in_runs_of_any_length(monkeypatch, native_runs):
    # Runs of 1, 2, 3 batches and the adaptive ones all give the one result.
    make = lambda: setup("relu", "ce", "adam", np.float32, n=200)  # noqa: E731
    reference = outcome(False, monkeypatch, make, epochs=6, batch_size=7)
    for longest in (1, 2, 3, native_epochs._MAX_RUN):
        monkeypatch.setattr(native_epochs, "_MAX_RUN", longest)
        native_runs.clear()
        assert_same(outcome(True, monkeypatch, make, epochs=6, batch_size=7), reference)
        assert max(native_runs) <= longest


def test_native_runs_give_the_same_bits_whatever_the_thread_count(monkeypatch, native_runs):
    # 784-64-10 at batch 64: GEMMs large enough to be split over threads.
    def make():
        fuseprop.manual_seed(5)
        model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        rng = np.random.default_rng(6)
        return (model, optim.Adam(model.parameters(), lr=1e-3), losses.CrossEntropyLoss(), [],
                rng.random((320, 784), dtype=np.float32), rng.integers(0, 10, 320))

    threads = fuseprop.get_num_threads()
    try:
        fuseprop.set_num_threads(1)
        per_batch = outcome(False, monkeypatch, make, epochs=1, batch_size=64)
        fuseprop.set_num_threads(3)
        native = outcome(True, monkeypatch, make, epochs=1, batch_size=64)
    finally:
        fuseprop.set_num_threads(threads)
    assert native_runs
    assert_same(native, per_batch)


def test_the_progress_bar_moves_between_runs(monkeypatch, native_runs):
    moved = []

    class Bar:
        def update(self, k):
            moved.append(k)

        def set_postfix_str(self, s):
            pass

        def close(self):
            moved.append("close")

    monkeypatch.setattr(training.loop, "_progress_bar", lambda verbose, total, desc: Bar())
    monkeypatch.setattr(native_epochs, "_MAX_RUN", 3)
    model, opt, loss_fn, _, x, y = setup()
    model.fit(x, y, loss=loss_fn, optimizer=opt, epochs=2, batch_size=7, verbose=1)
    steps = -(-N // 7)
    assert moved == ([3, 3, 3] + ["close"]) * 2 and sum(native_runs) == 2 * steps


# ---------------------------------------------------------------------------------------------
# schedules and callbacks


def step_lr(o):
    return training.StepLR(o, step_size=4, gamma=0.5, interval="step")


def cosine(o):
    return training.CosineAnnealingLR(o, T_max=17, eta_min=1e-4, interval="step")


def warmup(o):
    return training.LinearWarmup(o, warmup=10, start_factor=0.2, interval="step")


def warmup_epochs(o):
    return training.LinearWarmup(o, warmup=2, interval="epoch")


def other_optimizer_schedule(o):
    other = optim.SGD([nn.Parameter(np.zeros(3))], lr=1.0)
    return training.StepLR(other, step_size=1, gamma=0.9, interval="step")


SCHEDULES = {
    "step": [step_lr], "cosine": [cosine], "warmup": [warmup], "warmup-then-cosine": [warmup, cosine],
    "cosine-then-warmup": [cosine, warmup], "per-epoch-and-per-step": [warmup_epochs, step_lr],
    "another-optimizer": [other_optimizer_schedule, cosine],
}


@pytest.mark.parametrize("longest", [2, 1 << 14])
@pytest.mark.parametrize("opt", ["sgd-groups", "adam-groups"])
@pytest.mark.parametrize("case", list(SCHEDULES))
def test_schedules_give_every_step_its_lr(case, opt, longest, monkeypatch, native_runs):
    monkeypatch.setattr(native_epochs, "_MAX_RUN", longest)
    out = compare(monkeypatch, native_runs, lambda: setup("relu", "ce", opt, schedules=SCHEDULES[case]), epochs=3)
    assert out["schedules"]


def test_early_stopping_stays_native(monkeypatch, native_runs):
    stop = lambda: training.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)  # noqa: E731
    out = compare(monkeypatch, native_runs, lambda: setup(extra_callbacks=[stop]), epochs=5)
    assert len(out["history"][1]) == 2


class CountBatches(training.Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, batch, logs=None):
        self.seen.append(batch)


class ChangeLr(training.Callback):
    """A user callback that changes the lr after every batch: only the per-batch loop can run it."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def on_batch_end(self, batch, logs=None):
        for g in self.optimizer.param_groups:
            g["lr"] *= 0.97


class CustomSchedule(training.StepLR):
    def _lr(self, base_lr, t):
        return base_lr / (1 + t)


def instance_hook():
    cb = training.Callback()
    cb.on_batch_end = lambda batch, logs=None: None
    return cb


FALLBACKS = {
    "on-batch-end": dict(extra_callbacks=[CountBatches]),
    "user-lr-callback": dict(schedules=[ChangeLr]),
    "instance-hook": dict(extra_callbacks=[instance_hook]),
    "own-schedule-formula": dict(schedules=[lambda o: CustomSchedule(o, step_size=1, interval="step")]),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_callbacks_with_their_own_batch_hook_run_per_batch(case, monkeypatch, native_runs):
    compare(monkeypatch, native_runs, lambda: setup("relu", "ce", "sgd-groups", **FALLBACKS[case]), expect_native=False)


def test_an_own_formula_stepping_per_epoch_stays_native(monkeypatch, native_runs):
    compare(monkeypatch, native_runs, lambda: setup(schedules=[lambda o: CustomSchedule(o, step_size=1)]))


# ---------------------------------------------------------------------------------------------
# what keeps the per-batch loop


def test_augment_grad_norms_penalties_and_the_per_layer_path_run_per_batch(monkeypatch, native_runs):
    def shift(x):
        return np.roll(x, 1, axis=1)

    compare(monkeypatch, native_runs, setup, expect_native=False, augment=shift)
    compare(monkeypatch, native_runs, setup, expect_native=False, grad_norm_history=True)
    compare(monkeypatch, native_runs, setup, expect_native=False, l2=1e-3)
    compare(monkeypatch, native_runs, setup, expect_native=False, clip_grad_value=0.1)

    def per_layer():
        made = setup()
        made[0].fused_train_step = False
        return made

    compare(monkeypatch, native_runs, per_layer, expect_native=False)


def test_a_model_without_a_fused_form_runs_per_batch(monkeypatch, native_runs):
    def dropout():
        made = list(setup())
        made[0] = nn.Sequential(nn.Linear(FEATURES, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, CLASSES))
        made[1] = optim.Adam(made[0].parameters())
        return made

    compare(monkeypatch, native_runs, dropout, expect_native=False)


def test_switching_the_fused_step_off_between_epochs(monkeypatch, native_runs):
    class Switch(training.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.fused_train_step = epoch != 1

    compare(monkeypatch, native_runs, lambda: setup(extra_callbacks=[Switch]), epochs=3)


# ---------------------------------------------------------------------------------------------
# refused steps: the same exception, and the same state after it


def test_a_non_finite_loss_stops_at_the_same_batch(monkeypatch, native_runs):
    def make():
        made = list(setup("relu", "ce", "adam", schedules=[cosine]))
        made[4][37] = np.nan
        return made

    out = compare(monkeypatch, native_runs, make, epochs=2, batch_size=5)
    assert out["error"] == (FloatingPointError, "the loss is nan; the weights were not updated")


@pytest.mark.parametrize("reduction", ["mse", "mse-sum"])
def test_a_non_finite_gradient_stops_at_the_same_batch(reduction, monkeypatch, native_runs):
    # The loss (summed in double) is finite; its float32 gradient 2 (pred - target) is not.
    def make():
        made = list(setup("relu", reduction, "sgd-nesterov-wd", schedules=[step_lr]))
        made[5][23] = 3e38
        return made

    out = compare(monkeypatch, native_runs, make, batch_size=4, shuffle=False)
    assert out["error"] == (FloatingPointError, "the gradient of 0.weight is not finite; the weights were not updated")
    assert out["plan"][0] == 6  # five steps and the refused one


@pytest.mark.parametrize("first_ok", [True, False], ids=["second-step", "first-step"])
@pytest.mark.parametrize("opt", ["sgd", "sgd-nesterov-wd"])
def test_an_overflowing_update_stops_after_it(opt, first_ok, monkeypatch, native_runs):
    # lr 1e38 (after a first step at 1e-2, or from the start): lr times the gradient overflows float32. The
    # update is written, so the optimizer's state counts it (a first update publishes SGD's momentum buffer).
    def make():
        made = list(setup("relu", "mse-sum", opt))
        made[1].param_groups[0]["lr"] = 1e38
        if first_ok:
            made[3] = [training.LinearWarmup(made[1], warmup=1, start_factor=1e-40, interval="step")]
        made[5] = np.full_like(made[5], 1000)
        return made

    monkeypatch.setattr(native_epochs, "_MAX_RUN", 4)
    with np.errstate(over="ignore", invalid="ignore"):
        out = compare(monkeypatch, native_runs, make, batch_size=5)
    assert out["error"][0] is FloatingPointError and "the weights were overwritten" in out["error"][1]
    assert out["plan"][:2] == (1 + first_ok, 1) and out["plan"][3] is True
    assert bool(out["state"]["state"]) == (opt != "sgd")


def test_a_label_out_of_range_raises_at_the_same_batch(monkeypatch, native_runs):
    def make():
        made = list(setup())
        made[5] = made[5].copy()
        made[5][50] = CLASSES
        return made

    out = compare(monkeypatch, native_runs, make, expect_native=False, shuffle=False)
    assert out["error"] == (ValueError, f"labels must be in [0, {CLASSES}) for logits with {CLASSES} classes; "
                                        "labels[2] is 4 [fit: x has shape (60, 12), y (60,), batch_size 8]")


def test_inputs_the_step_refuses_raise_as_before(monkeypatch, native_runs):
    def wide():
        made = list(setup())
        made[4] = np.hstack([made[4], made[4]])
        return made

    out = compare(monkeypatch, native_runs, wide, expect_native=False)
    assert out["error"][0] is ValueError and "features" in out["error"][1]

    def flat_targets():
        made = list(setup(loss="mse"))
        made[5] = made[5][:, 0].copy()
        return made

    out = compare(monkeypatch, native_runs, flat_targets, expect_native=False)
    assert out["error"][0] is ValueError


def test_a_schedule_that_gives_a_negative_lr_raises_at_the_same_batch(monkeypatch, native_runs):
    below_zero = lambda o: training.CosineAnnealingLR(o, T_max=20, eta_min=-0.05, interval="step")  # noqa: E731
    for longest in (3, 1 << 14):
        monkeypatch.setattr(native_epochs, "_MAX_RUN", longest)
        native_runs.clear()
        out = compare(monkeypatch, native_runs, lambda: setup("relu", "ce", "sgd", schedules=[below_zero]))
        assert out["error"][0] is ValueError and out["error"][1].startswith("Invalid learning rate")


@pytest.mark.parametrize("longest", [3, 1 << 14])
def test_a_schedule_whose_formula_raises_raises_at_the_same_batch(longest, monkeypatch, native_runs):
    # lr 1e-300 * (1e100 ** t): gamma ** 4 overflows in StepLR's formula, in the on_batch_end after the 4th step;
    # the cosine after it sets the lr the steps use, and the round before has set it.
    def make():
        made = list(setup("relu", "ce", "sgd-nesterov-wd", np.float64))
        for g in made[1].param_groups:
            g["lr"] = 1e-300
        made[3] = [training.StepLR(made[1], step_size=1, gamma=1e100, interval="step"), cosine(made[1])]
        return made

    monkeypatch.setattr(native_epochs, "_MAX_RUN", longest)
    out = compare(monkeypatch, native_runs, make)
    assert out["error"][0] is OverflowError and out["schedules"][0][0] == 4 and out["schedules"][1][0] == 3


def test_an_interrupt_as_a_run_returns_leaves_the_state_of_the_batches_it_ran():
    # Ctrl-C during a native run raises KeyboardInterrupt as the call returns: the optimizer's state must
    # still count the updates the run made.
    model, opt, loss_fn, _, x, y = setup(opt="adam")
    reference, ref_opt, ref_loss, _, _, _ = setup(opt="adam")
    fused = model._fused_for(loss_fn, opt)
    plan = fused.ready(model)

    class Interrupted:
        def __getattr__(self, name):
            return getattr(plan, name)

        def run_batches(self, *args):
            plan.run_batches(*args)
            raise KeyboardInterrupt

    fused.plan = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        fused.run_batches(model, x, y, None, 8, 0, 3)
    for j in range(3):
        reference.train_step(x[j * 8:(j + 1) * 8], y[j * 8:(j + 1) * 8], ref_loss, ref_opt)
    assert_same(opt.state_dict(), ref_opt.state_dict())
    assert_same([p.data for p in model.parameters()], [p.data for p in reference.parameters()])
    assert loss_fn._grad_from is fused.plan
