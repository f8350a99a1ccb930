"""fuseprop.sklearn: scikit-learn's own estimator checks, the same numbers as sklearn's MLP in float64, the
same accuracy in float32, and the integrations (Pipeline, GridSearchCV, cross_val_score, clone, pickle)."""
from __future__ import annotations

import io
import pathlib
import pickle
import re
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fuseprop  # noqa: E402
from fuseprop.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# -- scikit-learn's estimator checks

_FLOAT32_SW = ("float32 compute: fitting with integer sample weights and with the rows repeated is the same "
               "computation in exact arithmetic, and agrees to ~3e-7 relative (float32 rounding of sums taken in "
               "another order); the check asks for rtol=1e-7, so whether it passes is rounding luck, and it is not "
               "run. The same estimators with dtype='float64' run it and pass")
_ROUNDING_LUCK = {"check_sample_weight_equivalence_on_dense_data", "check_sample_weight_equivalence_on_sparse_data"}
_DROPOUT_SW = ("dropout draws a random mask per row: the repeated rows get masks of their own, so the weighted "
               "and the repeated fits see different noise (without dropout the check passes)")

_CHECKED = [
    MLPClassifier(max_iter=100, random_state=0),
    MLPRegressor(max_iter=100, random_state=0),
    MLPClassifier(max_iter=100, random_state=0, dtype="float64"),
    MLPRegressor(max_iter=100, random_state=0, dtype="float64", solver="sgd"),
    MLPClassifier(hidden_layer_sizes=(32,), activation="tanh", solver="sgd", dropout=0.1, max_iter=100, random_state=0),
]


def _expected_failed_checks(estimator):
    if estimator.dropout:
        return {name: _DROPOUT_SW for name in _ROUNDING_LUCK}
    return {}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter is kept small on purpose
@parametrize_with_checks(_CHECKED, expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    name = getattr(check, "func", check).__name__
    if name in _ROUNDING_LUCK and not estimator.dropout and np.dtype(estimator.dtype) == np.float32:
        pytest.skip(_FLOAT32_SW)
    check(estimator)


# -- data


def _digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _diabetes():
    X, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(X), y / 100.0


def _fit(est, X, y, **kw):
    """est.fit for the short runs here: max_iter <= n_iter_no_change cannot stop before max_iter, so the fit
    ends with a ConvergenceWarning, asserted (other warnings stay errors)."""
    assert est.max_iter <= est.n_iter_no_change
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        return est.fit(X, y, **kw)


def _assert_same_fit(ours, theirs, atol=1e-10):
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10, atol=atol)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


# -- the same numbers as scikit-learn, in float64


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("target", ["multiclass", "binary", "multilabel", "strings"])
def test_float64_classifier_follows_sklearn(solver, target):
    X, y = _digits()
    y = {"multiclass": y, "binary": y > 4, "multilabel": np.c_[y % 2, y > 4, y == 3].astype(int),
         "strings": np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]}[target]
    kw = dict(hidden_layer_sizes=(24, 12), max_iter=4, random_state=1, solver=solver, alpha=1e-3, batch_size=130)
    _assert_same_fit(_fit(MLPClassifier(dtype="float64", **kw), X, y), _fit(SkMLPClassifier(**kw), X, y))


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_float64_multi_output_regressor_follows_sklearn(solver):
    X, y = _diabetes()
    Y = np.c_[y, -0.5 * y, y ** 2]
    kw = dict(hidden_layer_sizes=(16,), max_iter=4, random_state=0, solver=solver, learning_rate_init=1e-3)
    _assert_same_fit(_fit(MLPRegressor(dtype="float64", **kw), X, Y), _fit(SkMLPRegressor(**kw), X, Y))


