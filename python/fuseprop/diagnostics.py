"""Diagnostics: saliency maps (the gradient of a class score with respect to the input), training
curves (matplotlib, imported only when plotting) and the warning fit gives on vanishing or exploding
gradients."""
from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["GradientWarning", "saliency", "gradient_through_time", "saliency_image", "save_saliency_png",
           "plot_history"]


class GradientWarning(RuntimeWarning):
    """Gradients vanish (median norm < 1e-7 over an epoch) or explode (> 1e3, or not finite)."""


def saliency(model, x, target_class) -> np.ndarray:
    """d output[:, target_class] / d x: the gradient of each sample's class score (the model's output,
    before any softmax) with respect to its input; an array of x's shape. x is one sample (D,) or a
    batch (N, D); target_class an int or one per sample. Runs in eval mode; the parameters' gradients
    are left as they were."""
    x = np.asarray(x)
    batch = x.reshape(1, -1) if x.ndim == 1 else x
    params = model.parameters()
    kept = [p.grad.copy() for p in params]
    was_training = model.training
    model.eval()
    try:
        out = model(batch)
        seed = np.zeros_like(out)
        seed[np.arange(len(out)), target_class] = 1
        grad = model.backward(seed)
    finally:
        model.train(was_training)
        for p, g in zip(params, kept):
            np.copyto(p.grad, g)
    return grad.reshape(x.shape)


def gradient_through_time(model, x, y, loss_fn, time_axis: int = 1) -> np.ndarray:
    """How much of the loss's gradient reaches each time step of a sequence input: (T,), the L2 norm over the
    batch and the features of d loss / d x[:, t] (time_axis 1: batch-first (B, T, I); 0 for (T, B, I)).

    This is where backpropagation through time shows its vanishing and exploding gradients: for a model that
    reads the sequence and is judged at its end, the norms fall (vanish) or grow (explode) geometrically from
    the last step back to the first. Runs the model in its current mode; the parameters' gradients are left
    as they were."""
    x = np.asarray(x)
    if x.ndim != 3 or time_axis not in (0, 1):
        raise ValueError(f"x must be a 3-D sequence batch and time_axis 0 or 1, got shape {x.shape}, time_axis "
                         f"{time_axis!r}")
    params = model.parameters()
    kept = [p.grad.copy() for p in params]
    try:
        loss_fn(model(x), y)
        grad = np.asarray(model.backward(loss_fn.backward()), dtype=np.float64)
    finally:
        for p, g in zip(params, kept):
            np.copyto(p.grad, g)
    other = (1, 2) if time_axis == 0 else (0, 2)
    return np.sqrt((grad * grad).sum(axis=other))


def saliency_image(saliency_map, image_shape=(28, 28)) -> np.ndarray:
    """|saliency| as uint8 grey levels, each image scaled to its own maximum: (H, W), or (N, H, W) for a batch."""
    s = np.abs(np.asarray(saliency_map, dtype=np.float64)).reshape(-1, *image_shape)
    peak = s.reshape(len(s), -1).max(axis=1).reshape(-1, 1, 1)
    img = np.round(255 * s / np.where(peak > 0, peak, 1)).astype(np.uint8)
    return img[0] if np.asarray(saliency_map).size == np.prod(image_shape) else img


def _write_png(path, gray: np.ndarray):
    """A grey-scale 8-bit PNG of gray (H, W) uint8, written with zlib alone."""
    h, w = gray.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(gray, np.uint8))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def save_saliency_png(path, model, x, target_class, image_shape=(28, 28), scale: int = 4):
    """Write one sample x and its saliency for target_class side by side as a grey PNG, each pixel
    drawn as scale x scale; returns path."""
    image = np.asarray(x, dtype=np.float64).reshape(image_shape)
    lo, hi = image.min(), image.max()
    image = np.round(255 * (image - lo) / (hi - lo if hi > lo else 1)).astype(np.uint8)
    sal = saliency_image(saliency(model, np.asarray(x).reshape(-1), target_class), image_shape)
    both = np.concatenate([image, np.full((image_shape[0], 2), 255, np.uint8), sal], axis=1)
    _write_png(path, np.kron(both, np.ones((scale, scale), np.uint8)))
    return path


def plot_history(history, path):
    """Loss and accuracy curves (training and validation) of a History (or its .history dict) as a PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot_history needs matplotlib: pip install fuseprop[plot]") from e
    logs = getattr(history, "history", history)
    metrics = [m for m in ("loss", "accuracy") if m in logs]
    fig = Figure(figsize=(5 * len(metrics), 4))
    FigureCanvasAgg(fig)
    for ax, metric in zip(np.atleast_1d(fig.subplots(1, len(metrics))), metrics):
        for key in (metric, "val_" + metric):
            if key in logs:
                ax.plot(range(1, len(logs[key]) + 1), logs[key], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
