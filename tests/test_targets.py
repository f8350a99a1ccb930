"""Targets and predictions as users pass them: (N,) targets for one output, labels stored as floats, the
accuracy of a binary classifier, an empty predict, and errors that name the user's arrays (and the loss
fit chose). Each case was refused, truncated or unnamed before."""
from __future__ import annotations

import numpy as np
import pytest

import fuseprop
from fuseprop import losses, nn, optim


def data(n=64, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    return x, (x @ rng.normal(size=features)).astype(np.float32)


def one_output(seed=0, dtype=np.float32):
    fuseprop.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8, dtype=dtype), nn.Tanh(), nn.Linear(8, 1, dtype=dtype))


def run_fit(y, loss, **kw):
    m = one_output()
    x, _ = data()
    h = m.fit(x, y, loss=loss, optimizer=optim.SGD(m.parameters(), lr=0.05), epochs=2, batch_size=16, verbose=0,
              seed=0, **kw)
    return m, h


@pytest.mark.parametrize("loss_fn", [losses.MSELoss, losses.BCEWithLogitsLoss])
@pytest.mark.parametrize("path", [{}, {"l2": 1e-3}], ids=["fused", "per-layer"])
def test_a_flat_target_for_one_output_trains_as_a_column(loss_fn, path):
    x, y = data()
    if loss_fn is losses.BCEWithLogitsLoss:
        y = (y > 0).astype(np.float32)
    flat, h_flat = run_fit(y, loss_fn(), **path)
    column, h_column = run_fit(y[:, None], loss_fn(), **path)
    assert h_flat.history == h_column.history
    for p, q in zip(flat.parameters(), column.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert flat.evaluate(x, y, loss=loss_fn()) == column.evaluate(x, y[:, None], loss=loss_fn())


def test_a_flat_target_in_train_step_and_the_loss():
    x, y = data()
    a, b = one_output(), one_output()
    la = a.train_step(x, y, losses.MSELoss(), optim.SGD(a.parameters(), lr=0.1))
    lb = b.train_step(x, y[:, None], losses.MSELoss(), optim.SGD(b.parameters(), lr=0.1))
    assert la == lb
    lf = losses.MSELoss()
    assert lf(a(x), y) == lf(a(x), y[:, None])


def test_a_flat_target_for_several_outputs_is_still_refused():
    fuseprop.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 3))
    x, y = data()
    with pytest.raises(ValueError, match=r"^target must have the same shape as pred \(16, 3\), got \(16,\)"):
        m.fit(x, y, loss=losses.MSELoss(), epochs=1, batch_size=16, verbose=0)


@pytest.mark.parametrize("path", [{}, {"l2": 1e-3}], ids=["fused", "per-layer"])
def test_binary_accuracy_is_reported(path):
    x, y = data()
    labels = (y > 0).astype(np.float32)
    m, h = run_fit(labels, losses.BCEWithLogitsLoss(), **path)
    assert "accuracy" in h.history
    expected = float(((m.predict(x)[:, 0] > 0) == (labels >= 0.5)).mean())
    assert m.evaluate(x, labels, loss=losses.BCEWithLogitsLoss())["accuracy"] == pytest.approx(expected)


def test_labels_stored_as_whole_floats_train_as_classes():
    fuseprop.manual_seed(0)
    x, y = data()
    classes = np.digitize(y, [-1.0, 1.0]).astype(np.int64)
    runs = []
    for labels in (classes, classes.astype(np.float64)):
        fuseprop.manual_seed(0)
        m = nn.Sequential(nn.Linear(5, 3))
        runs.append(m.fit(x, labels, loss=losses.CrossEntropyLoss(), epochs=2, batch_size=16, verbose=0, seed=1).history)
    assert runs[0] == runs[1]


def test_float_labels_with_a_fraction_are_refused_not_truncated():
    fuseprop.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 3))
    x, y = data()
    labels = np.abs(y) % 3  # 0.7, 1.7, ...
    with pytest.raises(ValueError, match=r"^y must be class indices \(whole numbers\), got y\[0\] = "):
        m.fit(x, labels, loss=losses.CrossEntropyLoss(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"^y must be class indices \(whole numbers\)"):
        m.evaluate(x, labels, loss=losses.CrossEntropyLoss())


def test_fit_says_which_loss_it_chose_from_the_labels_dtype():
    fuseprop.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 3))
    x, y = data()
    labels_as_floats = np.digitize(y, [-1.0, 1.0]).astype(np.float32)
    with pytest.raises(ValueError, match=r"the loss is MSELoss, which was chosen because y holds floats: pass loss= "
                                         r"to choose another, e\.g\. CrossEntropyLoss\(\) for class labels stored as"):
        m.fit(x, labels_as_floats, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"the loss is MSELoss, which was chosen because y holds floats"):
        m.evaluate(x, labels_as_floats)


def test_predict_of_an_empty_batch_is_empty():
    m = one_output()
    out = m.predict(np.zeros((0, 5), np.float32))
    assert out.shape == (0, 1) and out.dtype == np.float32


def test_errors_name_the_users_arrays():
    m = one_output()
    x = np.zeros((1000, 4), np.float32)
    with pytest.raises(ValueError, match=r"\[predict: x has shape \(1000, 4\), taken 256 rows at a time\]$"):
        m.predict(x)
    with pytest.raises(ValueError, match=r"\[evaluate: x has shape \(1000, 4\), y \(1000,\), taken 256 rows at a time\]"):
        m.evaluate(x, np.zeros(1000, np.float32), loss=losses.MSELoss())
    with pytest.raises(ValueError, match=r"^x and y must have the same number of samples, got x of shape \(1000, 4\) "
                                         r"and y of shape \(999,\)$"):
        m.fit(x, np.zeros(999, np.float32), verbose=0)
    with pytest.raises(ValueError, match=r"^evaluate needs at least one sample, got x of shape \(0, 5\)$"):
        m.evaluate(np.zeros((0, 5), np.float32), np.zeros(0, np.float32))


def test_predict_evaluate_and_fit_leave_each_modules_mode_as_it_was():
    fuseprop.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    m[1].eval()  # the user's choice for this one module; before, predict set it back to training
    x, y = data()
    m.predict(x)
    m.evaluate(x, y, loss=losses.MSELoss())
    m.fit(x, y, loss=losses.MSELoss(), epochs=1, verbose=0)
    assert [mod.training for mod in (m, m[0], m[1], m[2])] == [True, True, False, True]
