"""scikit-learn estimators trained by fuseprop: ``MLPClassifier`` and ``MLPRegressor``, drop-in for
``sklearn.neural_network``'s (``pip install fuseprop[sklearn]``).

The same parameter names, defaults and meanings where they overlap, the same fitted attributes, and the same
training procedure: Glorot-uniform initialisation drawn from ``random_state`` as scikit-learn draws it, the
same shuffles and validation split, the same loss (``loss_curve_`` includes the L2 penalty
``alpha / 2 * sum ||W||^2 / n_batch`` exactly as scikit-learn's), the same gradient, Adam's and SGD's
updates, ``tol`` / ``n_iter_no_change`` stopping, early stopping with the best weights restored, the
ConvergenceWarning. Each minibatch step is ONE native call (fuseprop's fused train step) where it can be.

How scikit-learn's step maps onto fuseprop's: scikit-learn's gradient is that of
``loss + alpha / 2 * sum ||W||^2 / n_batch``, the L2 term on the weights only. The weights sit in one param
group whose (coupled) ``weight_decay`` is ``alpha / n_batch``, the biases in another with none, so the
penalty rides inside the fused native step. fuseprop's losses average over every element, scikit-learn's
sum over the outputs (its squared error: half of it, and averaged over the outputs in the reported loss
but summed in the gradient); the factor between the two gradients, ``scale``, is folded into the
hyper-parameters so the update is exactly scikit-learn's: SGD's lr times ``scale`` and weight decay over
``scale``; Adam's epsilon over ``scale`` (Adam is invariant to a gradient scale but for epsilon). Adam's
epsilon is also set every step to ``epsilon / sqrt(1 - beta_2**t)``: scikit-learn adds epsilon to
``sqrt(v)`` after the bias correction, PyTorch's formula (fuseprop's) before it.

Differences, on purpose:

- ``dtype="float32"`` by default (scikit-learn computes in float64): about 2x the speed; ``dtype="float64"``
  follows scikit-learn's numbers to rounding (the tests compare weights after training);
- ``solver="lbfgs"`` and ``MLPRegressor(loss="poisson")`` are not implemented (they raise);
- SGD's momentum is PyTorch's (``buf = momentum * buf + g; w -= lr * buf``): the same steps as
  scikit-learn's while the learning rate is constant, and slightly different after
  ``learning_rate="invscaling"`` / ``"adaptive"`` change it;
- sparse ``X`` is accepted and densified a minibatch at a time.

Added parameters: ``dropout`` (after each hidden activation, in training only; it runs the per-layer step),
``dtype``, ``n_threads`` (fuseprop's kernel threads during fit and predict; None leaves them as they are)
and ``device`` ("cpu" or "cuda": on "cuda" the steps run on the GPU, and the model comes back to the CPU
after each fit for predict, the attributes and pickling).

Fitted attributes as scikit-learn's: ``classes_`` (classifier), ``n_features_in_``, ``feature_names_in_``,
``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``, ``n_iter_``,
``t_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``, and ``coefs_`` / ``intercepts_`` (lists of
arrays, coefs_[i] of shape (n_in, n_out): views of the weights); plus ``model_``, the fuseprop
``nn.Sequential`` itself (Linear.weight is (n_out, n_in): coefs_[i] is its transpose).

``sample_weight`` weighs each sample's loss and gradient, normalised by the batch's sum of weights, as
scikit-learn >= 1.7 does: a weight of 2 is the row twice in the batch, a weight of 0 drops it. Weighted
batches run the per-layer step with the output gradient computed here.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import cuda, losses, nn, optim
from . import get_num_threads, set_num_threads

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": nn.Identity, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
_PREDICT_ROWS = 8192  # rows per forward in predict (sparse X is densified this many rows at a time)


def _check_number(name, value, lo, hi=math.inf, *, lo_open=False, hi_open=False, integer=False):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or math.isnan(value):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {value!r}")


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")


@contextmanager
def _threads(n):
    """fuseprop's kernel threads set to n (None: unchanged) for the block, restored after it."""
    if n is None:
        yield
        return
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)


