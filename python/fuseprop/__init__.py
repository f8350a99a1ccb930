"""fuseprop: fast backpropagation for dense networks on NumPy arrays.

Native C++ kernels (fused linear layers, losses, optimizer updates) under a PyTorch-shaped API,
tested against a pure-NumPy reference (fuseprop.reference).
"""
from __future__ import annotations

import platform

import numpy as np

from . import _C
from . import functional, init, losses, nn, optim, reference, testing
from ._random import manual_seed, default_generator

__version__ = _C.__version__

__all__ = ["__version__", "build_info", "manual_seed", "default_generator", "functional", "init", "losses", "nn",
           "optim", "reference", "testing"]


def build_info() -> dict:
    """How this build was made and what it can use on this machine."""
    return {
        "version": __version__,
        "compiler": _C.compiler,
        "arch": _C.arch,
        "machine": platform.machine(),
        "kernel_level": _C.kernel_level,
        "num_threads": _C.num_threads,
        "cuda_compiled": bool(_C.cuda_compiled),
        "cuda_available": False,
        "cuda_status": "no CUDA device: this build has no CUDA backend" if not _C.cuda_compiled else "no CUDA device",
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