def test_float64_sample_weight_follows_sklearn():
    X, y = _digits()
    sw = np.random.default_rng(0).integers(0, 4, len(y)).astype(float)
    kw = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0)
    ours = _fit(MLPClassifier(dtype="float64", **kw), X, y, sample_weight=sw)
    _assert_same_fit(ours, _fit(SkMLPClassifier(**kw), X, y, sample_weight=sw))
    Xr, yr = _diabetes()
    ours = _fit(MLPRegressor(dtype="float64", **kw), Xr, yr, sample_weight=sw[:len(yr)])
    _assert_same_fit(ours, _fit(SkMLPRegressor(**kw), Xr, yr, sample_weight=sw[:len(yr)]))


@pytest.mark.parametrize("learning_rate", ["invscaling", "adaptive"])
def test_float64_early_stopping_and_sgd_schedules_follow_sklearn(learning_rate):
    """Stopping on the validation score with the best weights restored (binary: the split is stratified), and
    SGD's learning-rate schedules (no momentum: PyTorch's momentum differs from sklearn's once lr changes)."""
    X, y = _cancer()
    kw = dict(hidden_layer_sizes=(8,), max_iter=60, random_state=0, solver="sgd", momentum=0.0, early_stopping=True,
              n_iter_no_change=2, tol=0.05, learning_rate=learning_rate, learning_rate_init=0.05)
    ours, theirs = MLPClassifier(dtype="float64", **kw).fit(X, y), SkMLPClassifier(**kw).fit(X, y)
    assert ours.n_iter_ < 60 and ours.best_loss_ is None
    assert ours.validation_scores_ == theirs.validation_scores_
    assert ours.best_validation_score_ == max(ours.validation_scores_)
    _assert_same_fit(ours, theirs)


# -- the same accuracy as scikit-learn, in float32 (fast settings; benchmarks/sklearn_compare.py has the full table)


@pytest.mark.parametrize("data, make, theirs", [
    (_digits, MLPClassifier, SkMLPClassifier),
    (_cancer, MLPClassifier, SkMLPClassifier),
    (_diabetes, MLPRegressor, SkMLPRegressor),
])
def test_float32_scores_within_one_std_of_sklearn(data, make, theirs):
    X, y = data()
    kw = dict(hidden_layer_sizes=(64,), max_iter=40, learning_rate_init=0.01 if make is MLPRegressor else 0.001)
    scores = {}
    for cls in (make, theirs):
        runs = []
        for seed in range(3):
            X_tr, X_te, y_tr, y_te = train_test_split(X, y, random_state=seed)
            with warnings.catch_warnings():  # both may stop at max_iter: a short run on purpose
                warnings.simplefilter("ignore", ConvergenceWarning)
                est = cls(random_state=seed, early_stopping=True, **kw).fit(X_tr, y_tr)
            runs.append(est.score(X_te, y_te))
        scores[cls] = np.array(runs)
    ours, sk = scores[make], scores[theirs]
    assert abs(ours.mean() - sk.mean()) <= max(ours.std(), sk.std()) + 1e-3, (ours, sk)


# -- integrations


def test_pipeline_grid_search_cross_val_score_and_clone():
    X, y = _digits()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, random_state=0))
    assert cross_val_score(pipe, X, y, cv=3).mean() > 0.85  # unshuffled folds of digits are hard
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(8,), (32,)]}, cv=2).fit(X, y)
    assert search.best_params_ == {"mlpclassifier__hidden_layer_sizes": (32,)}
    copy = clone(search.best_estimator_[-1])
    assert copy.get_params() == search.best_estimator_[-1].get_params() and not hasattr(copy, "coefs_")


def test_readme_example_runs():
    """The README's example, exactly as shown there."""
    marker = re.compile(r"<!-- example: sklearn -->\s*```python\n(.*?)```\s*<!-- /example -->", re.S)
    found = marker.search((ROOT / "README.md").read_text())
    assert found, "the README example between <!-- example: sklearn --> and <!-- /example --> is missing"
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(found.group(1), "README.md example", "exec"), {})
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out.getvalue()).group(1))
    assert accuracy > 0.93, out.getvalue()