def _sq_norm(p) -> float:
    a = cuda.to_host(p.data).ravel()
    return float(np.dot(a, a))


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the model, the training loop."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, dropout=0.0, dtype="float32", n_threads=None, device="cpu"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads
        self.device = device

    # -- parameters
    def _check_params(self) -> list:
        """Every parameter checked (ValueError naming it); returns the hidden layer sizes as a list."""
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") and not isinstance(sizes, str) else [sizes]
        for s in sizes:
            _check_number("each of hidden_layer_sizes", s, 1, integer=True)
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not implemented in fuseprop.sklearn: use 'adam' or 'sgd'")
        _check_choice("activation", self.activation, _ACTIVATIONS)
        _check_choice("solver", self.solver, {"adam", "sgd"})
        _check_number("alpha", self.alpha, 0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_number("batch_size", self.batch_size, 1, integer=True)
        _check_choice("learning_rate", self.learning_rate, {"constant", "invscaling", "adaptive"})
        _check_number("learning_rate_init", self.learning_rate_init, 0, lo_open=True)
        _check_number("power_t", self.power_t, 0)
        _check_number("max_iter", self.max_iter, 1, integer=True)
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            _check_bool(name, getattr(self, name))
        _check_number("tol", self.tol, 0)
        _check_number("momentum", self.momentum, 0, 1)
        _check_number("validation_fraction", self.validation_fraction, 0, 1, hi_open=True)
        _check_number("beta_1", self.beta_1, 0, 1, hi_open=True)
        _check_number("beta_2", self.beta_2, 0, 1, hi_open=True)
        _check_number("epsilon", self.epsilon, 0, lo_open=True)
        if self.n_iter_no_change != np.inf:
            _check_number("n_iter_no_change", self.n_iter_no_change, 1, integer=True)
        _check_number("dropout", self.dropout, 0, 1, hi_open=True)
        if np.dtype(self.dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.n_threads is not None:
            _check_number("n_threads", self.n_threads, 1, integer=True)
        if cuda.parse_device(self.device) == "cuda" and not cuda.is_available():
            raise RuntimeError(f"device={self.device!r} needs a CUDA device, and none can be used: {cuda.status()}")
        return sizes

    # -- what the subclasses define
    _out_activation = None  # "softmax", "logistic" or "identity", set by _targets on the first fit

    def _validate_input(self, X, y, incremental, reset):
        raise NotImplementedError

    def _score(self, X, y, sample_weight):
        raise NotImplementedError

    # -- the model
    def _initialize(self, Y, layer_units, rs):
        """A new network of layer_units (sklearn's Glorot-uniform init, drawn from rs as sklearn draws it), a
        new loss, and the attributes sklearn's _initialize sets."""
        self.n_iter_, self.t_ = 0, 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation
        dtype = np.dtype(self.dtype)
        factor = 2.0 if self.activation == "logistic" else 6.0
        modules = []
        dropout_rng = np.random.default_rng(rs.randint(2**31)) if self.dropout else None
        for i in range(len(layer_units) - 1):
            fan_in, fan_out = layer_units[i], layer_units[i + 1]
            bound = np.sqrt(factor / (fan_in + fan_out))
            coef = rs.uniform(-bound, bound, (fan_in, fan_out))
            intercept = rs.uniform(-bound, bound, fan_out)
            # A throwaway generator: fuseprop's own init is overwritten, and the global generator stays untouched.
            linear = nn.Linear(fan_in, fan_out, dtype=dtype, generator=np.random.default_rng(0))
            linear.weight.data[...] = coef.T
            linear.bias.data[...] = intercept
            modules.append(linear)
            if i < len(layer_units) - 2:
                modules.append(_ACTIVATIONS[self.activation]())
                if self.dropout:
                    modules.append(nn.Dropout(self.dropout, generator=dropout_rng))
        self.model_ = nn.Sequential(*modules)
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        else:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf
        self._best = self._weights_copy()

    def _linears(self):
        return [m for m in self.model_ if isinstance(m, nn.Linear)]

    def _weights_copy(self):
        return [(cuda.to_host(m.weight.data).copy(), cuda.to_host(m.bias.data).copy()) for m in self._linears()]

    def _restore(self, weights):
        names = [name for name, m in self.model_._modules.items() if isinstance(m, nn.Linear)]
        self.model_.load_state_dict({f"{name}.{k}": v for name, (w, b) in zip(names, weights)
                                     for k, v in (("weight", w), ("bias", b))})

    @property
    def coefs_(self) -> list:
        """The weight matrices in scikit-learn's layout: coefs_[i] is (n_in, n_out), a view of the model's
        weights (Linear.weight is (n_out, n_in), so each is its transpose)."""
        check_is_fitted(self, "model_")
        return [m.weight.data.T for m in self._linears()]

    @property
    def intercepts_(self) -> list:
        """The bias vectors, intercepts_[i] of shape (n_out,), views of the model's."""
        check_is_fitted(self, "model_")
        return [m.bias.data for m in self._linears()]

    def _make_optimizer(self):
        """The optimizer, the weights in group 0 (weight decay alpha / n_batch / scale, set per step) and the
        biases in group 1 (none)."""
        linears = self._linears()
        groups = [{"params": [m.weight for m in linears], "weight_decay": 0.0},
                  {"params": [m.bias for m in linears], "weight_decay": 0.0}]
        if self.solver == "adam":
            self._optimizer = optim.Adam(groups, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                                         eps=self.epsilon / self._scale)
        else:
            self._optimizer = optim.SGD(groups, lr=self.learning_rate_init * self._scale, momentum=self.momentum,
                                        nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        self._lr = float(self.learning_rate_init)  # sklearn's learning rate (the schedules change it)

    # -- fit
    def fit(self, X, y, sample_weight=None):
        """Fit the model to X (n_samples, n_features) and y; sample_weight (n_samples,) weighs each sample's
        loss. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental):
        sizes = self._check_params()
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = self._check_sample_weight(sample_weight, X.shape[0])
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        layer_units = [X.shape[1], *sizes, Y.shape[1]]
        rs = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, layer_units, rs)
        elif [m.in_features for m in self._linears()] + [self._linears()[-1].out_features] != layer_units:
            raise ValueError(f"the network's layer sizes {layer_units} differ from those fitted before "
                             f"({self.n_layers_} layers): refit with warm_start=False")
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not incremental or not hasattr(self, "_optimizer"):
            self._make_optimizer()
        on_cuda = cuda.parse_device(self.device) == "cuda"
        if on_cuda and (sample_weight is not None or self.dropout):
            raise NotImplementedError("on device='cuda', sample_weight and dropout are not supported (they need "
                                      "the per-layer step, which runs on the CPU): use device='cpu'")
        with _threads(self.n_threads):
            if on_cuda:
                self.model_.to("cuda")
            try:
                self._fit_stochastic(X, Y, sample_weight, rs, incremental)
            finally:
                if on_cuda:
                    self.model_.to("cpu")
        if not all(np.isfinite(w).all() and np.isfinite(b).all() for w, b in self._weights_copy()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             "values and need to be preprocessed.")
        return self

    @staticmethod
    def _check_sample_weight(sample_weight, n):
        if isinstance(sample_weight, (int, float, np.number)):
            return np.full(n, float(sample_weight))
        sw = check_array(sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight")
        if sw.ndim != 1 or sw.shape[0] != n:
            raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n,)}!")
        if (sw < 0).any():
            raise ValueError("Negative values in data passed to sample_weight")
        if not sw.any():
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return sw

    def _split(self, X, Y, y, sample_weight, rs):
        """(train, validation) parts of (X, Y, y, sample_weight) for early stopping, split as sklearn does
        (stratified for a classifier with one output: binary targets); Y, y: the targets as trained on and as given."""
        stratify = Y if isinstance(self, ClassifierMixin) and Y.shape[1] == 1 else None
        arrays = [X, Y, y] + ([sample_weight] if sample_weight is not None else [])
        parts = train_test_split(*arrays, random_state=rs, test_size=self.validation_fraction, stratify=stratify)
        train, val = parts[0::2], parts[1::2]
        if val[0].shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        if sample_weight is None:
            train, val = train + [None], val + [None]
        return train, val

    def _fit_stochastic(self, X, Y, sample_weight, rs, incremental):
        X_val = y_val = sw_val = None
        if self.early_stopping:
            (X, Y, _, sample_weight), (X_val, _, y_val, sw_val) = self._split(X, Y, self._given_targets(Y),
                                                                              sample_weight, rs)
        n = X.shape[0]
        if isinstance(self.batch_size, str):
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n))
        dtype = np.dtype(self.dtype)
        X = X.tocsr() if sp.issparse(X) else np.ascontiguousarray(X, dtype=dtype)
        T = np.argmax(Y, axis=1) if self._out_activation == "softmax" else np.ascontiguousarray(Y, dtype=dtype)
        loss_fn = self._loss_fn()
        idx = np.arange(n)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:  # sklearn.utils.shuffle(idx, random_state=rs), without its argument checks
                    order = np.arange(n)
                    rs.shuffle(order)
                    idx = idx[order]
                total = 0.0
                for start in range(0, n, batch_size):
                    batch = slice(start, min(start + batch_size, n))
                    rows = idx[batch] if self.shuffle else batch
                    xb = X[rows]
                    if sp.issparse(xb):
                        xb = np.ascontiguousarray(xb.toarray(), dtype=dtype)
                    sw = sample_weight[rows] if sample_weight is not None else None
                    total += self._step(xb, T[rows], sw, loss_fn) * (batch.stop - batch.start)
                self.n_iter_ += 1
                self.loss_ = total / n
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(X_val, y_val, sw_val)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    self._lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} "
                           "consecutive epochs.")
                    if self._trigger_stopping(msg):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization "
                                  "hasn't converged yet." % self.max_iter, ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            self._restore(self._best)

    def _trigger_stopping(self, msg) -> bool:
        """sklearn's: stop, unless SGD with learning_rate="adaptive" can divide its rate by 5."""
        if not (self.solver == "sgd" and self.learning_rate == "adaptive"):
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if self._lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._lr /= 5.0
        if self.verbose:
            print(msg + " Setting learning rate to %f" % self._lr)
        return False

    def _update_no_improvement_count(self, X_val, y_val, sw_val):
        if self.early_stopping:
            score = self._score(X_val, y_val, sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best = self._weights_copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    # -- one minibatch step
    def _set_hyper(self, n_eff):
        """The step's hyper-parameters: weight decay alpha / n_eff / scale on the weights; SGD's learning rate
        (times scale); Adam's epsilon for this step's bias correction."""
        opt, scale = self._optimizer, self._scale
        weights, biases = opt.param_groups
        weights["weight_decay"] = self.alpha / (n_eff * scale)
        if self.solver == "sgd":
            weights["lr"] = biases["lr"] = self._lr * scale
        else:
            state = opt.state.get(weights["params"][0])
            t = (state["step"] if state else 0) + 1
            weights["eps"] = biases["eps"] = self.epsilon / (scale * math.sqrt(1.0 - self.beta_2 ** t))

    def _step(self, xb, tb, sw, loss_fn) -> float:
        """One update on the batch (xb, targets tb, weights sw or None); returns sklearn's batch loss (with
        the L2 penalty of the weights before the update)."""
        penalty = sum(_sq_norm(m.weight) for m in self._linears()) if self.alpha else 0.0
        n_eff = len(xb) if sw is None else float(sw.sum())
        if n_eff <= 0:  # all weights zero: nothing to learn from this batch
            return 0.0
        self._set_hyper(n_eff)
        try:
            if sw is None:
                value = self.model_.train_step(xb, tb, loss_fn, self._optimizer) * self._loss_scale
            else:
                value = self._weighted_step(xb, tb, sw / n_eff)
        except FloatingPointError as e:
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             f"values and need to be preprocessed ({e}).") from None
        return value + 0.5 * self.alpha * penalty / n_eff

    def _weighted_step(self, xb, tb, w) -> float:
        """The per-layer step with the output gradient computed here, each row weighted by w (summing to 1)."""
        model = self.model_
        model.zero_grad()
        z = model(xb)
        value, dz = self._weighted_loss_grad(z.astype(np.float64), tb, w)
        model.backward((dz / self._scale).astype(z.dtype))
        if not math.isfinite(value) or not all(np.isfinite(p.grad).all() for p in model.parameters()):
            raise FloatingPointError(f"the loss is {value}")
        self._optimizer.step()
        return value

    def _forward(self, X, check_input=True) -> np.ndarray:
        """The network's raw outputs (before the output activation) for X, float64, in eval mode."""
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        if sp.issparse(X):
            X = X.tocsr()
        dtype = np.dtype(self.dtype)
        model, out = self.model_, []
        was_training = model.training
        model.eval()
        try:
            with _threads(self.n_threads), nn.no_grad():
                for start in range(0, X.shape[0], _PREDICT_ROWS):
                    xb = X[start:start + _PREDICT_ROWS]
                    xb = xb.toarray() if sp.issparse(xb) else xb
                    out.append(cuda.to_host(model(np.ascontiguousarray(xb, dtype=dtype))))
        finally:
            model.train(was_training)
        z = np.concatenate(out) if out else np.empty((0, self.n_outputs_), dtype)
        return z.astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (scikit-learn's MLPClassifier, trained by fuseprop).

    Single-label targets (binary or multiclass, any label type) and multi-label indicator matrices, as
    scikit-learn handles them: softmax cross-entropy for multiclass targets, a logistic output with binary
    cross-entropy for binary and multi-label ones. See the module's docstring for the parameters and what
    differs from scikit-learn.
    """

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One pass (epoch) over (X, y). classes (every class of all calls) is required on the first call,
        except for multi-label targets."""
        if self.solver not in ("adam", "sgd"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not "
                                 "stochastic.")
        if getattr(self, "classes_", None) is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None and getattr(self, "classes_", None) is not None:
            if not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, was: "
                                 f"{self.classes_!r}")
        elif classes is not None:  # the first call: the classes of every call to come
            binarizer = LabelBinarizer().fit(y if type_of_target(y).startswith("multilabel") else classes)
            self._label_binarizer, self.classes_ = binarizer, binarizer.classes_
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                     f"call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    @property
    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _given_targets(self, Y):
        return self._label_binarizer.inverse_transform(Y)

    @property
    def _scale(self):
        """fuseprop's loss gradient times _scale is sklearn's: cross-entropy 1; binary cross-entropy (mean over
        the outputs in fuseprop, summed in sklearn) the number of outputs."""
        return 1.0 if self.out_activation_ == "softmax" else float(self.n_outputs_)

    _loss_scale = _scale  # and the same factor between the losses' values

    def _loss_fn(self):
        return losses.CrossEntropyLoss() if self.out_activation_ == "softmax" else losses.BCEWithLogitsLoss()

    def _weighted_loss_grad(self, z, tb, w):
        """(sklearn's loss, its gradient with respect to the logits z) with rows weighted by w (sum 1)."""
        if self.out_activation_ == "softmax":
            logp = z - z.max(axis=1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
            rows = np.arange(len(tb))
            value = -float(np.dot(w, logp[rows, tb]))
            dz = np.exp(logp)
            dz[rows, tb] -= 1.0
        else:
            value = float(np.dot(w, (np.maximum(z, 0) - z * tb + np.log1p(np.exp(-np.abs(z)))).sum(axis=1)))
            dz = _sigmoid(z) - tb
        return value, dz * w[:, None]

    def _score(self, X, y, sample_weight):
        return accuracy_score(y, self._predict(X, check_input=False), sample_weight=sample_weight)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), in the order of classes_; rows sum to 1 (softmax) for
        single-label targets; per label for multi-label targets."""
        check_is_fitted(self, "model_")
        z = self._forward(X)
        if self.out_activation_ == "softmax":
            return _softmax(z)
        p = _sigmoid(z)
        return np.hstack([1.0 - p, p]) if p.shape[1] == 1 else p

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        proba = self.predict_proba(X)
        return np.log(proba, out=proba)

    def _predict(self, X, check_input=True):
        check_is_fitted(self, "model_")
        z = self._forward(X, check_input)
        p = _softmax(z) if self.out_activation_ == "softmax" else _sigmoid(z)
        return self._label_binarizer.inverse_transform(p.ravel() if self.n_outputs_ == 1 else p)

    def predict(self, X):
        """The predicted classes (n_samples,), or (n_samples, n_labels) indicators for multi-label targets."""
        return self._predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (scikit-learn's MLPRegressor, trained by fuseprop): squared error,
    single or multi-output. See the module's docstring for the parameters and what differs from scikit-learn.
    """

    _out_activation = "identity"

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, dropout=0.0, dtype="float32", n_threads=None,
                 device="cpu"):
        self.loss = loss
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, dropout=dropout,
                         dtype=dtype, n_threads=n_threads, device=device)

    def _check_params(self):
        if self.loss != "squared_error":
            raise ValueError(f"loss must be 'squared_error' (fuseprop.sklearn does not implement 'poisson'), got "
                             f"{self.loss!r}")
        return super()._check_params()

    def partial_fit(self, X, y, sample_weight=None):
        """One pass (epoch) over (X, y)."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _given_targets(self, Y):
        return Y

    @property
    def _scale(self):
        """fuseprop's MSELoss gradient (2 (z - y) / (n k)) times _scale (k / 2) is sklearn's ((z - y) / n)."""
        return self.n_outputs_ / 2.0

    _loss_scale = 0.5  # sklearn's loss is half the mean squared error (averaged over the outputs too)

    def _loss_fn(self):
        return losses.MSELoss()

    def _weighted_loss_grad(self, z, tb, w):
        diff = z - tb
        return 0.5 * float(np.dot(w, diff * diff).mean()), diff * w[:, None]

    def _score(self, X, y, sample_weight):
        y_pred = self._predict(X, check_input=False)
        if not np.isfinite(y_pred).all():
            return np.nan
        return r2_score(y, y_pred, sample_weight=sample_weight)

    def _predict(self, X, check_input=True):
        check_is_fitted(self, "model_")
        z = self._forward(X, check_input)
        return z.ravel() if z.shape[1] == 1 else z

    def predict(self, X):
        """The predictions (n_samples,), or (n_samples, n_outputs) for multi-output targets."""
        return self._predict(X)
