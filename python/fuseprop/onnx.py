"""fuseprop.onnx: export a model to ONNX (needs onnx: the ``onnx`` extra; onnxruntime runs the result).

``export(model, path)`` writes the model as the ONNX graph of its eval-mode forward (Dropout disappears),
checked by ``onnx.checker`` (full check, shape inference included) before it is written:

- one input "input" of shape ("batch", in_features) and one output "output" of shape ("batch",
  out_features), "batch" a dynamic dimension (any batch size, 0 included), in the model's dtype (float32
  or float64); a model whose first layer takes images (Conv2d, a pooling layer, BatchNorm2d) takes
  ("batch", channels, "height", "width"), with the spatial sizes dynamic too;
- the weights as initializers named as ``model.state_dict()`` keys them ("0.weight", "3.1.bias", ...);
- opset 20 (IR version 9), one node per layer: Linear -> Gemm (transB=1, the bias as C), Identity ->
  Identity, ReLU -> Relu, LeakyReLU -> LeakyRelu(alpha), Sigmoid -> Sigmoid, Tanh -> Tanh, GELU -> Gelu
  (approximate "none" or "tanh"), Softmax / LogSoftmax -> Softmax / LogSoftmax (axis -1), Conv2d -> Conv,
  MaxPool2d -> MaxPool, AvgPool2d -> AveragePool (count_include_pad), Flatten(1, -1) -> Flatten(axis 1),
  BatchNorm1d/2d -> BatchNormalization (the running statistics: eval mode), LayerNorm -> LayerNormalization,
  RNN / LSTM / GRU -> one RNN / LSTM / GRU node per layer (time-major, so a batch-first layer is wrapped in
  Transposes; the gate blocks reordered to ONNX's: LSTM i, o, f, c; GRU z, r, h with linear_before_reset=1,
  which is torch's GRU; weights W_l{k}, R_l{k}, B_l{k}), its output the whole sequence (return_sequences) or
  the last state; a model that starts with one takes ("batch", "steps", input_size) (batch_first) or
  ("steps", "batch", input_size); nested Sequentials flattened.

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
_SUPPORTED = ("Sequential, Linear, Conv2d, MaxPool2d, AvgPool2d, Flatten, BatchNorm1d, BatchNorm2d, LayerNorm, "
              "RNN, LSTM, GRU, Identity, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, Softmax, LogSoftmax, Dropout")


class _Graph:
    """The nodes and initializers written so far, and the name of the tensor the next layer reads."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.nodes, self.initializers = [], []
        self.current = "input"
        self.features = None  # the feature count of the current tensor, once a Linear fixed it
        self.in_features = None  # the input's, fixed by the first Linear
        self.rank = None  # the input's rank, once the first layer that needs one fixed it: 2 (Linear), 4 (Conv2d ...)
        self.flat = False  # the current tensor is (N, features): after a Linear or a Flatten
        self.in_channels = None  # a 4-D input's channels, where the first layer fixes them
        self.channels = None
        self.batch_first = True  # a sequence input's layout (N, T, features), else (T, N, features)

    def node(self, op: str, path: str, extra_inputs=(), **attrs):
        out = f"{path}/{op}"
        self.nodes.append(helper.make_node(op, [self.current, *extra_inputs], [out], name=f"{path}/{op}", **attrs))
        self.current = out

    def constant(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, self.dtype), name))
        return name

    def int64(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
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
        if graph.in_features is None and graph.rank is None:
            graph.in_features, graph.rank = m.in_features, 2
        state = m.state_dict()
        inputs = [graph.constant(f"{path}.weight" if path else "weight", state["weight"])]
        if "bias" in state:
            inputs.append(graph.constant(f"{path}.bias" if path else "bias", state["bias"]))
        graph.node("Gemm", path or "linear", inputs, transB=1)  # y = x @ weight.T + bias
        graph.features, graph.flat = m.out_features, True
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
    elif kind is nn.Conv2d:
        _spatial_input(graph, m.in_channels, where, "Conv2d")
        state = m.state_dict()
        name = path or "conv"
        inputs = [graph.constant(f"{path}.weight" if path else "weight", state["weight"])]
        if "bias" in state:
            inputs.append(graph.constant(f"{path}.bias" if path else "bias", state["bias"]))
        graph.node("Conv", name, inputs, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                   pads=[*m.padding, *m.padding], dilations=list(m.dilation))
        graph.channels, graph.features = m.out_channels, None
    elif kind in (nn.MaxPool2d, nn.AvgPool2d):
        _spatial_input(graph, None, where, kind.__name__)
        attrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride), pads=[*m.padding, *m.padding])
        if kind is nn.AvgPool2d:
            attrs["count_include_pad"] = int(m.count_include_pad)
        graph.node("MaxPool" if kind is nn.MaxPool2d else "AveragePool", path or "pool", **attrs)
    elif kind is nn.Flatten:
        if (m.start_dim, m.end_dim) != (1, -1):
            raise ValueError(f"{where} (Flatten) has start_dim={m.start_dim}, end_dim={m.end_dim}; the ONNX export "
                             "takes Flatten(1, -1), the (N, features) form a Linear reads")
        graph.node("Flatten", path or "flatten", axis=1)
        graph.flat, graph.features = True, None
    elif kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not m.track_running_stats:
            raise ValueError(f"{where} ({kind.__name__}) has track_running_stats=False: in eval mode it normalises "
                             "with each batch's statistics, which ONNX's inference BatchNormalization does not do")
        if kind is nn.BatchNorm2d:
            _spatial_input(graph, m.num_features, where, kind.__name__)
        state, key = m.state_dict(), (lambda n: f"{path}.{n}" if path else n)
        C = m.num_features
        scale = state.get("weight", np.ones(C, graph.dtype))
        shift = state.get("bias", np.zeros(C, graph.dtype))
        inputs = [graph.constant(key("weight"), scale), graph.constant(key("bias"), shift),
                  graph.constant(key("running_mean"), state["running_mean"]),
                  graph.constant(key("running_var"), state["running_var"])]
        graph.node("BatchNormalization", path or "batchnorm", inputs, epsilon=m.eps)
    elif kind is nn.LayerNorm:
        key = (lambda n: f"{path}.{n}" if path else n)
        state = m.state_dict()
        inputs = [graph.constant(key("weight"), state.get("weight", np.ones(m.normalized_shape, graph.dtype)))]
        if "bias" in state:
            inputs.append(graph.constant(key("bias"), state["bias"]))
        graph.node("LayerNormalization", path or "layernorm", inputs, axis=-len(m.normalized_shape), epsilon=m.eps)
    elif kind in (nn.RNN, nn.LSTM, nn.GRU):
        _recurrent(graph, m, path, where)
    else:
        raise TypeError(f"fuseprop.onnx.export: {where} is a {kind.__module__}.{kind.__qualname__}, which has no "
                        f"ONNX form here (supported: {_SUPPORTED})")


