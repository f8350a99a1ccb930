"""Layers shaped like torch.nn: Module, Linear, activations, Dropout, Sequential.

Every module has forward (``__call__``) and backward: ``backward(grad_out)`` returns the gradient
with respect to the module's input and ACCUMULATES parameter gradients into ``param.grad`` (+=),
as PyTorch does, so gradients of several micro-batches add up until ``zero_grad()``.

Inputs are converted explicitly into new arrays when they are not already C-contiguous arrays of
the model's dtype (the caller's array is never modified). Parameters are never converted: their
``.data`` and ``.grad`` keep their dtype, shape and memory, and assigning an array of another
dtype, shape or layout raises.

The package: ``module`` (Module and the protocol the step, the plans and the training loop use),
``linear``, ``conv`` (Conv2d), ``pooling`` (MaxPool2d, AvgPool2d, Flatten), ``normalization``
(BatchNorm1d, BatchNorm2d, LayerNorm), ``recurrent`` (RNN, LSTM, GRU), ``activation``, ``dropout``, ``container`` (Sequential), ``cuda_inference`` (forward on the
GPU), ``utils`` (gradient clipping, as torch.nn.utils). Each layer describes its native form itself
(``native_layer()``), so the plans (fuseprop.engine) import no layer class.
"""
from __future__ import annotations

from .. import init
from .._arrays import Parameter, as_input  # as_input: kept as fuseprop.nn.as_input, where it was
from .._tape import no_grad
from . import utils
from .activation import GELU, Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .container import Sequential
from .conv import Conv2d
from .dropout import Dropout
from .linear import Linear
from .module import Module
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from .pooling import AvgPool2d, Flatten, MaxPool2d
from .recurrent import GRU, LSTM, RNN

__all__ = ["Parameter", "Module", "Linear", "Identity", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU",
           "Softmax", "LogSoftmax", "Dropout", "Sequential", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten",
           "BatchNorm1d", "BatchNorm2d", "LayerNorm", "RNN", "LSTM", "GRU", "no_grad", "init", "utils"]
