"""The machine's measured peak, the yardstick for every GFLOP/s the benchmarks print.

A native loop of independent, register-only float multiply-adds (csrc/core/fma_peak*) on every thread at
once: nothing from memory, no dependency a core must wait for. What it reaches is the most any float32
kernel at that instruction set can reach, so "% of peak" can only approach 100%, never pass it (up to
noise: a peak measured while the machine was busy).
"""
from __future__ import annotations

from typing import Optional

from .. import _C


def fma_peak(threads: Optional[int] = None, seconds: float = 0.2, level: Optional[str] = None) -> float:
    """GFLOP/s of float multiply-adds (2 FLOPs each) on `threads` threads at once (None: fuseprop's
    thread count) over `seconds`, with the loop of `level` ("generic", "avx2", "avx512"; None: the level
    fuseprop's kernels use now). TypeError or ValueError, naming the argument, for bad arguments."""
    return _C.fma_peak(_C.get_num_threads() if threads is None else threads, seconds, level)
