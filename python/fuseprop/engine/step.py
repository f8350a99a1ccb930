"""THE per-layer training step: forward, loss, backward, penalties, clipping, checks, update.

``Sequential.train_step`` (when no native plan takes the step), ``fit`` (with penalties, clipping or a
model the plans do not take) and ``DataParallel`` (with its all-reduce) all run this one function, so
the checks are the same everywhere:

- a non-finite loss raises FloatingPointError before the backward (after the all-reduce with
  DataParallel, which sees the global loss only then), and the weights are not updated;
- a non-finite gradient (after penalties and clipping: what the update would use) raises the same
  way, naming the parameter;
- after the update (written in place), a non-finite weight raises, naming it: the weights were
  overwritten, and the message says so.

What differs between the callers is added through ``StepHooks``; the default hooks do nothing.
The step talks to the model through the module protocol only (``zero_grad``, ``__call__``,
``_backward(grad, need_input_grad, done)``, ``named_parameters``) and imports no layer class.

Penalties act on weights only (parameters with ndim >= 2; biases are not penalised, as keras'
kernel_regularizer), and the returned loss includes them:
  l1: loss += l1 * sum|w|        grad += l1 * sign(w)
  l2: loss += l2 / 2 * sum w**2  grad += l2 * w
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["StepHooks", "per_layer_step", "add_penalties", "clip_grad_norm_", "clip_grad_value_",
           "check_gradients_finite", "check_weights_finite"]


class StepHooks:
    """What a caller adds to the per-layer step, one method per point of it. The defaults do nothing."""

    #: False: an empty batch is allowed (DataParallel: a rank's part of a short global batch may be empty).
    needs_samples = True
    #: False: the loss is checked only after gradients_ready (DataParallel: the global loss exists only then).
    check_local_loss = True

    def output_gradient(self, grad, out, y, loss):
        """The gradient of the loss with respect to the model's output out (for targets y and the batch's
        loss), before the backward starts; returns the gradient the backward takes."""
        return grad

    #: module_done(module), when set, is called during the backward as soon as module's parameter
    #: gradients are written, from the output back to the input (DataParallel starts all-reduces there).
    module_done = None

    def gradients_ready(self, loss) -> float:
        """After the backward, before penalties and checks: returns the step's loss (DataParallel reduces here)."""
        return loss

    def gradients_final(self):
        """After penalties and clipping, before the checks: the gradients the update will use (fit records norms)."""


_NO_HOOKS = StepHooks()


def per_layer_step(model, x, y, loss_fn, optimizer, *, l1: float = 0.0, l2: float = 0.0, clip_norm=None,
                   clip_value=None, hooks: StepHooks = _NO_HOOKS):
    """One step layer by layer: (loss including penalties, the model's output or None for an empty batch).
    Raises FloatingPointError, without touching the weights, when the loss or a gradient is not finite,
    and, after the fact, when the update made a weight non-finite. A step refused before its update
    (a non-finite loss or gradient, labels out of range, any error) also leaves the buffers as they were:
    the training-mode forward had already moved BatchNorm's running statistics."""
    if np.ndim(x) < 1 or (hooks.needs_samples and len(x) == 0):
        raise ValueError(f"train_step needs a non-empty batch, got x of shape {np.shape(x)}")
    n = len(x)
    buffers = [(b, b.copy()) for b in model.buffers()] if hasattr(model, "buffers") else []
    try:
        model.zero_grad()
        out, value = None, 0.0
        if n:
            out = model(x)
            value = loss_fn(out, y)
            if hooks.check_local_loss:
                _check_loss(value)
            grad = hooks.output_gradient(loss_fn.backward(), out, y, value)
            model._backward(grad, need_input_grad=False, done=hooks.module_done)
        value = hooks.gradients_ready(value)
        if not hooks.check_local_loss:
            _check_loss(value)
        named = list(model.named_parameters())
        value += add_penalties([p for _, p in named], l1, l2)
        if clip_value is not None:
            clip_grad_value_([p for _, p in named], clip_value)
        if clip_norm is not None:
            clip_grad_norm_([p for _, p in named], clip_norm)
        hooks.gradients_final()
        check_gradients_finite(named)
    except BaseException:
        for b, before in buffers:
            np.copyto(b, before)
        raise
    optimizer.step()
    check_weights_finite(named)
    return value, out


def _check_loss(value):
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss is {value}; the weights were not updated")


def check_gradients_finite(named):
    """named: (name, Parameter) pairs. Raises FloatingPointError naming the first non-finite gradient."""
    for name, p in named:
        if not np.isfinite(p.grad).all():
            raise FloatingPointError(f"the gradient of {name} is not finite; the weights were not updated")


def check_weights_finite(named):
    """After an update: raises FloatingPointError naming the first non-finite weight."""
    for name, p in named:
        if not np.isfinite(p.data).all():
            # The update is written in place: undoing it would cost a copy of every weight per step.
            raise FloatingPointError(f"the optimizer update made {name} non-finite (is the learning rate too "
                                     "large?); the weights were overwritten: reload them from a checkpoint")


def add_penalties(params, l1: float, l2: float) -> float:
    """Add the L1/L2 penalties' gradients to the weights' (in place); returns the penalties' value."""
    penalty = 0.0
    for p in params:
        if p.data.ndim >= 2 and l1:
            p.grad += p.dtype.type(l1) * np.sign(p.data)
            penalty += l1 * float(np.abs(p.data).sum())
        if p.data.ndim >= 2 and l2:
            p.grad += p.dtype.type(l2) * p.data
            penalty += 0.5 * l2 * float(np.dot(p.data.ravel(), p.data.ravel()))
    return penalty


# -- gradient clipping with PyTorch's semantics (in place, on param.grad); fuseprop.nn.utils re-exports them

def _params(parameters) -> list:
    return [parameters] if hasattr(parameters, "grad") else list(parameters)


def clip_grad_norm_(parameters, max_norm: float) -> float:
    """Scale all gradients by max_norm / (total_norm + 1e-6) when that is below 1, where total_norm is
    the L2 norm of all gradients together (as if concatenated). Returns total_norm (before clipping)."""
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    grads = [p.grad for p in _params(parameters)]
    total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clip every gradient element into [-clip_value, clip_value]."""
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for p in _params(parameters):
        np.clip(p.grad, -clip_value, clip_value, out=p.grad)
