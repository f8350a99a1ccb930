"""fuseprop.nn.utils: gradient clipping with PyTorch's semantics (in place, on ``param.grad``), as
torch.nn.utils. The functions live with the per-layer step that clips (fuseprop.engine.step)."""
from __future__ import annotations

from ..engine.step import clip_grad_norm_, clip_grad_value_

__all__ = ["clip_grad_norm_", "clip_grad_value_"]
