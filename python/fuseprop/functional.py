"""The native ops as plain functions on NumPy arrays, forward and backward.

Same names and signatures as :mod:`fuseprop.reference` (see OPS_SPEC.md in the source tree).
These functions are strict, like the kernels under them: floating-point arrays must be float32 or
float64 (one dtype per call), C-contiguous and aligned; arrays updated in place (``c``,
``grad_weight``, ``grad_bias``, optimizer state) must also be writeable and must not overlap the
inputs. Anything else raises ``TypeError`` / ``ValueError`` naming the argument, and nothing is
written. The one conversion made here is explicit and harmless: integer class labels of any
integer dtype become a new int64 array.
"""
from __future__ import annotations

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


def mse_loss(pred, target, reduction="mean"):
    """(loss, grad_pred) of the squared error, averaged over all elements for "mean"."""
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
