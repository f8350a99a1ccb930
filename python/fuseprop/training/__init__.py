"""The training loop, shaped like keras: ``model.fit`` / ``evaluate`` / ``predict``, callbacks
(EarlyStopping, learning-rate schedules) and regularisation (L1, L2, gradient clipping).

Which step fit runs. Each step is ONE native call (Sequential's fused train_step) whenever nothing
per-layer is needed: a Sequential the fused plan accepts (see fuseprop.engine), l1 == l2 == 0
and no clip_grad_value. Augmentation (it transforms the batch before the step), learning-rate
schedules (they change ``lr`` only), the optimizer's own ``weight_decay`` and clip_grad_norm (the
native step scales the gradients by the global norm between backward and update) keep the step
fused. Dropout, l1, l2 and clip_grad_value take the per-layer path: forward, loss, backward,
penalties, clipping and ``optimizer.step()`` around the same kernels.

On the CPU, when the fused step runs and nothing needs Python per batch (no augment, no grad_norm_history,
no callback with its own on_batch_end except the built-in LR schedules), an epoch runs as a few native calls
of many steps each (native_epochs.NativeEpochs, TrainPlan.run_batches): the same order, steps, lrs, losses and failures
as the per-batch loop, bit for bit, with no Python between batches.

With distributed=..., every step runs layer by layer on each rank's part of the global batch, with the
gradients all-reduced between backward and update (fuseprop.distributed); penalties and clipping apply
to the averaged gradients.

Accuracy (CrossEntropyLoss) comes from the step's own logits, with no second forward: the fused plan
counts argmax == label natively (``train_plan.correct``); the per-layer path counts on its logits.

Penalties act on weights only (parameters with ndim >= 2; biases are not penalised, as keras'
kernel_regularizer), and the reported loss includes them:
  l1: loss += l1 * sum|w|        grad += l1 * sign(w)
  l2: loss += l2 / 2 * sum w**2  grad += l2 * w   (coupled decay: SGD's or Adam's weight_decay=l2, on weights only)
For decoupled decay, or to keep the fused step, use the optimizer's weight_decay (AdamW) instead.

Reported losses are per-sample means over the epoch (batch losses weighted by batch size).

The package: ``callbacks`` (History, Callback, EarlyStopping), ``schedules`` (learning-rate schedules),
``loop`` (fit, evaluate, predict), ``native_epochs`` (fit's epochs as native runs of many steps). The
step itself is the engine's (fuseprop.engine.step, shared with Sequential.train_step and DataParallel).
"""
from __future__ import annotations

from .callbacks import Callback, EarlyStopping, History
from .loop import evaluate, fit, predict
from .schedules import CosineAnnealingLR, LinearWarmup, LRScheduler, StepLR

__all__ = ["History", "Callback", "EarlyStopping", "LRScheduler", "StepLR", "CosineAnnealingLR", "LinearWarmup",
           "fit", "evaluate", "predict"]
