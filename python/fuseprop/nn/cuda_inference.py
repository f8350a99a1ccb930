"""Inference on the GPU: a module's chain of layers run forward by a device plan (engine.cuda_plan)."""
from __future__ import annotations

import numpy as np

from .. import cuda
from .._arrays import as_input, generation
from ..engine.cuda_plan import forward_plan
from ..engine.protocol import compile_chain

__all__ = ["cuda_forward"]


def cuda_forward(module, modules, x):
    """The output (a DeviceArray) of modules, a chain the native plans take, run on the GPU for inference.
    The plan (only its forward is used) is cached on module until the model changes."""
    cached = module.__dict__.get("_cuda_inference")
    if cached is None or cached[0] != (generation(), cuda.allow_tf32):
        named = list(module.named_parameters())
        chain = compile_chain(modules, [p for _, p in named])
        if isinstance(chain, str):
            raise NotImplementedError(f"on CUDA, a Sequential must be a chain of Linear layers, each optionally "
                                      f"followed by one elementwise activation: {chain}")
        cached = ((generation(), cuda.allow_tf32), forward_plan(chain, named), chain[0].in_features)
        object.__setattr__(module, "_cuda_inference", cached)
    if not cuda.is_device_array(x) and not hasattr(x, "__dlpack_device__"):
        x = as_input(x, np.float32, "x", ndim=2, features=cached[2])
    else:
        x = cuda.asarray(x, np.float32)
    return cached[1].forward(x)