# ONNX's gate blocks as torch's blocks: LSTM i, o, f, c from torch's i, f, g, o; GRU z, r, h from torch's r, z, n
# (with linear_before_reset=1, torch's GRU: r multiplies W_hn h + b_hn); RNN one block.
_GATE_ORDER = {nn.RNN: [0], nn.LSTM: [0, 3, 1, 2], nn.GRU: [1, 0, 2]}


def _recurrent(graph: _Graph, m, path: str, where: str):
    """One ONNX RNN / LSTM / GRU node per layer, on the time-major sequence (layout 0: onnxruntime's), the
    weights' gate blocks in ONNX's order; the output transposed back to batch-first, or the last state."""
    name = type(m).__name__
    if graph.flat or graph.rank == 4:
        raise ValueError(f"{where} ({name}) takes a sequence (N, T, features), the layer before it gives another form")
    if graph.rank is None:
        graph.rank, graph.in_features = 3, m.input_size
        graph.batch_first = m.batch_first
    key = (lambda n: f"{path}.{n}" if path else n)
    base = path or name.lower()
    if m.batch_first:
        graph.node("Transpose", base + "/in", perm=[1, 0, 2])  # (T, N, I)
    state, H, order = m.state_dict(), m.hidden_size, _GATE_ORDER[type(m)]

    def blocks(a):  # rows in ONNX's gate order, with the directions axis in front
        return np.concatenate([a[g * H:(g + 1) * H] for g in order])[None]
    for k in range(m.num_layers):
        inputs = [graph.constant(key(f"W_l{k}"), blocks(state[f"weight_ih_l{k}"])),
                  graph.constant(key(f"R_l{k}"), blocks(state[f"weight_hh_l{k}"]))]
        if m.bias:
            inputs.append(graph.constant(key(f"B_l{k}"), np.concatenate(
                [blocks(state[f"bias_ih_l{k}"]), blocks(state[f"bias_hh_l{k}"])], axis=1)))
        attrs = dict(hidden_size=H)
        if type(m) is nn.RNN:
            attrs["activations"] = ["Tanh" if m.nonlinearity == "tanh" else "Relu"]
        if type(m) is nn.GRU:
            attrs["linear_before_reset"] = 1
        op, layer = {nn.RNN: "RNN", nn.LSTM: "LSTM", nn.GRU: "GRU"}[type(m)], f"{base}/l{k}"
        y, y_h = f"{layer}/Y", f"{layer}/Y_h"
        graph.nodes.append(helper.make_node(op, [graph.current, *inputs], [y, y_h], name=f"{layer}/{op}", **attrs))
        if k + 1 < m.num_layers or m.return_sequences:  # Y (T, 1, N, H) -> (T, N, H)
            graph.current = y
            graph.node("Squeeze", f"{layer}/seq", [graph.int64(f"{layer}/axis", [1])])
    if m.return_sequences:
        if m.batch_first:
            graph.node("Transpose", base + "/out", perm=[1, 0, 2])
        graph.flat = False
    else:  # the last layer's final state Y_h (1, N, H) -> (N, H)
        graph.current = y_h
        graph.node("Squeeze", base + "/last", [graph.int64(base + "/axis", [0])])
        graph.flat = True
    graph.features = H