def test_pickle_round_trip_predicts_and_trains_on_the_same():
    X, y = _digits()
    est = _fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0), X, y)
    copy = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(copy.predict_proba(X), est.predict_proba(X))
    est.partial_fit(X, y)
    copy.partial_fit(X, y)  # the optimizer's state came along: the same step
    for a, b in zip(est.coefs_, copy.coefs_):
        np.testing.assert_array_equal(a, b)


# -- targets and methods


def test_string_labels_and_probabilities():
    X, y = _cancer()
    labels = np.where(y == 1, "benign", "malignant")
    est = MLPClassifier(hidden_layer_sizes=(16,), early_stopping=True, random_state=0).fit(X, labels)
    assert list(est.classes_) == ["benign", "malignant"]
    assert set(est.predict(X)) <= {"benign", "malignant"} and est.score(X, labels) > 0.9
    proba = est.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(est.predict_log_proba(X), np.log(proba))
    assert (est.classes_[proba.argmax(1)] == est.predict(X)).all()


def test_multilabel_and_multi_output_shapes():
    X, y = _digits()
    Y = np.c_[y % 2, y > 4, y == 3].astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, random_state=0).fit(X, Y)
    assert clf.predict(X).shape == Y.shape and clf.predict_proba(X).shape == Y.shape
    assert clf.out_activation_ == "logistic" and (clf.predict(X) == Y).mean() > 0.85
    Xr, yr = _diabetes()
    reg = _fit(MLPRegressor(hidden_layer_sizes=(16,), max_iter=10, random_state=0), Xr, np.c_[yr, -yr])
    assert reg.predict(Xr).shape == (len(Xr), 2) and reg.n_outputs_ == 2


def test_coefs_are_sklearn_layout_views_and_predict_is_their_forward():
    X, y = _digits()
    est = _fit(MLPClassifier(hidden_layer_sizes=(20, 10), activation="tanh", max_iter=2, random_state=0), X, y)
    assert [c.shape for c in est.coefs_] == [(64, 20), (20, 10), (10, 10)]
    assert [b.shape for b in est.intercepts_] == [(20,), (10,), (10,)]
    assert np.shares_memory(est.coefs_[0], est.model_[0].weight.data)
    h = X.astype(np.float32)
    for i, (w, b) in enumerate(zip(est.coefs_, est.intercepts_)):
        h = h @ w + b
        h = np.tanh(h) if i < 2 else h
    np.testing.assert_allclose(est.predict_proba(X), np.exp(h) / np.exp(h).sum(1, keepdims=True), atol=1e-5)


def test_the_fused_native_step_trains_and_sparse_input_matches_dense():
    import scipy.sparse as sp
    X, y = _digits()
    dense = _fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0), X, y)
    assert dense.model_.train_plan is not None  # every minibatch ran as one native call
    sparse = _fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=2, random_state=0), sp.csr_matrix(X), y)
    for a, b in zip(dense.coefs_, sparse.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dense.predict_proba(sp.csr_matrix(X)), dense.predict_proba(X))


# -- partial_fit, warm_start, early stopping, sample_weight


