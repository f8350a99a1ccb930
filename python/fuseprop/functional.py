"""The native ops as plain functions on NumPy arrays, forward and backward.

Same names and signatures as :mod:`fuseprop.reference` (see OPS_SPEC.md in the source tree), but for
``mse_loss_with_grad`` (the reference's ``mse_loss``): ``mse_loss`` here is torch.nn.functional's, one of
the PyTorch-named functions at the end of this module.
These functions are strict, like the kernels under them: floating-point arrays must be float32 or
float64 (one dtype per call), C-contiguous and aligned; arrays updated in place (``c``,
``grad_weight``, ``grad_bias``, optimizer state,
``running_mean`` / ``running_var``) must also be writeable and must not overlap the
inputs. Anything else raises ``TypeError`` / ``ValueError`` naming the argument, and nothing is
written. The one conversion made here is explicit and harmless: integer class labels of any
integer dtype become a new int64 array.
"""
from __future__ import annotations

import operator

import numpy as np

from . import _C

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh")


def matmul(a, b, trans_a=False, trans_b=False, c=None, alpha=1.0, beta=0.0):
    """alpha * op(a) @ op(b) + beta * c; op(a) (M,K), op(b) (K,N). With ``c``, written into c in place."""
    return _C.matmul(a, b, trans_a, trans_b, c, alpha, beta)


def activation_forward(x, activation, negative_slope=0.01):
    """y = act(x) elementwise, any shape."""
    return _C.activation_forward(x, activation, negative_slope)


def activation_backward(grad_y, x, y, activation, negative_slope=0.01):
    """grad_x = grad_y * act'(x); x is the forward input, y its output."""
    return _C.activation_backward(grad_y, x, y, activation, negative_slope)


def softmax_forward(x):
    """Softmax over the last axis of x (B, C)."""
    return _C.softmax_forward(x)


def softmax_backward(grad_y, y):
    """grad_x = y * (grad_y - sum(grad_y * y)) per row; y is the softmax output."""
    return _C.softmax_backward(grad_y, y)


def log_softmax_forward(x):
    """x - logsumexp(x) over the last axis of x (B, C)."""
    return _C.log_softmax_forward(x)


def log_softmax_backward(grad_y, y):
    """grad_x = grad_y - exp(y) * sum(grad_y) per row; y is the log-softmax output."""
    return _C.log_softmax_backward(grad_y, y)


def linear_forward(x, weight, bias=None, activation="identity", negative_slope=0.01):
    """(y, z): z = x @ weight.T + bias, y = act(z), in one pass. x (B,IN), weight (OUT,IN), bias (OUT,)."""
    return _C.linear_forward(x, weight, bias, activation, negative_slope)


def linear_backward(grad_y, x, weight, z, y, activation="identity", negative_slope=0.01, has_bias=True,
                    need_grad_x=True, grad_weight=None, grad_bias=None):
    """(grad_x | None, grad_weight, grad_bias | None) of the fused linear layer.

    dz = grad_y * act'(z); grad_weight = dz.T @ x; grad_bias = dz.sum(0); grad_x = dz @ weight.
    Given ``grad_weight`` / ``grad_bias`` arrays are accumulated into (+=) in place and returned.
    ``z`` and ``y`` may be None when the activation is the identity.
    """
    return _C.linear_backward(grad_y, x, weight, z, y, activation, negative_slope, has_bias, need_grad_x,
                              grad_weight, grad_bias)


