"""The NumPy reference is the oracle, so its own gradients are checked against finite differences
in float64, its matmul against plain NumPy, and its optimizers against PyTorch's formulas written
out by hand. Also tests fuseprop.testing, which those checks rely on."""

import importlib.util
import pathlib

import numpy as np
import pytest


def _load(name):
    # Load by path: fuseprop/__init__.py imports the native extension; these tests must not need it.
    path = pathlib.Path(__file__).resolve().parents[1] / "python" / "fuseprop" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fuseprop_{name}_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load("reference")
testing = _load("testing")


def _away_from_zero(rng, shape, low=0.05, high=3.0):
    # Finite differences straddling a kink (relu, leaky_relu at 0) would be meaningless.
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


# ---------------------------------------------------------------------------------------------
# Gradient-check registry. Each case builds, from an rng, a scalar loss L() that reads its input
# arrays and {name: (input array, analytic dL/dinput)}. Array outputs become scalars through
# L = sum(out * R) with a fixed random R, so the upstream gradient is R.


def _activation_case(activation, negative_slope, shape):
    def build(rng):
        x = _away_from_zero(rng, shape)
        r = rng.standard_normal(shape)

        def loss():
            return np.sum(reference.activation_forward(x, activation, negative_slope) * r)

        y = reference.activation_forward(x, activation, negative_slope)
        return loss, {"x": (x, reference.activation_backward(r, x, y, activation, negative_slope))}
    return build


def _softmax_case(forward, backward, shape):
    def build(rng):
        x = rng.standard_normal(shape) * 2
        r = rng.standard_normal(shape)
        return lambda: np.sum(forward(x) * r), {"x": (x, backward(r, forward(x)))}
    return build


def _linear_case(activation, with_bias, batch=4, n_in=7, n_out=3, negative_slope=0.01):
    def build(rng):
        x = rng.standard_normal((batch, n_in))
        weight = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
        bias = rng.standard_normal(n_out) if with_bias else None
        r = rng.standard_normal((batch, n_out))

        def loss():
            y, _ = reference.linear_forward(x, weight, bias, activation, negative_slope)
            return np.sum(y * r)

        y, z = reference.linear_forward(x, weight, bias, activation, negative_slope)
        grad_x, grad_weight, grad_bias = reference.linear_backward(
            r, x, weight, z, y, activation, negative_slope, has_bias=with_bias)
        grads = {"x": (x, grad_x), "weight": (weight, grad_weight)}
        if with_bias:
            grads["bias"] = (bias, grad_bias)
        else:
            assert grad_bias is None
        return loss, grads
    return build


def _cross_entropy_case(label_smoothing, reduction, batch=4, classes=7):
    def build(rng):
        logits = rng.standard_normal((batch, classes)) * 2
        labels = rng.integers(0, classes, size=batch)

        def loss():
            return reference.cross_entropy_loss(logits, labels, label_smoothing, reduction)[0]

        _, grad = reference.cross_entropy_loss(logits, labels, label_smoothing, reduction)
        return loss, {"logits": (logits, grad)}
    return build


def _elementwise_loss_case(loss_fn, reduction, shape, make_target):
    def build(rng):
        x = rng.standard_normal(shape) * 3
        target = make_target(rng, shape)
        _, grad = loss_fn(x, target, reduction)
        return lambda: loss_fn(x, target, reduction)[0], {"x": (x, grad)}
    return build


ACTIVATION_SETTINGS = [(a, 0.01) for a in reference.ACTIVATIONS] + [("leaky_relu", 0.2),
                                                                    ("leaky_relu", 1.5)]
SHAPES = [(3, 5), (1, 1), (4, 7)]

GRAD_CASES = {}
for _act, _slope in ACTIVATION_SETTINGS:
    for _shape in SHAPES + [(2, 3, 4)]:
        GRAD_CASES[f"activation-{_act}-{_slope}-{_shape}"] = _activation_case(_act, _slope, _shape)
for _shape in SHAPES:
    GRAD_CASES[f"softmax-{_shape}"] = _softmax_case(
        reference.softmax_forward, reference.softmax_backward, _shape)
    GRAD_CASES[f"log_softmax-{_shape}"] = _softmax_case(
        reference.log_softmax_forward, reference.log_softmax_backward, _shape)
for _act, _slope in ACTIVATION_SETTINGS:
    for _with_bias in (True, False):
        GRAD_CASES[f"linear-{_act}-{_slope}-bias={_with_bias}"] = _linear_case(
            _act, _with_bias, negative_slope=_slope)
