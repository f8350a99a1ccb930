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
# conv2d and 2-D pooling: x (N,C,H,W) NCHW; window arguments are an int or a pair (height, width).
# Each loops over the kernel offsets (i, j): offset (i, j) of every window is one strided slice of the
# padded input, so a window op is a sum (or max) of kh*kw slices, and its gradient adds back through them.


def _pair(value):
    return (value, value) if isinstance(value, (int, np.integer)) else tuple(value)


def _tap(xp, i, j, out_h, out_w, stride, dilation=(1, 1)):
    """The slice of padded xp (N,C,Hp,Wp) that kernel offset (i, j) reads for every output: (N,C,out_h,out_w)."""
    r0, c0 = i * dilation[0], j * dilation[1]
    return xp[:, :, r0:r0 + stride[0] * (out_h - 1) + 1:stride[0], c0:c0 + stride[1] * (out_w - 1) + 1:stride[1]]


def _out_size(size, kernel, stride, padding, dilation=1):
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"the window {dilation * (kernel - 1) + 1} is larger than the padded input {size + 2 * padding}")
    return out


def conv2d_forward(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), activation="identity",
                   negative_slope=0.01):
    """z[n,o] = sum over c, i, j of weight[o,c,i,j] * xpad[n, c, oh*sh + i*dh, ow*sw + j*dw] + bias[o];
    y = act(z). weight (O,C,kh,kw); y, z (N,O,Ho,Wo). Returns (y, z)."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, _, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    ho, wo = (_out_size(h, kh, stride[0], padding[0], dilation[0]), _out_size(w, kw, stride[1], padding[1], dilation[1]))
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    z = np.zeros((n, out_channels, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            z += np.einsum("nchw,oc->nohw", _tap(xp, i, j, ho, wo, stride, dilation), weight[:, :, i, j])
    if bias is not None:
        z += bias[None, :, None, None]
    return activation_forward(z, activation, negative_slope), z


def conv2d_backward(grad_y, x, weight, z, y, stride=(1, 1), padding=(0, 0), dilation=(1, 1), activation="identity",
                    negative_slope=0.01, has_bias=True, need_grad_x=True, grad_weight=None, grad_bias=None):
    """Returns (grad_x or None, grad_weight, grad_bias or None), as linear_backward.

    dz = grad_y * act'(z); grad_weight[o,c,i,j] = sum over n, oh, ow of dz * (the slice offset (i, j) read);
    grad_bias[o] = dz summed over n, oh, ow; grad_x adds dz . weight[:, :, i, j] back through each slice.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    dz = grad_y if activation == "identity" else activation_backward(grad_y, z, y, activation, negative_slope)
    _, _, h, w = x.shape
    _, _, kh, kw = weight.shape
    ho, wo = dz.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    grad_xp = np.zeros_like(xp)
    gw = np.zeros_like(weight)
    for i in range(kh):
        for j in range(kw):
            gw[:, :, i, j] = np.einsum("nohw,nchw->oc", dz, _tap(xp, i, j, ho, wo, stride, dilation))
            _tap(grad_xp, i, j, ho, wo, stride, dilation)[...] += np.einsum("nohw,oc->nchw", dz, weight[:, :, i, j])
    if grad_weight is None:
        grad_weight = gw
    else:
        grad_weight += gw
    if not has_bias:
        grad_bias = None
    elif grad_bias is None:
        grad_bias = dz.sum(axis=(0, 2, 3))
    else:
        grad_bias += dz.sum(axis=(0, 2, 3))
    grad_x = grad_xp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w].copy() if need_grad_x else None
    return grad_x, grad_weight, grad_bias