def _pair(value):
    """A window argument as _C takes it: an int (or NumPy integer) -> (value, value), a pair of them -> a tuple of
    ints. Anything else passes through for _C to reject with a message that names the argument."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    return value


def _size(input_size):
    """(H, W) as two Python ints where it is a pair (NumPy integers too); anything else goes to _C unchanged."""
    return _pair(input_size) if isinstance(input_size, (tuple, list)) else input_size


def conv2d_forward(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), activation="identity",
                   negative_slope=0.01):
    """(y, z): z = conv2d(x, weight) + bias as PyTorch's (cross-correlation, zero padding), y = act(z), in one pass.

    x (N,C,H,W), weight (O,C,kh,kw), bias (O,) or None; y, z (N,O,Ho,Wo) with Ho = (H + 2 ph - dh (kh-1) - 1) // sh + 1.
    stride, padding, dilation: an int or a pair (height, width).
    """
    return _C.conv2d_forward(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), activation,
                             negative_slope)


def conv2d_backward(grad_y, x, weight, z, y, stride=(1, 1), padding=(0, 0), dilation=(1, 1), activation="identity",
                    negative_slope=0.01, has_bias=True, need_grad_x=True, grad_weight=None, grad_bias=None):
    """(grad_x | None, grad_weight, grad_bias | None) of conv2d_forward, as linear_backward.

    dz = grad_y * act'(z); grad_weight (O,C,kh,kw) and grad_bias (O,) (the sum of dz over N, Ho, Wo) are
    accumulated (+=) into given arrays in place and returned; grad_x (N,C,H,W). ``z`` and ``y`` may be None
    when the activation is the identity.
    """
    return _C.conv2d_backward(grad_y, x, weight, z, y, _pair(stride), _pair(padding), _pair(dilation), activation,
                              negative_slope, has_bias, need_grad_x, grad_weight, grad_bias)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """(y, indices): the max of each window of x (N,C,H,W) (padding is -inf) and its flat index h*W + w in the
    input plane (int64), as PyTorch's max_pool2d(return_indices=True). stride None: kernel_size."""
    return _C.max_pool2d_forward(x, _pair(kernel_size), None if stride is None else _pair(stride), _pair(padding))


def max_pool2d_backward(grad_y, indices, input_size):
    """grad_x (N,C,H,W), input_size = (H, W): grad_y scatter-added at max_pool2d_forward's indices."""
    return _C.max_pool2d_backward(grad_y, indices, _size(input_size))


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """The mean of each window of x (N,C,H,W), as PyTorch's avg_pool2d: over kh*kw positions with
    count_include_pad (padding counts as 0), else over the positions inside the input. stride None: kernel_size."""
    return _C.avg_pool2d_forward(x, _pair(kernel_size), None if stride is None else _pair(stride), _pair(padding),
                                 count_include_pad)


def avg_pool2d_backward(grad_y, input_size, kernel_size, stride=None, padding=0, count_include_pad=True):
    """grad_x (N,C,H,W), input_size = (H, W): each grad_y / its window's divisor added over the window."""
    return _C.avg_pool2d_backward(grad_y, _size(input_size), _pair(kernel_size), None if stride is None else _pair(stride),
                                  _pair(padding), count_include_pad)


def as_labels(labels, name="labels"):
    """Integer class labels as a C-contiguous int64 array (a new array only when needed)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integer class indices, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds a value too large to be a class index: {labels.max()}")
    return np.require(labels, np.int64, ["C_CONTIGUOUS", "ALIGNED"])  # keeps the shape, even 0-d


def cross_entropy_loss(logits, labels, label_smoothing=0.0, reduction="mean"):
    """(loss, grad_logits) of softmax cross-entropy from logits (B,C) and integer labels (B,)."""
    return _C.cross_entropy_loss(logits, as_labels(labels), label_smoothing, reduction)


def mse_loss_with_grad(pred, target, reduction="mean"):
    """(loss, grad_pred) of the squared error, averaged over all elements for "mean". (fuseprop.reference
    calls it mse_loss; here that name is torch's, below, which returns the loss alone.)"""
    return _C.mse_loss(pred, target, reduction)


def bce_with_logits_loss(logits, target, reduction="mean"):
    """(loss, grad_logits) of binary cross-entropy on logits, averaged over all elements for "mean"."""
    return _C.bce_with_logits_loss(logits, target, reduction)


def sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
             weight_decay=0.0, step=1):
    """PyTorch's SGD update, in place on param and momentum_buffer (initialised from the update when step == 1)."""
    _C.sgd_step(param, grad, momentum_buffer, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                weight_decay=weight_decay, step=step)


def adam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, decoupled_weight_decay=False):
    """PyTorch's Adam (or, decoupled, AdamW) update, in place; step counts from 1 and includes this update."""
    _C.adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                 weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay)


# -- normalisation: batch norm over every axis but the channels' (axis 1), layer norm over the trailing axes -----

