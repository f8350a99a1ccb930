"""Weight initialisation, in place, with PyTorch's formulas (torch.nn.init).

Each function takes a Parameter or a writeable float ndarray of shape (fan_out, fan_in, ...) and
an optional numpy.random.Generator (default: fuseprop's, see manual_seed).
"""
from __future__ import annotations

import math

import numpy as np

from . import _random


def _array(tensor) -> np.ndarray:
    arr = getattr(tensor, "data", tensor)
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or not arr.flags.writeable:
        raise TypeError(f"expected a Parameter or a writeable float ndarray, got {type(tensor).__name__}")
    return arr


def _fans(arr: np.ndarray) -> tuple[int, int]:
    if arr.ndim < 2:
        raise ValueError(f"fan in and fan out need an array of at least 2 dimensions, got shape {arr.shape}")
    receptive = int(np.prod(arr.shape[2:])) if arr.ndim > 2 else 1
    return arr.shape[1] * receptive, arr.shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain)."""
    if nonlinearity in ("linear", "identity", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1.0 + slope * slope))
    if nonlinearity in ("gelu", "gelu_tanh"):
        return math.sqrt(2.0)  # as relu: GELU behaves like it away from 0
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    arr = _array(tensor)
    arr[...] = _random.resolve(generator).uniform(a, b, size=arr.shape)
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    arr = _array(tensor)
    arr[...] = _random.resolve(generator).normal(mean, std, size=arr.shape)
    return tensor


def zeros_(tensor):
    _array(tensor).fill(0)
    return tensor


def ones_(tensor):
    _array(tensor).fill(1)
    return tensor


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    fan_in, fan_out = _fans(_array(tensor))
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    fan_in, fan_out = _fans(_array(tensor))
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None):
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", generator=None):
    return normal_(tensor, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode)), generator)


def _fan(tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(_array(tensor))
    return fan_in if mode == "fan_in" else fan_out
