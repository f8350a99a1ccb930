"""The library's one random generator: initialisation, dropout and shuffling draw from it unless a
caller passes its own numpy.random.Generator, so manual_seed makes a whole run repeatable."""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed fuseprop's default generator (as torch.manual_seed) and return it."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def default_generator() -> np.random.Generator:
    return _generator


def resolve(generator) -> np.random.Generator:
    if generator is None:
        return _generator
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator or None, got {type(generator).__name__}")
    return generator
