"""Image augmentation for mini-batches, vectorised over the batch: random shifts and horizontal
flips of (N, H*W) or (N, H, W) images. Each transform draws from its ``generator`` (a
numpy.random.Generator; default: fuseprop's generator) and returns a new array of the batch's shape
and dtype. Compose chains them; fit(augment=...) applies one to every training batch."""
from __future__ import annotations

import numpy as np

from . import _random

__all__ = ["RandomShift", "RandomHorizontalFlip", "Compose"]


def _as_images(x, image_shape):
    x = np.asarray(x)
    h, w = image_shape
    if x.shape[1:] not in ((h * w,), (h, w)):
        raise ValueError(f"expected a batch of (N, {h * w}) or (N, {h}, {w}) images, got shape {x.shape}")
    return x.reshape(len(x), h, w)


class RandomShift:
    """Shift each image by its own (dy, dx), each uniform in [-max_shift, max_shift] pixels; zeros fill in."""

    def __init__(self, max_shift: int = 2, image_shape=(28, 28), generator=None):
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift, self.image_shape = int(max_shift), tuple(image_shape)
        self.generator = _random.resolve(generator) if generator is not None else None

    def __call__(self, x):
        imgs = _as_images(x, self.image_shape)
        k, (h, w), n = self.max_shift, self.image_shape, len(imgs)
        shift = _random.resolve(self.generator).integers(-k, k + 1, size=(2, n))
        padded = np.pad(imgs, ((0, 0), (k, k), (k, k)))
        # output pixel (r, c) of image i reads input pixel (r - dy_i, c - dx_i), i.e. padded (r - dy_i + k, c - dx_i + k)
        rows = np.arange(h)[None, :] + k - shift[0][:, None]
        cols = np.arange(w)[None, :] + k - shift[1][:, None]
        out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return out.reshape(np.shape(x))


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p."""

    def __init__(self, p: float = 0.5, image_shape=(28, 28), generator=None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p, self.image_shape = float(p), tuple(image_shape)
        self.generator = _random.resolve(generator) if generator is not None else None

    def __call__(self, x):
        imgs = _as_images(x, self.image_shape)
        flip = _random.resolve(self.generator).random(len(imgs)) < self.p
        out = imgs.copy()
        out[flip] = imgs[flip, :, ::-1]
        return out.reshape(np.shape(x))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x
