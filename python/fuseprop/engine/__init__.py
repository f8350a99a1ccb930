"""How one training step runs: the per-layer step, and the native plans that run the whole step in one call.

- ``protocol``: how layers, losses and optimizers describe themselves to the plans (the plans import
  none of their classes), and the chain of segments a plan is compiled from;
- ``step``: THE per-layer step (forward, loss, backward, penalties, clipping, checks, update) with
  hooks, used by ``Sequential.train_step``, ``fit`` and ``DataParallel``;
- ``plan_step``: what the CPU and GPU plans share (the parameter list, the optimizer state they follow);
- ``cpu_plan.FusedStep`` (``_C.TrainPlan``) and ``cuda_plan.CudaStep`` (``_C.CudaTrainPlan``).

The engine sits below the layers (``fuseprop.nn``), losses, optimizers and the training loop: it
imports only ``_C``, ``cuda``, ``functional`` and ``_arrays``.
"""
from __future__ import annotations

from .cpu_plan import FusedStep
from .cuda_plan import CudaStep
from .protocol import NativeLayer, NativeOptimizer, compile_chain, plan_layers, segments
from .step import StepHooks, per_layer_step

__all__ = ["FusedStep", "CudaStep", "NativeLayer", "NativeOptimizer", "compile_chain", "plan_layers", "segments",
           "StepHooks", "per_layer_step"]