def _pool_geometry(size, kernel_size, stride, padding):
    kernel = _pair(kernel_size)
    stride = kernel if stride is None else _pair(stride)
    padding = _pair(padding)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel}")
    out = tuple(_out_size(size[d], kernel[d], stride[d], padding[d]) for d in range(2))
    return kernel, stride, padding, out


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """(y, indices): y = the max of each window (padding is -inf), indices = its flat index h*W + w in the
    input plane (int64). As PyTorch: the first max wins a tie (offsets in row-major order), a NaN wins over
    any number (the window's last NaN), and a window of -inf points at its first position inside the input."""
    n, c, h, w = x.shape
    (kh, kw), stride, padding, (ho, wo) = _pool_geometry((h, w), kernel_size, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=-np.inf)
    rows = np.arange(ho)[:, None] * stride[0] - padding[0]  # each window's first input row and column
    cols = np.arange(wo)[None, :] * stride[1] - padding[1]
    best = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    indices = np.broadcast_to(np.maximum(rows, 0) * w + np.maximum(cols, 0), best.shape).astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            v = _tap(xp, i, j, ho, wo, stride)
            take = (v > best) | np.isnan(v)
            best = np.where(take, v, best)
            indices = np.where(take, (rows + i) * w + (cols + j), indices)
    return best, indices


def max_pool2d_backward(grad_y, indices, input_size):
    """grad_x (N,C,H,W) = 0, then grad_y added at indices (a window's max collects every gradient sent to it)."""
    n, c = grad_y.shape[:2]
    h, w = input_size
    grad_x = np.zeros((n * c, h * w), dtype=grad_y.dtype)
    planes, positions = np.arange(n * c)[:, None], grad_y.shape[2] * grad_y.shape[3]
    np.add.at(grad_x, (planes, indices.reshape(n * c, positions)), grad_y.reshape(n * c, positions))
    return grad_x.reshape(n, c, h, w)


def _avg_divisor(size, kernel, stride, padding, out, count_include_pad, dtype):
    """(Ho,Wo): kh*kw, or how many of each window's positions lie inside the input."""
    if count_include_pad:
        return np.full(out, kernel[0] * kernel[1], dtype=dtype)
    inside = np.pad(np.ones((1, 1) + tuple(size), dtype=dtype), ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    return sum(_tap(inside, i, j, *out, stride) for i in range(kernel[0]) for j in range(kernel[1]))[0, 0]


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """y = each window's sum / its divisor (kh*kw with count_include_pad, else its positions inside x)."""
    size = x.shape[2:]
    kernel, stride, padding, out = _pool_geometry(size, kernel_size, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    total = sum(_tap(xp, i, j, *out, stride) for i in range(kernel[0]) for j in range(kernel[1]))
    return total / _avg_divisor(size, kernel, stride, padding, out, count_include_pad, x.dtype)


def avg_pool2d_backward(grad_y, input_size, kernel_size, stride=None, padding=0, count_include_pad=True):
    """grad_x (N,C,H,W): every window's grad_y / divisor added to each of its input positions."""
    h, w = input_size
    kernel, stride, padding, out = _pool_geometry((h, w), kernel_size, stride, padding)
    share = grad_y / _avg_divisor((h, w), kernel, stride, padding, out, count_include_pad, grad_y.dtype)
    grad_xp = np.zeros(grad_y.shape[:2] + (h + 2 * padding[0], w + 2 * padding[1]), dtype=grad_y.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            _tap(grad_xp, i, j, *out, stride)[...] += share
    return grad_xp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w].copy()


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


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5,
                       activation="identity", negative_slope=0.01):
    """Returns (y, save_mean, save_invstd). training: the batch's statistics, and running_mean /
    running_var (when given) updated in place as PyTorch: running = (1 - momentum) running + momentum stat,
    with the unbiased variance var * n/(n-1). Otherwise the running statistics. y = activation(z), z the
    normalised x."""
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
    z = _batch_normalized(x, weight, bias, mean, invstd)
    return activation_forward(z, activation, negative_slope), mean, invstd


def _batch_normalized(x, weight, bias, mean, invstd):
    z = (x - _per_channel(mean, x.ndim)) * _per_channel(invstd, x.ndim)
    if weight is not None:
        z = z * _per_channel(weight, x.ndim)
    if bias is not None:
        z = z + _per_channel(bias, x.ndim)
    return z


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training, need_grad_x=True, grad_weight=None,
                        grad_bias=None, y=None, bias=None, activation="identity", negative_slope=0.01):
    """Returns (grad_x or None, grad_weight or None, grad_bias or None). training: through the batch
    statistics (above); otherwise they are constants and grad_x = grad_y * w * invstd. Given gradients
    are accumulated into; without them they are None when weight is None. With an activation, grad_y is
    its output's gradient: the chain rule through it first (z recomputed with the forward's bias)."""
    axes = (0,) + tuple(range(2, x.ndim))
    n = math.prod(x.shape[a] for a in axes)
    if activation != "identity":
        z = _batch_normalized(x, weight, bias, save_mean, save_invstd)
        grad_y = activation_backward(grad_y, z, y, activation, negative_slope)
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