def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5,
                       activation="identity", negative_slope=0.01):
    """(y, save_mean, save_invstd) of batch normalisation; x (N, C) or (N, C, *spatial), statistics per channel.

    weight, bias (C,) or None (no affine); running_mean, running_var (C,) or None (not tracked).
    training: y = (x - mean) * invstd * weight + bias with the batch mean and invstd = 1/sqrt(var + eps)
    (biased var), saved for backward; given running statistics move in place to (1 - momentum) * running
    + momentum * stat, the variance's stat unbiased (n/(n-1)), as PyTorch. One value per channel is an
    error (as PyTorch); an empty batch gives an empty y, NaN save_* and leaves the running statistics.
    Otherwise the running statistics (required) normalise, and are what save_* return.
    momentum is a float in [0, 1]: PyTorch's momentum=None (a cumulative average) is the caller's
    1 / num_batches_tracked. activation: y = activation(the normalised x), in the same pass over the data.
    """
    if momentum is None:
        raise TypeError("momentum must be a float in [0, 1]; for PyTorch's momentum=None (a cumulative average) "
                        "pass 1 / num_batches_tracked")
    return _C.batch_norm_forward(x, weight, bias, running_mean, running_var, bool(training), float(momentum),
                                 float(eps), activation, negative_slope)


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training, need_grad_x=True, grad_weight=None,
                        grad_bias=None, y=None, bias=None, activation="identity", negative_slope=0.01):
    """(grad_x | None, grad_weight | None, grad_bias | None) of batch normalisation.

    xhat = (x - save_mean) * save_invstd; grad_weight = sum(grad_y * xhat), grad_bias = sum(grad_y) per
    channel. training: grad_x = invstd * w / n * (n * grad_y - sum(grad_y) - xhat * sum(grad_y * xhat))
    (the batch statistics depend on x); otherwise grad_x = grad_y * w * invstd. Given grad_weight /
    grad_bias are accumulated into (+=) in place and returned; without them they are new arrays when
    weight is given and None when it is None (no affine). With an activation (the forward's), grad_y is the
    gradient of its output y (required, the forward's), and grad_y * activation'(z) takes its place above, z
    the normalised x recomputed with the forward's bias (pass it: None means there was none).
    """
    return _C.batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, bool(training), need_grad_x,
                                  grad_weight, grad_bias, y, bias, activation, negative_slope)


