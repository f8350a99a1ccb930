"""Pure-NumPy forward and backward of every fuseprop op: the oracle for the native kernels.

Signatures and math follow OPS_SPEC.md. Everything is computed in the dtype of the inputs
(the tests pass float64). Each derivative sits next to its forward so the calculus can be
checked at a glance. Gradients of activations are written (new arrays); parameter gradients
passed in to linear_backward are accumulated (+=), as in PyTorch.
"""

import math

import numpy as np

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh")


# ---------------------------------------------------------------------------------------------
# matmul


def matmul(a, b, trans_a=False, trans_b=False, c=None, alpha=1.0, beta=0.0):
    """alpha * op(a) @ op(b) + beta * c; op(a) is (M,K), op(b) is (K,N), the result (M,N).

    With c given the result is written into c and c is returned. As in BLAS, beta == 0 means
    c is not read, so NaN or garbage in c does not leak into the result.
    """
    product = alpha * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    if c is None:
        if beta != 0:
            raise ValueError("matmul: beta != 0 needs c")
        return product
    if c.shape != product.shape:
        raise ValueError(f"matmul: c has shape {c.shape}, the product has shape {product.shape}")
    c[...] = product if beta == 0 else product + beta * c
    return c


# ---------------------------------------------------------------------------------------------
# activations: (forward(x, slope) -> y, derivative(x, y, slope) -> dy/dx), elementwise

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715
# math.erf is correctly rounded to ~1 ulp in float64; NumPy has no erf of its own.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    # exp(-|x|) never overflows; the two branches are the same function rearranged.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / _SQRT_2).astype(x.dtype, copy=False))


def _gelu_grad(x):
    cdf = 0.5 * (1 + _erf(x / _SQRT_2).astype(x.dtype, copy=False))  # Phi(x)
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # phi(x)
    return cdf + x * pdf


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_CUBIC * x**3)))


def _gelu_tanh_grad(x):
    # y = 0.5 x (1 + t), t = tanh(u), u = k (x + c x^3)
    # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)
    t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_CUBIC * x**3))
    du_dx = _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_CUBIC * x * x)
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du_dx


_ACTIVATION_TABLE = {
    "identity": (lambda x, s: x.copy(), lambda x, y, s: np.ones_like(x)),
    # PyTorch: relu'(0) = 0, and leaky_relu takes the negative branch at x == 0.
    "relu": (lambda x, s: np.maximum(x, 0), lambda x, y, s: (x > 0).astype(x.dtype)),
    "leaky_relu": (
        lambda x, s: np.where(x > 0, x, s * x),
        lambda x, y, s: np.where(x > 0, 1.0, s).astype(x.dtype),
    ),
    "sigmoid": (lambda x, s: _sigmoid(x), lambda x, y, s: y * (1 - y)),
    "tanh": (lambda x, s: np.tanh(x), lambda x, y, s: 1 - y * y),
    "gelu": (lambda x, s: _gelu(x), lambda x, y, s: _gelu_grad(x)),
    "gelu_tanh": (lambda x, s: _gelu_tanh(x), lambda x, y, s: _gelu_tanh_grad(x)),
}
assert tuple(_ACTIVATION_TABLE) == ACTIVATIONS


def _activation(name):
    try:
        return _ACTIVATION_TABLE[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}") from None


def activation_forward(x, activation, negative_slope=0.01):
    """y = act(x), elementwise, any shape."""
    forward, _ = _activation(activation)
    return forward(x, negative_slope)


def activation_backward(grad_y, x, y, activation, negative_slope=0.01):
    """grad_x = grad_y * act'(x); x is the pre-activation input, y = act(x)."""
    _, derivative = _activation(activation)
    return grad_y * derivative(x, y, negative_slope)


# ---------------------------------------------------------------------------------------------
# softmax / log_softmax over axis 1 of x (B,C)


def softmax_forward(x):
    """y_ic = exp(x_ic) / sum_c exp(x_ic); x (B,C)."""
    e = np.exp(x - x.max(axis=1, keepdims=True))  # shifting by the row max avoids overflow
    return e / e.sum(axis=1, keepdims=True)


def softmax_backward(grad_y, y):
    """grad_x = y * (grad_y - sum_c grad_y * y); y is the softmax output (B,C)."""
    return y * (grad_y - (grad_y * y).sum(axis=1, keepdims=True))