GRAD_CASES["linear-1x1x1"] = _linear_case("tanh", True, batch=1, n_in=1, n_out=1)
for _reduction in ("mean", "sum"):
    for _smoothing in (0.0, 0.1):
        GRAD_CASES[f"cross_entropy-{_smoothing}-{_reduction}"] = _cross_entropy_case(
            _smoothing, _reduction)
    for _shape in ((3, 5), (2, 3, 4)):
        GRAD_CASES[f"mse-{_reduction}-{_shape}"] = _elementwise_loss_case(
            reference.mse_loss, _reduction, _shape, lambda rng, s: rng.standard_normal(s))
        GRAD_CASES[f"bce_with_logits-{_reduction}-{_shape}"] = _elementwise_loss_case(
            reference.bce_with_logits_loss, _reduction, _shape, lambda rng, s: rng.uniform(0, 1, s))


@pytest.mark.parametrize("seed, build", list(enumerate(GRAD_CASES.values())), ids=list(GRAD_CASES))
def test_backward_matches_finite_differences(seed, build):
    loss, grads = build(np.random.default_rng(seed))
    for name, (x, analytic) in grads.items():
        assert analytic.dtype == np.float64
        testing.check_grad(loss, x, analytic, name=name)


# ---------------------------------------------------------------------------------------------
# Forward values that finite differences cannot catch


def test_gelu_matches_known_values():
    # gelu(x) = x * Phi(x); Phi(1), Phi(-1), Phi(2) to 16 digits from mpmath.
    x = np.array([1.0, -1.0, 2.0, 0.0])
    expected = np.array([0.8413447460685429, -0.15865525393145705, 1.9544997361036416, 0.0])
    testing.assert_parity(reference.activation_forward(x, "gelu"), expected, rtol=1e-15, atol=0)


def test_gelu_tanh_matches_pytorch_definition():
    x = np.linspace(-4, 4, 17)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    testing.assert_parity(reference.activation_forward(x, "gelu_tanh"), expected, rtol=1e-15,
                          atol=0)


def test_relu_family_at_zero_follows_pytorch():
    x = np.zeros(1)
    one = np.ones(1)
    assert reference.activation_backward(one, x, x, "relu")[0] == 0.0
    assert reference.activation_backward(one, x, x, "leaky_relu", negative_slope=0.3)[0] == 0.3


@pytest.mark.parametrize("forward", [reference.softmax_forward, reference.log_softmax_forward])
def test_softmax_is_shift_invariant_and_stable(forward):
    x = np.random.default_rng(0).standard_normal((3, 5))
    testing.assert_parity(forward(x + 1000.0), forward(x), rtol=1e-12, atol=1e-12)


def test_sigmoid_and_bce_are_stable_for_large_logits():
    x = np.array([-800.0, 800.0])
    np.testing.assert_array_equal(reference.activation_forward(x, "sigmoid"), [0.0, 1.0])
    loss, grad = reference.bce_with_logits_loss(x, np.array([1.0, 0.0]), "sum")
    assert loss == 1600.0
    np.testing.assert_array_equal(grad, [-1.0, 1.0])


@pytest.mark.parametrize("op, args", [
    (reference.activation_forward, (np.zeros(2), "swish")),
    (reference.linear_forward, (np.zeros((1, 2)), np.zeros((3, 2)), None, "Relu")),
    (reference.cross_entropy_loss, (np.zeros((1, 2)), np.zeros(1, dtype=int), 0.0, "none")),
    (reference.mse_loss, (np.zeros(2), np.zeros(2), "avg")),
    (reference.bce_with_logits_loss, (np.zeros(2), np.zeros(2), "")),
])
def test_unknown_activation_or_reduction_raises(op, args):
    with pytest.raises(ValueError):
        op(*args)


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0.0, 1.0], [0]])
def test_cross_entropy_rejects_bad_labels(labels):
    with pytest.raises(ValueError):
        reference.cross_entropy_loss(np.zeros((2, 3)), np.array(labels))