def _normalized_shape(normalized_shape):
    """torch's normalized_shape: an int or a sequence of ints, as a tuple."""
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    try:
        return tuple(operator.index(d) for d in normalized_shape)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}") from None


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(y, mean, rstd) of layer normalisation over the last len(normalized_shape) axes of x, whose shape
    they must have; weight, bias of shape normalized_shape or None. y = (x - mean) * rstd * weight + bias
    with rstd = 1/sqrt(var + eps) (biased var); mean, rstd have shape x.shape[:-len(normalized_shape)]."""
    return _C.layer_norm_forward(x, _normalized_shape(normalized_shape), weight, bias, float(eps))


def layer_norm_backward(grad_y, x, normalized_shape, weight, mean, rstd, need_grad_x=True, grad_weight=None,
                        grad_bias=None):
    """(grad_x | None, grad_weight | None, grad_bias | None) of layer normalisation.

    With g = grad_y * weight and xhat = (x - mean) * rstd, per normalised group of D values:
    grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)); grad_weight = sum over the leading axes of
    grad_y * xhat, grad_bias of grad_y. Given gradients accumulate in place, as batch_norm_backward's.
    """
    return _C.layer_norm_backward(grad_y, x, _normalized_shape(normalized_shape), weight, mean, rstd, need_grad_x,
                                  grad_weight, grad_bias)



# -- recurrent layers: one layer, one direction, batch-first, through time ---------------------------------------

def recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """(y, h_n, c_n, saved) of one recurrent layer over a batch of sequences, PyTorch's cells and gate order.

    cell "rnn" (nonlinearity "tanh" or "relu"), "lstm" or "gru"; G = 1, 4 (input, forget, cell, output) or
    3 (reset, update, new) gates per hidden unit. x (B,T,I), T >= 1; h0 (B,H) or None (zeros); c0 (B,H) or None,
    lstm only; w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,) or both None.
    rnn  h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    lstm i, f, g, o = sig, sig, tanh, sig of the G*H pre-activations; c_t = f c_{t-1} + i g; h_t = o tanh(c_t)
    gru  r, z = sig(...); n = tanh(W_in x_t + b_in + r (W_hn h_{t-1} + b_hn)); h_t = (1 - z) n + z h_{t-1}
    y (B,T,H) holds every h_t, h_n (B,H) the last; c_n (B,H) the last c_t (lstm; None otherwise). saved is
    the record recurrent_backward needs (an opaque 1-D array, kept with y).
    """
    return _C.recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, nonlinearity)


def recurrent_backward(cell, grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_hh, y, saved, nonlinearity="tanh",
                       bptt_steps=0):
    """(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh) of recurrent_forward: backpropagation
    through time, as new arrays.

    grad_y (B,T,H) or None (zeros: only the final state has a gradient); grad_h_n (B,H) or None; grad_c_n (B,H)
    or None, lstm only. The other arguments are the forward's, with its y and saved (a saved from another
    forward, or a y changed in place since, is refused). grad_c0 is None but for lstm; grad_b_* are None
    without biases; grad_h0 (and grad_c0) are the gradients of the initial state, zeros or given.
    bptt_steps k > 0 truncates the backpropagation as a PyTorch loop over chunks [0, k), [k, 2k), ... that
    detaches the carried state between them: no gradient flows from step t into h_{t-1} (nor c_{t-1}) when
    t > 0 is a multiple of k, so grad_h0 and grad_c0 come from the first chunk alone, grad_h_n and grad_c_n
    reach the last chunk alone, and every step still adds its own terms to grad_x and the weight gradients.
    bptt_steps 0: full backpropagation through time.
    """
    if isinstance(bptt_steps, np.integer):
        bptt_steps = int(bptt_steps)
    return _C.recurrent_backward(cell, grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_hh, y, saved,
                                 nonlinearity, bptt_steps)

# -- torch.nn.functional's names, with PyTorch's arguments and defaults, on NumPy arrays ------------------

TORCH_NAMES = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax", "log_softmax", "linear", "cross_entropy",
               "mse_loss", "binary_cross_entropy_with_logits")
#
# Forward only (NumPy has no autograd; the explicit *_forward / *_backward functions above are the
# differentiable form). Unlike the strict functions above they take any float32 or float64 ndarray (a
# strided view is copied into a contiguous one) and return new arrays; losses return a NumPy scalar of
# the input's dtype (as torch returns a 0-d tensor), or per-element losses for reduction="none".

def _floats(a, name):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    return np.require(a, None, ["C_CONTIGUOUS", "ALIGNED"])


def _like(a, b, name, like):
    b = _floats(b, name)
    if b.dtype != a.dtype:
        raise TypeError(f"{name} must have {like}'s dtype {a.dtype}, got {b.dtype}")
    return b


def _elementwise(input, activation, negative_slope=0.01, inplace=False):
    x = _floats(input, "input")
    y = _C.activation_forward(x, activation, negative_slope)
    if not inplace:
        return y
    if x is not input or not input.flags.writeable:
        raise ValueError("inplace=True needs input to be a writeable, C-contiguous array (the result is written into it)")
    np.copyto(input, y)
    return input


def relu(input, inplace=False):
    """max(input, 0) elementwise (torch.nn.functional.relu)."""
    return _elementwise(input, "relu", inplace=inplace)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """input where positive, negative_slope * input elsewhere (torch.nn.functional.leaky_relu)."""
    return _elementwise(input, "leaky_relu", float(negative_slope), inplace)


def sigmoid(input):
    """1 / (1 + exp(-input)) elementwise (torch.sigmoid)."""
    return _elementwise(input, "sigmoid")


def tanh(input):
    """tanh(input) elementwise (torch.tanh)."""
    return _elementwise(input, "tanh")


def gelu(input, approximate="none"):
    """GELU, exact (approximate="none") or with the tanh approximation (torch.nn.functional.gelu)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _elementwise(input, "gelu" if approximate == "none" else "gelu_tanh")


def _over_dim(kernel, input, dim, dtype, name):
    x = _floats(input, "input")
    if dtype is not None:
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        x = x.astype(dtype)
    if dim is None:
        if x.ndim > 2:  # torch's implicit choice there (dim 0 for 3-D) surprises: ask for it
            raise ValueError(f"{name} of a {x.ndim}-D input needs dim")
        dim = -1
    if x.ndim == 0:
        raise ValueError(f"{name} needs an input of at least 1 dimension, got shape {x.shape}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be in [{-x.ndim}, {x.ndim - 1}] for input of shape {x.shape}, got {dim}")
    moved = np.ascontiguousarray(np.moveaxis(x, dim, -1))  # the kernels work over the last axis of rows
    out = kernel(moved.reshape(-1, moved.shape[-1]) if moved.size else moved.reshape(0, moved.shape[-1]))
    return np.moveaxis(out.reshape(moved.shape), -1, dim)