def log_softmax_forward(x):
    """y_ic = x_ic - log sum_c exp(x_ic); x (B,C)."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def log_softmax_backward(grad_y, y):
    """grad_x = grad_y - softmax * sum_c grad_y; y is the log-softmax output (B,C)."""
    return grad_y - np.exp(y) * grad_y.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# linear: x (B,IN), weight (OUT,IN), bias (OUT,), z and y (B,OUT)


def linear_forward(x, weight, bias=None, activation="identity", negative_slope=0.01):
    """z = x @ weight.T + bias; y = act(z). Returns (y, z)."""
    z = x @ weight.T
    if bias is not None:
        z = z + bias
    return activation_forward(z, activation, negative_slope), z


def linear_backward(grad_y, x, weight, z, y, activation="identity", negative_slope=0.01,
                    has_bias=True, need_grad_x=True, grad_weight=None, grad_bias=None):
    """Returns (grad_x or None, grad_weight, grad_bias or None).

    dz = grad_y * act'(z); grad_weight (OUT,IN) = dz.T @ x; grad_bias (OUT,) = dz.sum(0);
    grad_x (B,IN) = dz @ weight. A grad_weight / grad_bias passed in is accumulated into (+=)
    and returned. With has_bias False, grad_bias is neither touched nor returned.
    """
    # The identity's derivative needs neither z nor y: they may be None for it.
    dz = grad_y if activation == "identity" else activation_backward(grad_y, z, y, activation, negative_slope)
    if grad_weight is None:
        grad_weight = dz.T @ x
    else:
        grad_weight += dz.T @ x
    if not has_bias:
        grad_bias = None
    elif grad_bias is None:
        grad_bias = dz.sum(axis=0)
    else:
        grad_bias += dz.sum(axis=0)
    grad_x = dz @ weight if need_grad_x else None
    return grad_x, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------
# losses: (loss as a Python float, gradient with respect to the first argument)


def _reduction_scale(reduction, count):
    """Factor applied to the summed loss and its gradient: 1/count for "mean", 1 for "sum"."""
    if reduction == "mean":
        return 1.0 / count if count else math.nan  # the mean of nothing is undefined
    if reduction == "sum":
        return 1.0
    raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'sum'")


def cross_entropy_loss(logits, labels, label_smoothing=0.0, reduction="mean"):
    """logits (B,C), labels (B,) integers in [0, C); PyTorch's cross_entropy.

    q = (1 - eps) * onehot(labels) + eps / C; loss_i = -sum_c q_ic log_softmax(logits)_ic;
    "mean" divides by B. grad_logits = (softmax(logits) - q) * scale.
    """
    batch, classes = logits.shape
    scale = _reduction_scale(reduction, batch)
    labels = np.asarray(labels)
    # Checked because NumPy indexing would silently wrap negative labels.
    if (labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer)
            or np.any((labels < 0) | (labels >= classes))):
        raise ValueError(f"labels must be (B,) = ({batch},) integers in [0, {classes})")
    q = np.full_like(logits, label_smoothing / classes)
    q[np.arange(batch), labels] += 1 - label_smoothing
    log_probs = log_softmax_forward(logits)
    # Only the classes with q > 0 contribute: a -inf logit (a masked class) must not turn 0 * -inf into NaN.
    loss = -float(np.sum(q * log_probs, where=q > 0)) * scale
    return loss, (np.exp(log_probs) - q) * scale


def mse_loss(pred, target, reduction="mean"):
    """Mean (or sum) of (pred - target)^2 over all elements; grad = 2 (pred - target) * scale."""
    scale = _reduction_scale(reduction, pred.size)
    diff = pred - target
    return float(np.sum(diff * diff)) * scale, 2 * diff * scale


def bce_with_logits_loss(logits, target, reduction="mean"):
    """l = max(x,0) - x t + log1p(exp(-|x|)) (stable for any x); grad = (sigmoid(x) - t) * scale."""
    scale = _reduction_scale(reduction, logits.size)
    elementwise = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
    return float(np.sum(elementwise)) * scale, (_sigmoid(logits) - target) * scale


# ---------------------------------------------------------------------------------------------
# optimizers: update param (and state) in place, as PyTorch's SGD and Adam / AdamW


def sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
             nesterov=False, weight_decay=0.0, step=1):
    """One SGD step; step is 1-based and only decides whether the momentum buffer is initialised."""
    d = grad + weight_decay * param
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("sgd_step: momentum != 0 needs momentum_buffer")
        if step == 1:
            momentum_buffer[...] = d
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1 - dampening) * d
        d = d + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * d


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False):
    """One Adam (or AdamW when decoupled_weight_decay) step; step counts this update, from 1."""
    if step < 1:
        raise ValueError(f"adam_step: step must be >= 1, got {step}")
    if decoupled_weight_decay:
        param *= 1 - lr * weight_decay
        g = grad
    else:
        g = grad + weight_decay * param
    exp_avg *= beta1
    exp_avg += (1 - beta1) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + eps
    param -= (lr / bias_correction1) * (exp_avg / denom)