def test_empty_batch():
    rng = np.random.default_rng(0)
    x, weight, bias = np.zeros((0, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    y, z = reference.linear_forward(x, weight, bias, "gelu")
    grad_x, grad_weight, grad_bias = reference.linear_backward(y, x, weight, z, y, "gelu")
    assert y.shape == z.shape == (0, 3) and grad_x.shape == (0, 4)
    np.testing.assert_array_equal(grad_weight, np.zeros((3, 4)))
    np.testing.assert_array_equal(grad_bias, np.zeros(3))
    assert reference.softmax_forward(np.zeros((0, 5))).shape == (0, 5)
    loss, grad = reference.cross_entropy_loss(np.zeros((0, 5)), np.zeros(0, dtype=int), 0.1, "sum")
    assert loss == 0.0 and grad.shape == (0, 5)
    loss, grad = reference.mse_loss(np.zeros((0, 2)), np.zeros((0, 2)))
    assert np.isnan(loss) and grad.shape == (0, 2)


# ---------------------------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_matches_numpy(trans_a, trans_b):
    rng = np.random.default_rng(1)
    a_logical, b_logical = rng.standard_normal((4, 6)), rng.standard_normal((6, 5))
    # Store the transposed operands contiguously, as a caller passing trans_* would.
    a = np.ascontiguousarray(a_logical.T) if trans_a else a_logical
    b = np.ascontiguousarray(b_logical.T) if trans_b else b_logical

    out = reference.matmul(a, b, trans_a, trans_b, alpha=0.5)
    testing.assert_parity(out, 0.5 * (a_logical @ b_logical), reduction_length=6)

    c_before = rng.standard_normal((4, 5))
    c = c_before.copy()
    out = reference.matmul(a, b, trans_a, trans_b, c=c, alpha=-1.5, beta=2.0)
    assert out is c
    testing.assert_parity(c, -1.5 * (a_logical @ b_logical) + 2.0 * c_before, reduction_length=6)


def test_matmul_beta_zero_does_not_read_c():
    c = np.full((2, 2), np.nan)
    reference.matmul(np.eye(2), np.ones((2, 2)), c=c)
    np.testing.assert_array_equal(c, np.ones((2, 2)))


def test_matmul_bad_arguments_raise():
    with pytest.raises(ValueError):
        reference.matmul(np.eye(2), np.eye(2), beta=1.0)
    with pytest.raises(ValueError):
        reference.matmul(np.eye(2), np.eye(2), c=np.zeros((3, 2)))


# ---------------------------------------------------------------------------------------------
# linear_backward bookkeeping


def test_linear_backward_accumulates_in_place():
    rng = np.random.default_rng(2)
    x, weight = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    bias = rng.standard_normal(3)
    grad_y = rng.standard_normal((5, 3))
    y, z = reference.linear_forward(x, weight, bias, "sigmoid")
    _, once_weight, once_bias = reference.linear_backward(grad_y, x, weight, z, y, "sigmoid")

    grad_weight, grad_bias = np.zeros_like(weight), np.zeros_like(bias)
    for _ in range(2):
        grad_x, gw, gb = reference.linear_backward(grad_y, x, weight, z, y, "sigmoid",
                                                   need_grad_x=False, grad_weight=grad_weight,
                                                   grad_bias=grad_bias)
        assert grad_x is None and gw is grad_weight and gb is grad_bias
    testing.assert_parity(grad_weight, 2 * once_weight)
    testing.assert_parity(grad_bias, 2 * once_bias)


def test_linear_backward_without_bias_leaves_grad_bias_alone():
    x, weight = np.ones((2, 3)), np.ones((4, 3))
    y, z = reference.linear_forward(x, weight)
    grad_bias = np.zeros(4)
    _, _, gb = reference.linear_backward(y, x, weight, z, y, has_bias=False, grad_bias=grad_bias)
    assert gb is None
    np.testing.assert_array_equal(grad_bias, np.zeros(4))


# ---------------------------------------------------------------------------------------------
# Optimizers against PyTorch's update rules (torch.optim.SGD / Adam / AdamW docs), unrolled.

STEPS = 3


def _param_and_grads(seed, shape=(3, 4)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), [rng.standard_normal(shape) for _ in range(STEPS)]


def _torch_sgd(p, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    buf = None
    for g in grads:
        g = g + weight_decay * p
        if momentum != 0:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p, buf


@pytest.mark.parametrize("hyper", [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.1),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.2, weight_decay=0.1),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
], ids=str)
def test_sgd_step_matches_pytorch(hyper):
    p0, grads = _param_and_grads(3)
    expected_p, expected_buf = _torch_sgd(p0, grads, **hyper)

    param, buf = p0.copy(), np.zeros_like(p0)
    for step, g in enumerate(grads, start=1):
        reference.sgd_step(param, g, buf, step=step, **hyper)
    testing.assert_parity(param, expected_p)
    if expected_buf is not None:
        testing.assert_parity(buf, expected_buf)


def test_sgd_momentum_by_hand():
    # p = 1, g = 0.5 each step, lr = 0.1, momentum = 0.9: buf 0.5, 0.95, 1.355.
    param, buf = np.array([1.0]), np.zeros(1)
    for step in (1, 2, 3):
        reference.sgd_step(param, np.array([0.5]), buf, lr=0.1, momentum=0.9, step=step)
    testing.assert_parity(buf, np.array([1.355]))
    testing.assert_parity(param, np.array([1.0 - 0.1 * (0.5 + 0.95 + 1.355)]))


def _torch_adam(p, grads, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay):
    m = v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled_weight_decay:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


@pytest.mark.parametrize("hyper", [
    dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False),
    dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1,
         decoupled_weight_decay=False),
    dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1,
         decoupled_weight_decay=True),
], ids=["adam", "adam-weight_decay", "adamw"])
def test_adam_step_matches_pytorch(hyper):
    p0, grads = _param_and_grads(4)
    expected_p, expected_m, expected_v = _torch_adam(p0, grads, **hyper)

    param, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step, g in enumerate(grads, start=1):
        reference.adam_step(param, g, m, v, step=step, **hyper)
    testing.assert_parity(param, expected_p)
    testing.assert_parity(m, expected_m)
    testing.assert_parity(v, expected_v)


