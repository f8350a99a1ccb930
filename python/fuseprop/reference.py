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


# ---------------------------------------------------------------------------------------------
# normalisation. Batch norm: x (N, C, *spatial), statistics per channel over every other axis (n values).
# Layer norm: x (*, normalized_shape), statistics over the trailing axes (D values) per leading index.
# Both: xhat = (x - mean) * invstd with invstd = 1/sqrt(var + eps) (biased var); y = xhat * w + b.
# Backward, with g = dy * w the gradient reaching xhat, when mean and var are the group's own statistics:
#   d var / d x_i = 2 (x_i - mean) / n, d mean / d x_i = 1/n, so
#   dx = invstd * (g - mean(g) - xhat * mean(g * xhat));   dw = sum(dy * xhat), db = sum(dy).


def _accumulate(given, value):
    """value, added into given (in place) when given."""
    if given is None:
        return value
    given += value
    return given


def _per_channel(v, ndim):
    """A (C,) vector shaped to broadcast along axis 1 of an ndim-D array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Returns (y, save_mean, save_invstd). training: the batch's statistics, and running_mean /
    running_var (when given) updated in place as PyTorch: running = (1 - momentum) running + momentum stat,
    with the unbiased variance var * n/(n-1). Otherwise the running statistics."""
    axes = (0,) + tuple(range(2, x.ndim))
    n = math.prod(x.shape[a] for a in axes)
    if training:
        if n == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        if n == 0:  # an empty batch: no statistics, running ones left alone (PyTorch)
            mean = var = np.full(x.shape[1], np.nan)
        else:
            mean = x.mean(axis=axes)
            var = ((x - _per_channel(mean, x.ndim)) ** 2).mean(axis=axes)
            if running_mean is not None:
                running_mean[...] = (1 - momentum) * running_mean + momentum * mean
                running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm_forward: evaluation needs running_mean and running_var")
        mean, var = running_mean.copy(), running_var.copy()
    invstd = 1 / np.sqrt(var + eps)
    y = (x - _per_channel(mean, x.ndim)) * _per_channel(invstd, x.ndim)
    if weight is not None:
        y = y * _per_channel(weight, x.ndim)
    if bias is not None:
        y = y + _per_channel(bias, x.ndim)
    return y, mean, invstd


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training, need_grad_x=True, grad_weight=None,
                        grad_bias=None):
    """Returns (grad_x or None, grad_weight or None, grad_bias or None). training: through the batch
    statistics (above); otherwise they are constants and grad_x = grad_y * w * invstd. Given gradients
    are accumulated into; without them they are None when weight is None."""
    axes = (0,) + tuple(range(2, x.ndim))
    n = math.prod(x.shape[a] for a in axes)
    invstd = _per_channel(save_invstd, x.ndim)
    xhat = (x - _per_channel(save_mean, x.ndim)) * invstd
    sum_dy, sum_dy_xhat = grad_y.sum(axis=axes), (grad_y * xhat).sum(axis=axes)
    grad_x = None
    if need_grad_x:
        w = 1.0 if weight is None else _per_channel(weight, x.ndim)
        grad_x = grad_y * w * invstd
        if training and n > 0:
            grad_x = w * invstd * (grad_y - _per_channel(sum_dy, x.ndim) / n
                                   - xhat * _per_channel(sum_dy_xhat, x.ndim) / n)
    if weight is not None or grad_weight is not None:
        grad_weight = _accumulate(grad_weight, sum_dy_xhat)
    if weight is not None or grad_bias is not None:
        grad_bias = _accumulate(grad_bias, sum_dy)
    return grad_x, grad_weight, grad_bias


def _layer_axes(x, normalized_shape):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"layer norm: x of shape {x.shape} does not end in normalized_shape {shape}")
    return tuple(range(x.ndim - len(shape), x.ndim)), math.prod(shape)


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Returns (y, mean, rstd), mean and rstd of shape x.shape[:-len(normalized_shape)]."""
    axes, d = _layer_axes(x, normalized_shape)
    lead = x.shape[:x.ndim - len(axes)]
    if d == 0:  # the statistics of nothing
        mean = rstd = np.full(lead, np.nan)
    else:
        mean = np.asarray(x.mean(axis=axes))
        var = np.asarray(((x - mean.reshape(lead + (1,) * len(axes))) ** 2).mean(axis=axes))
        rstd = np.asarray(1 / np.sqrt(var + eps))
    y = (x - mean.reshape(lead + (1,) * len(axes))) * rstd.reshape(lead + (1,) * len(axes))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layer_norm_backward(grad_y, x, normalized_shape, weight, mean, rstd, need_grad_x=True, grad_weight=None,
                        grad_bias=None):
    """Returns (grad_x or None, grad_weight or None, grad_bias or None), the gradients as batch_norm_backward's."""
    axes, d = _layer_axes(x, normalized_shape)
    lead = x.shape[:x.ndim - len(axes)]
    r = rstd.reshape(lead + (1,) * len(axes))
    xhat = (x - mean.reshape(lead + (1,) * len(axes))) * r
    grad_x = None
    if need_grad_x:
        g = grad_y if weight is None else grad_y * weight
        grad_x = np.zeros_like(x)
        if d > 0:
            grad_x = r * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    lead_axes = tuple(range(len(lead)))
    if weight is not None or grad_weight is not None:
        grad_weight = _accumulate(grad_weight, (grad_y * xhat).sum(axis=lead_axes))
    if weight is not None or grad_bias is not None:
        grad_bias = _accumulate(grad_bias, grad_y.sum(axis=lead_axes))
    return grad_x, grad_weight, grad_bias