def softmax(input, dim=None, dtype=None):
    """exp(input) / sum(exp(input)) along dim (torch.nn.functional.softmax; dim None: the last axis of a
    1-D or 2-D input). dtype: compute in that dtype (input is cast first)."""
    return _over_dim(_C.softmax_forward, input, dim, dtype, "softmax")


def log_softmax(input, dim=None, dtype=None):
    """input - logsumexp(input) along dim (torch.nn.functional.log_softmax; defaults as softmax)."""
    return _over_dim(_C.log_softmax_forward, input, dim, dtype, "log_softmax")


def linear(input, weight, bias=None):
    """input @ weight.T + bias: input (*, in_features), weight (out_features, in_features), bias
    (out_features,) or None (torch.nn.functional.linear)."""
    x = _floats(input, "input")
    w = _like(x, weight, "weight", "input")
    b = None if bias is None else _like(x, bias, "bias", "input")
    if x.ndim == 0:
        raise ValueError("input must have at least 1 dimension (its last is in_features), got a 0-d array")
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must have shape (out_features, {x.shape[-1]}) for input of shape {x.shape}, "
                         f"got {w.shape}")
    y, _ = _C.linear_forward(x.reshape(-1, x.shape[-1]), w, b, "identity", 0.01)
    return y.reshape(*x.shape[:-1], w.shape[0])


def _input_and_target(input, target):
    """(input, target) of an elementwise loss: float arrays of one dtype and one shape."""
    x = _floats(input, "input")
    t = _like(x, target, "target", "input")
    if t.shape != x.shape:
        raise ValueError(f"target must have input's shape {x.shape}, got {t.shape}")
    return x, t


def _reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits input (N, C) against class indices target (N,)
    (torch.nn.functional.cross_entropy). Samples whose target is ignore_index are left out (their loss
    is 0 with reduction="none"); "mean" averages over the others. Class weights are not supported."""
    if weight is not None:
        raise NotImplementedError("cross_entropy: class weights (weight=) are not supported")
    _reduction(reduction)
    logits = _floats(input, "input")
    labels = as_labels(np.asarray(target), "target")
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy takes input (N, C) and target (N,), got {logits.shape} and {labels.shape}")
    keep = labels != ignore_index
    if reduction != "none":
        kept = keep.all()
        loss, _ = _C.cross_entropy_loss(logits if kept else np.ascontiguousarray(logits[keep]),
                                        labels if kept else np.ascontiguousarray(labels[keep]),
                                        label_smoothing, reduction)
        return logits.dtype.type(loss if keep.any() or reduction == "sum" else np.nan)  # torch: mean of nothing
    logp = _C.log_softmax_forward(logits)
    rows = np.arange(len(labels))[keep]
    out = np.zeros(len(labels), logits.dtype)
    picked = -logp[rows, labels[keep]]
    out[keep] = (1 - label_smoothing) * picked - label_smoothing * logp[keep].mean(axis=1)
    return out


def mse_loss(input, target, reduction="mean"):
    """Squared error of input against target of the same shape (torch.nn.functional.mse_loss)."""
    _reduction(reduction)
    pred, t = _input_and_target(input, target)
    if reduction == "none":
        return (pred - t) ** 2
    return pred.dtype.type(_C.mse_loss(pred, t, reduction)[0])


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """Binary cross-entropy of logits input against targets in [0, 1] of the same shape, with the sigmoid
    folded in stably (torch.nn.functional.binary_cross_entropy_with_logits). weight and pos_weight are
    not supported."""
    if weight is not None or pos_weight is not None:
        raise NotImplementedError("binary_cross_entropy_with_logits: weight= and pos_weight= are not supported")
    _reduction(reduction)
    z, t = _input_and_target(input, target)
    if reduction == "none":
        return np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    return z.dtype.type(_C.bce_with_logits_loss(z, t, reduction)[0])