def test_adam_first_step_moves_by_lr_times_sign():
    # After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps).
    param, grad = np.array([1.0, 1.0]), np.array([0.3, -2.0])
    reference.adam_step(param, grad, np.zeros(2), np.zeros(2), step=1, lr=0.01, eps=0.0)
    testing.assert_parity(param, np.array([0.99, 1.01]))


# ---------------------------------------------------------------------------------------------
# fuseprop.testing itself


def test_tolerances():
    assert testing.tolerances(np.float64) == (1e-10, 1e-12)
    assert testing.tolerances("float32", reduction_length=100) == pytest.approx((1e-5, 1e-5))
    assert testing.tolerances(np.float32, reduction_length=0) == (1e-5, 1e-6)
    with pytest.raises(TypeError):
        testing.tolerances(np.int32)


def test_assert_parity_rejects_shape_mismatch():
    with pytest.raises(AssertionError, match=r"grad_w: expected shape \(2, 3\), got \(3, 2\)"):
        testing.assert_parity(np.zeros((3, 2)), np.zeros((2, 3)), name="grad_w")


def test_assert_parity_rejects_value_outside_tolerance():
    expected = np.array([1.0, 2.0, 3.0])
    actual = expected + np.array([0.0, 1e-9, 1e-6])
    with pytest.raises(AssertionError, match=r"y: 2 of 3 .* index \(2,\)"):
        testing.assert_parity(actual, expected, name="y")


def test_assert_parity_passes_inside_tolerance_and_reports_errors():
    expected = np.array([1.0, -4.0, np.nan, np.inf, -np.inf, 0.0])
    actual = expected + np.array([0.0, 2e-10, 0.0, 0.0, 0.0, 0.0])
    errors = testing.assert_parity(actual, expected)
    assert errors["max_abs_err"] == pytest.approx(2e-10)
    assert errors["max_rel_err"] == pytest.approx(5e-11)
    assert (errors["rtol"], errors["atol"]) == (1e-10, 1e-12)
    # float32 tolerances come from the dtype argument, and the array's dtype by default.
    testing.assert_parity(np.float32(1.000005), np.float64(1.0))
    testing.assert_parity(np.array([1.000005]), np.array([1.0]), dtype=np.float32)


@pytest.mark.parametrize("actual, expected", [(np.nan, 1.0), (1.0, np.nan), (np.inf, -np.inf),
                                              (np.inf, 1e300)])
def test_assert_parity_special_values_must_match(actual, expected):
    with pytest.raises(AssertionError):
        testing.assert_parity(np.array([actual]), np.array([expected]))


def test_numerical_grad_of_cube_sum():
    x = np.random.default_rng(5).standard_normal((3, 4))
    x_before = x.copy()
    grad = testing.numerical_grad(lambda: np.sum(x**3), x)
    testing.assert_parity(grad, 3 * x**2, rtol=1e-8, atol=1e-9)
    assert x.tobytes() == x_before.tobytes()  # restored bit for bit


def test_numerical_grad_rejects_float32():
    with pytest.raises(TypeError):
        testing.numerical_grad(lambda: 0.0, np.zeros(3, dtype=np.float32))


def test_check_grad_rejects_wrong_gradient():
    x = np.array([1.0, 2.0])
    testing.check_grad(lambda: np.sum(x**2), x, 2 * x)
    with pytest.raises(AssertionError, match="dx"):
        testing.check_grad(lambda: np.sum(x**2), x, 2 * x + 1e-3)
