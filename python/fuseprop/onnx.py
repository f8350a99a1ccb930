"""fuseprop.onnx: export a model to ONNX (needs onnx: the ``onnx`` extra; onnxruntime runs the result).

``export(model, path)`` writes the model as the ONNX graph of its eval-mode forward (Dropout disappears),
checked by ``onnx.checker`` (full check, shape inference included) before it is written:

- one input "input" of shape ("batch", in_features) and one output "output" of shape ("batch",
  out_features), "batch" a dynamic dimension (any batch size, 0 included), in the model's dtype (float32
  or float64);
- the weights as initializers named as ``model.state_dict()`` keys them ("0.weight", "3.1.bias", ...);
- opset 20 (IR version 9), one node per layer: Linear -> Gemm (transB=1, the bias as C), Identity ->
  Identity, ReLU -> Relu, LeakyReLU -> LeakyRelu(alpha), Sigmoid -> Sigmoid, Tanh -> Tanh, GELU -> Gelu
  (approximate "none" or "tanh"), Softmax / LogSoftmax -> Softmax / LogSoftmax (axis -1), nested
  Sequentials flattened.

float64 and onnxruntime (1.32): it has no float64 LeakyRelu kernel, so in a float64 model LeakyReLU is
written as Where(x < 0, x * alpha, x), exactly the same function; it has no float64 Erf or exact Gelu
kernel either, so a float64 model with an exact GELU (approximate="none") exports as valid ONNX that
onnxruntime refuses to load (NOT_IMPLEMENTED); other runtimes, or a float32 model, run it. Its float64
tanh GELU agrees with fuseprop's to about 1e-8.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import nn
from ._C import __version__

__all__ = ["export", "to_onnx", "OPSET", "IR_VERSION"]

OPSET = 20  # Gelu (with its approximate attribute) is new in opset 20
IR_VERSION = 9  # the IR version of opset 20: runtimes that read opset 20 read it
_ELEM_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
_ELEMENTWISE = {nn.Identity: "Identity", nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh"}
_SUPPORTED = "Sequential, Linear, Identity, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, Softmax, LogSoftmax, Dropout"


class _Graph:
    """The nodes and initializers written so far, and the name of the tensor the next layer reads."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.nodes, self.initializers = [], []
        self.current = "input"
        self.features = None  # the feature count of the current tensor, once a Linear fixed it
        self.in_features = None  # the input's, fixed by the first Linear

    def node(self, op: str, path: str, extra_inputs=(), **attrs):
        out = f"{path}/{op}"
        self.nodes.append(helper.make_node(op, [self.current, *extra_inputs], [out], name=f"{path}/{op}", **attrs))
        self.current = out

    def constant(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, self.dtype), name))
        return name


def _add(graph: _Graph, m, path: str):
    kind = type(m)
    where = f"module {path!r}" if path else "the model"
    if kind is nn.Sequential:
        for name, child in m._modules.items():
            _add(graph, child, f"{path}.{name}" if path else name)
    elif kind is nn.Linear:
        if graph.features is not None and graph.features != m.in_features:
            raise ValueError(f"{where} (Linear) takes {m.in_features} features, the layer before it gives "
                             f"{graph.features}: the model cannot run")
        if graph.in_features is None:
            graph.in_features = m.in_features
        state = m.state_dict()
        inputs = [graph.constant(f"{path}.weight" if path else "weight", state["weight"])]
        if "bias" in state:
            inputs.append(graph.constant(f"{path}.bias" if path else "bias", state["bias"]))
        graph.node("Gemm", path or "linear", inputs, transB=1)  # y = x @ weight.T + bias
        graph.features = m.out_features
    elif kind in _ELEMENTWISE:
        graph.node(_ELEMENTWISE[kind], path or "layer")
    elif kind is nn.LeakyReLU:
        if graph.dtype == np.float64:  # onnxruntime has no float64 LeakyRelu kernel: the same function, spelled out
            x = graph.current
            alpha, zero = (graph.constant(f"{path}.{n}" if path else n, v) for n, v in
                           (("negative_slope", m.negative_slope), ("zero", 0.0)))
            graph.node("Less", path or "layer", [zero])
            negative = graph.current
            graph.current = x
            graph.node("Mul", path or "layer", [alpha])
            scaled = graph.current
            graph.current = negative
            graph.node("Where", path or "layer", [scaled, x])
        else:
            graph.node("LeakyRelu", path or "layer", alpha=m.negative_slope)
    elif kind is nn.GELU:
        graph.node("Gelu", path or "layer", approximate=m.approximate)
    elif kind in (nn.Softmax, nn.LogSoftmax):
        graph.node(kind.__name__, path or "layer", axis=-1)  # dim -1 and 1 are the same axis of a 2-D input
    elif kind is nn.Dropout:
        pass  # eval mode: the identity
    else:
        raise TypeError(f"fuseprop.onnx.export: {where} is a {kind.__module__}.{kind.__qualname__}, which has no "
                        f"ONNX form here (supported: {_SUPPORTED})")


def to_onnx(model, *, input_features: int | None = None, dtype=None) -> onnx.ModelProto:
    """The checked ONNX model of ``model`` (see ``export``), without writing it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"export takes a fuseprop.nn.Module, got {type(model).__name__}")
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    if len(dtypes) > 1:
        raise TypeError(f"export needs parameters of one dtype, the model has {', '.join(dtypes)}")
    if dtypes and dtype is not None and np.dtype(dtype) != np.dtype(dtypes[0]):
        raise TypeError(f"dtype {np.dtype(dtype)} differs from the model's parameters ({dtypes[0]})")
    dt = np.dtype(dtypes[0] if dtypes else (dtype or np.float32))
    if dt not in _ELEM_TYPE:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    graph = _Graph(dt)
    _add(graph, model, "")
    if graph.in_features is not None and input_features is not None and input_features != graph.in_features:
        raise ValueError(f"input_features is {input_features}, the model's first Linear takes {graph.in_features}")
    in_features = graph.in_features or input_features or "features"
    out_features = graph.features or in_features
    if graph.nodes:
        graph.nodes[-1].output[0] = "output"
    else:  # nothing but Dropout (or nothing): the identity
        graph.nodes.append(helper.make_node("Identity", ["input"], ["output"], name="identity"))
    elem = _ELEM_TYPE[dt]
    proto = helper.make_model(
        helper.make_graph(graph.nodes, "fuseprop", [helper.make_tensor_value_info("input", elem, ["batch", in_features])],
                          [helper.make_tensor_value_info("output", elem, ["batch", out_features])],
                          initializer=graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="fuseprop",
        producer_version=__version__, doc_string="exported by fuseprop.onnx.export (eval-mode forward)")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model, path, *, input_features: int | None = None, dtype=None) -> onnx.ModelProto:
    """Write ``model`` to ``path`` as ONNX (the graph of its eval-mode forward; see the module's docstring)
    and return the ModelProto. ``input_features`` and ``dtype`` matter only for a model without a Linear
    (its input's feature count is otherwise a named dimension, "features") or without parameters (float32
    unless given). Raises TypeError naming the first module without an ONNX form."""
    proto = to_onnx(model, input_features=input_features, dtype=dtype)
    onnx.save_model(proto, os.fspath(path))
    return proto
