"""Sequential: modules applied in order, keyed "0", "1", ... as torch.nn.Sequential."""
from __future__ import annotations

import numpy as np

from .._arrays import generation
from .._tape import CONSUMED, check_tape, record_forward
from ..engine.cpu_plan import FusedStep
from ..engine.cuda_plan import CudaStep
from ..engine.protocol import NativeLayer, segments
from .cuda_inference import cuda_forward
from .module import Module, cpu_only

__all__ = ["Sequential"]


class Sequential(Module):
    """Modules applied in order, keyed "0", "1", ... as torch.nn.Sequential.

    A Linear followed by an elementwise activation runs as ONE fused native call (bias and
    activation applied while the GEMM's output tiles are in cache), and its backward as one fused
    call too. The result is the same as running the two modules one after the other.

    ``train_step`` runs the whole step (forward, loss, backward, update) as ONE native call when the
    model is a chain of Linear layers, each optionally followed by one elementwise activation, and
    the loss and optimizer are fuseprop's own (see ``fuseprop.engine``); otherwise, or with
    ``fused_train_step = False``, it runs layer by layer. Both compute the same step with the same
    kernels.
    """

    fused_train_step = True  # False: always take the per-layer path (to compare, or to debug)
    _fused = None  # the FusedStep of the last train_step's (loss_fn, optimizer)

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, got {type(m).__name__} at position {i}")
            setattr(self, str(i), m)
        self._tape = None

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append takes a Module, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def _segments(self):
        """engine.protocol.segments of the children, looked at again only when the model generation moved
        (every layer, setting or parameter assignment moves it): a forward does not describe each layer anew."""
        cached = self.__dict__.get("_segments_seen")
        if cached is None or cached[0] != generation():
            cached = (generation(), segments(self._modules.values()))
            object.__setattr__(self, "_segments_seen", cached)
        return cached[1]

    def _forget_tape(self):
        if self._tape is not None:
            object.__setattr__(self, "_tape", None)

    def forward(self, x):
        if self.device == "cuda":
            self._tape = None
            return cuda_forward(self, list(self._modules.values()), x)
        tape = []
        # A segment opener followed by an epilogue (Linear + activation) runs as one fused call.
        for first, epilogue in self._segments():
            if epilogue is None:
                m = first.module if isinstance(first, NativeLayer) else first
                x = m(x)
                tape.append((m, None))
            else:
                m = first.module
                x, saved = m._forward_epilogue(x, epilogue.settings)
                tape.append((m, saved))
        number = record_forward(self, x)
        if number is not None:
            self._tape, self._tape_number = tape, number
        return x

    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool = True, done=None):
        """done(module), if given, is called for each child as soon as its parameter gradients are written,
        from the output back to the input (fuseprop.distributed starts each bucket's all-reduce there)."""
        cpu_only(self, "backward")
        check_tape(self, self._tape, self.__dict__.get("_tape_number"), grad_out)
        # A view of grad_out (the same memory, another object) for the layers: checked here once, it is
        # this forward's, and must not read as another module's gradient to the last layer's own check.
        tape, g = self._tape, grad_out.view() if isinstance(grad_out, np.ndarray) else grad_out
        for i in range(len(tape) - 1, -1, -1):
            m, saved = tape[i]
            need = need_input_grad or i > 0
            g = m._backward(g, need) if saved is None else m._backward_epilogue(g, saved, need)
            if i == len(tape) - 1:  # the output layer took grad_out and wrote its gradients: used once
                object.__setattr__(self, "_tape", CONSUMED)
            if done is not None:
                done(m)
        return g

    @property
    def train_plan(self):
        """The native plan (``fuseprop._C.TrainPlan``: ``steps``, ``allocations``, ``capacity``) that
        ``train_step`` runs for the last loss and optimizer it was given, or None when it runs layer by layer."""
        return self._fused.plan if self.fused_train_step and self._fused is not None else None

    def __getstate__(self):  # copies and pickles leave the native plan behind; the next train_step rebuilds it
        state = self.__dict__.copy()
        state.pop("_fused", None)
        state.pop("_cuda_inference", None)
        state.pop("_segments_seen", None)
        return state

    def _fused_for(self, loss_fn, optimizer):
        """The FusedStep (on CUDA: CudaStep) of this loss and optimizer, made when they change; None when
        fused_train_step is off on the CPU."""
        on_cuda = self.device == "cuda"
        if not self.fused_train_step and not on_cuda:
            return None
        fused = self._fused
        if (fused is None or fused.loss_fn is not loss_fn or fused.optimizer is not optimizer
                or fused.on_cuda != on_cuda):
            fused = self._fused = (CudaStep if on_cuda else FusedStep)(loss_fn, optimizer)
        return fused

    def _fused_step(self, x, y, loss_fn, optimizer, max_grad_norm=None):
        """train_step as one native call (optionally clipping the gradients' global norm): its loss, or
        None when it needs the per-layer path."""
        fused = self._fused_for(loss_fn, optimizer)
        if fused is None:
            return None
        loss = fused.step(self, x, y, max_grad_norm)
        if loss is None and fused.on_cuda:
            raise NotImplementedError(f"this step cannot run on CUDA: {fused.why_not}")
        return loss