# ---------------------------------------------------------------------------------------------
# recurrent layers: one layer, one direction, batch-first; PyTorch's cells and gate order. The saved record is a
# tuple of arrays here (the native one is one array in its own layout): each module's backward takes its own's.

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _recurrent_check(cell, nonlinearity, x, c0, grad_c_n=None):
    if cell not in _GATES:
        raise ValueError(f"cell must be 'rnn', 'lstm' or 'gru', got {cell!r}")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if cell != "rnn" and nonlinearity != "tanh":
        raise ValueError(f"nonlinearity 'relu' is for cell 'rnn' only: cell {cell!r} has fixed gate nonlinearities")
    if cell != "lstm" and (c0 is not None or grad_c_n is not None):
        raise ValueError(f"c0 and grad_c_n are for cell 'lstm' only: they must be None for cell {cell!r}")
    if x.ndim != 3 or x.shape[1] == 0:
        raise ValueError(f"x must have at least one time step (B, T, I) with T >= 1, got shape {x.shape}")


def recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """(y, h_n, c_n, saved): see fuseprop.functional.recurrent_forward. saved = (hs, acts, cs): hs (T+1,B,H) holds
    h0 and every step's h; acts the gates after their nonlinearities (lstm (T,B,4H): i, f, g, o; gru (T,B,4H): r, z,
    n and hn = W_hn h + b_hn; rnn: None); cs (T+1,B,H) the lstm's cell states (None otherwise)."""
    _recurrent_check(cell, nonlinearity, x, c0)
    B, T, _ = x.shape
    H = w_hh.shape[1]
    zeros = np.zeros((B, H), x.dtype)
    h = zeros if h0 is None else h0
    c = zeros if c0 is None else c0
    hs, cs, acts = [h], [c], []
    for t in range(T):
        gi = x[:, t] @ w_ih.T + (0 if b_ih is None else b_ih)  # the input's part of every gate
        gh = h @ w_hh.T + (0 if b_hh is None else b_hh)  # the hidden state's part
        if cell == "rnn":
            h = np.tanh(gi + gh) if nonlinearity == "tanh" else np.maximum(gi + gh, 0)
        elif cell == "lstm":
            p = gi + gh
            i, f, g, o = _sigmoid(p[:, :H]), _sigmoid(p[:, H:2 * H]), np.tanh(p[:, 2 * H:3 * H]), _sigmoid(p[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
            acts.append(np.concatenate([i, f, g, o], axis=1))
            cs.append(c)
        else:  # gru
            r = _sigmoid(gi[:, :H] + gh[:, :H])
            z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            hn = gh[:, 2 * H:]  # W_hn h + b_hn: r scales it
            n = np.tanh(gi[:, 2 * H:] + r * hn)
            h = (1 - z) * n + z * h
            acts.append(np.concatenate([r, z, n, hn], axis=1))
        hs.append(h)
    y = np.stack(hs[1:], axis=1)
    saved = (np.stack(hs), np.stack(acts) if acts else None, np.stack(cs) if cell == "lstm" else None)
    return y, h.copy(), c.copy() if cell == "lstm" else None, saved


def recurrent_backward(cell, grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_hh, y, saved, nonlinearity="tanh",
                       bptt_steps=0):
    """(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh): see
    fuseprop.functional.recurrent_backward. Backpropagation through time from the last step to the first: at each
    step the gradient reaching h_t (and c_t) gives the gradients of the gates' pre-activations, from which every
    step adds its terms to the weights' and x_t's gradients and passes the rest back to h_{t-1} (and c_{t-1}),
    except across a cut of the truncated form (t > 0 a multiple of bptt_steps)."""
    _recurrent_check(cell, nonlinearity, x, c0, grad_c_n)
    if isinstance(bptt_steps, (bool, np.bool_)) or not isinstance(bptt_steps, (int, np.integer)) or bptt_steps < 0:
        raise ValueError(f"bptt_steps must be an int >= 0 (0: full backpropagation through time), got {bptt_steps!r}")
    hs, acts, cs = saved
    if not np.array_equal(y[:, -1], hs[-1], equal_nan=True):
        raise ValueError("saved is not the record of the forward that returned y (their last steps differ)")
    B, T, _ = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    grad_x = np.zeros_like(x)
    grad_w_ih, grad_w_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    grad_b_ih = grad_b_hh = None
    if b_hh is not None:
        grad_b_ih, grad_b_hh = np.zeros(w_ih.shape[0], dtype), np.zeros(w_hh.shape[0], dtype)
    dh = np.zeros((B, H), dtype) if grad_h_n is None else grad_h_n.copy()  # reaching h_t from later steps
    dc = np.zeros((B, H), dtype) if grad_c_n is None else grad_c_n.copy()  # reaching c_t (lstm)
    for t in reversed(range(T)):
        if grad_y is not None:
            dh = dh + grad_y[:, t]
        h_prev, a = hs[t], None if acts is None else acts[t]
        if cell == "rnn":
            h = hs[t + 1]
            dp = dh * (1 - h * h) if nonlinearity == "tanh" else dh * (h > 0)  # tanh' = 1 - tanh^2; relu' = [h > 0]
            dgi = dgh = dp
            dh_direct = 0
        elif cell == "lstm":
            i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            tanh_c = np.tanh(cs[t + 1])
            dc = dc + dh * o * (1 - tanh_c ** 2)  # h = o tanh(c)
            do = dh * tanh_c
            di, df, dg = dc * g, dc * cs[t], dc * i  # c = f c_prev + i g
            dgi = dgh = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
            dc = dc * f  # reaching c_{t-1}
            dh_direct = 0
        else:  # gru
            r, z, n, hn = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            dn = dh * (1 - z)  # h = (1 - z) n + z h_prev
            dz = dh * (h_prev - n)
            dpn = dn * (1 - n * n)  # n = tanh(W_in x + b_in + r hn)
            dr = dpn * hn
            dpr, dpz = dr * r * (1 - r), dz * z * (1 - z)
            dgi = np.concatenate([dpr, dpz, dpn], axis=1)  # input side: n's pre-activation
            dgh = np.concatenate([dpr, dpz, dpn * r], axis=1)  # hidden side: hn = W_hn h + b_hn, scaled by r
            dh_direct = dh * z
        grad_x[:, t] = dgi @ w_ih
        grad_w_ih += dgi.T @ x[:, t]
        grad_w_hh += dgh.T @ h_prev
        if b_hh is not None:
            grad_b_ih += dgi.sum(axis=0)
            grad_b_hh += dgh.sum(axis=0)
        dh = dgh @ w_hh + dh_direct  # reaching h_{t-1}
        if bptt_steps and t > 0 and t % bptt_steps == 0:  # the carried state was detached before step t
            dh = np.zeros_like(dh)
            dc = np.zeros_like(dc)
    return (grad_x, dh, dc if cell == "lstm" else None, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)