def test_partial_fit_needs_classes_first_and_does_one_epoch():
    X, y = _digits()
    est = MLPClassifier(hidden_layer_sizes=(16,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        est.partial_fit(X, y)
    est.partial_fit(X[y < 5], y[y < 5], classes=np.arange(10))  # a first batch without half the classes
    assert list(est.classes_) == list(range(10)) and est.n_iter_ == 1 and len(est.loss_curve_) == 1
    for _ in range(5):
        est.partial_fit(X, y)
    assert len(est.loss_curve_) == 6 and est.loss_curve_[-1] < est.loss_curve_[1] and est.t_ == (y < 5).sum() + 5 * len(y)
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        est.partial_fit(X[:5], np.full(5, 11))
    with pytest.raises(ValueError, match="does not support early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.arange(10))
    reg = MLPRegressor(hidden_layer_sizes=(8,), random_state=0)
    Xr, yr = _diabetes()
    for _ in range(3):
        reg.partial_fit(Xr, yr)
    assert len(reg.loss_curve_) == 3


def test_warm_start_continues_from_the_fitted_weights():
    X, y = _digits()
    kw = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0)
    est = _fit(MLPClassifier(warm_start=True, **kw), X, y)
    before = [c.copy() for c in est.coefs_]
    _fit(est, X, y)
    assert len(est.loss_curve_) == 6 and est.loss_curve_[3] < est.loss_curve_[0]
    cold = _fit(MLPClassifier(**kw), X, y)
    assert not np.allclose(est.coefs_[0], before[0]) and not np.allclose(est.coefs_[0], cold.coefs_[0])
    with pytest.raises(ValueError, match="warm_start can only be used"):
        est.fit(X[y < 9], y[y < 9])


def test_early_stopping_restores_the_best_weights():
    X, y = _digits()
    est = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3, random_state=0,
                        learning_rate_init=0.05).fit(X, y)
    best = int(np.argmax(est.validation_scores_))
    assert best < est.n_iter_ - 1 and est.best_validation_score_ == est.validation_scores_[best]
    est_rs = np.random.RandomState(0)  # the same draws: the init first, then the split
    for fan_in, fan_out in ((64, 32), (32, 10)):
        est_rs.uniform(size=(fan_in, fan_out)), est_rs.uniform(size=fan_out)
    _, X_val, _, y_val = train_test_split(X, y, random_state=est_rs, test_size=0.1)
    assert est.score(X_val, y_val) == est.best_validation_score_


def test_sample_weight_is_repetition_and_zero_drops_the_row():
    """Full batches in float64: weight 2 == the row twice, weight 0 == the row left out (to rounding)."""
    X, y = _digits()
    X, y = X[:150], y[:150]
    sw = np.random.default_rng(1).integers(0, 3, len(y))
    kw = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0, dtype="float64", shuffle=False)
    weighted = _fit(MLPClassifier(**kw), X, y, sample_weight=sw)
    repeated = _fit(MLPClassifier(**kw), X.repeat(sw, axis=0), y.repeat(sw))
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-9, atol=1e-12)
    ones = _fit(MLPClassifier(**kw), X, y, sample_weight=np.ones(len(y)))  # the weighted path, unit weights
    plain = _fit(MLPClassifier(**kw), X, y)  # the fused path
    np.testing.assert_allclose(ones.coefs_[0], plain.coefs_[0], atol=1e-12)
    with pytest.raises(ValueError, match="sample_weight.shape"):
        MLPClassifier().fit(X, y, sample_weight=np.ones(3))


# -- settings


def test_max_iter_warns_verbose_prints_and_tol_stops():
    X, y = _digits()
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(2\\) reached"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)
    out = io.StringIO()
    with redirect_stdout(out):
        est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, tol=10.0, n_iter_no_change=1, verbose=True,
                            random_state=0).fit(X, y)
    assert est.n_iter_ == 3 and "Iteration 1, loss = "  # stops when the count of epochs without improvement > 1 in out.getvalue()
    assert "Training loss did not improve more than tol=10.000000 for 1 consecutive epochs. Stopping." in out.getvalue()


def test_threads_are_restored_and_cuda_needs_a_device():
    X, y = _digits()
    before = fuseprop.get_num_threads()
    _fit(MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, n_threads=1, random_state=0), X, y)
    assert fuseprop.get_num_threads() == before
    if not fuseprop.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            MLPClassifier(device="cuda").fit(X, y)


@pytest.mark.parametrize("params, match", [
    (dict(solver="lbfgs"), "lbfgs"),
    (dict(activation="softplus"), "activation"),
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"),
    (dict(alpha=-1.0), "alpha"),
    (dict(batch_size=0), "batch_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(dtype="float16"), "dtype"),
    (dict(device="tpu"), "device"),
    (dict(n_iter_no_change=0), "n_iter_no_change"),
])
def test_bad_parameters_are_refused_at_fit(params, match):
    X, y = _digits()
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**params).fit(X[:20], y[:20])


def test_poisson_loss_is_refused():
    X, y = _diabetes()
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, y)