def _spatial_input(graph: _Graph, channels, where: str, name: str):
    """A layer that takes (N, C, H, W): it fixes the input's form when it comes first, and refuses a 2-D input."""
    if graph.flat:
        raise ValueError(f"{where} ({name}) takes (N, C, H, W), the layer before it gives (N, features)")
    if graph.rank is None:
        graph.rank, graph.in_channels = 4, channels


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
    if graph.rank == 4:
        in_shape = ["batch", graph.in_channels or "channels", "height", "width"]
        out_shape = ["batch", graph.features] if graph.features else None  # after Flatten and Linear; else inferred
    elif graph.rank == 3:
        in_shape = ["batch", "steps", graph.in_features] if graph.batch_first else ["steps", "batch", graph.in_features]
        seq = ["batch", "steps"] if graph.batch_first else ["steps", "batch"]
        out_shape = ["batch", graph.features] if graph.flat else seq + [graph.features]  # a last state, or the sequence
    else:
        in_features = graph.in_features or input_features or "features"
        in_shape, out_shape = ["batch", in_features], ["batch", graph.features or in_features]
    if graph.nodes:
        graph.nodes[-1].output[0] = "output"
    else:  # nothing but Dropout (or nothing): the identity
        graph.nodes.append(helper.make_node("Identity", ["input"], ["output"], name="identity"))
    elem = _ELEM_TYPE[dt]
    proto = helper.make_model(
        helper.make_graph(graph.nodes, "fuseprop", [helper.make_tensor_value_info("input", elem, in_shape)],
                          [helper.make_tensor_value_info("output", elem, out_shape)],
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
