"""fuseprop.onnx.export: every layer type in both dtypes, checked by the onnx checker and run by
onnxruntime against model.predict, at any batch size (0 included). Skipped without onnx and onnxruntime."""
from __future__ import annotations

import re

import numpy as np
import pytest

from fuseprop import nn

from helpers import every_layer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import fuseprop.onnx as fo  # noqa: E402  (after the skip: it imports onnx)

DTYPES = [np.float32, np.float64]
# float32: to float32 rounding; float64: onnxruntime's float64 tanh-GELU agrees with fuseprop's to ~1e-8
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-7, atol=1e-8)}

LAYERS = {
    "identity": nn.Identity, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "softmax": lambda: nn.Softmax(dim=1), "log_softmax": nn.LogSoftmax, "dropout": lambda: nn.Dropout(0.5),
    "sequential": lambda: nn.Sequential(nn.Tanh(), nn.Sequential(nn.ReLU())),
}


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess, x):
    return sess.run(["output"], {"input": x})[0]


def data(dtype, n, features=6, seed=1):
    return (np.random.default_rng(seed).normal(size=(n, features)) * 2).astype(dtype)


def check_against_predict(model, path, dtype, features=6):
    fo.export(model, path)
    sess = session(path)
    for n in (1, 7, 300):  # one session, any batch size
        x = data(dtype, n, features)
        got = run(sess, x)
        assert got.dtype == dtype and got.shape == (n, 4 if features == 6 else features)
        np.testing.assert_allclose(got, model.predict(x), **TOL[dtype])
    empty = run(sess, np.zeros((0, features), dtype))
    assert empty.shape == (0, got.shape[1]) and empty.dtype == dtype


@pytest.mark.parametrize("dtype, layer", [(d, layer) for d in DTYPES for layer in LAYERS
                                          if (d, layer) != (np.float64, "gelu")])  # see test_float64_exact_gelu
def test_each_layer_type_runs_in_onnxruntime_as_in_fuseprop(layer, dtype, tmp_path):
    model = nn.Sequential(nn.Linear(6, 5, dtype=dtype), LAYERS[layer](), nn.Linear(5, 4, dtype=dtype))
    check_against_predict(model, tmp_path / "m.onnx", dtype)


def test_every_layer_in_float32_and_in_training_mode(tmp_path):
    model = every_layer(np.float32)  # training mode: the export is still the eval-mode forward
    check_against_predict(model, tmp_path / "m.onnx", np.float32)
    assert model.training and model[2].training


def test_every_layer_but_exact_gelu_in_float64(tmp_path):
    model = every_layer(np.float64)
    setattr(model, "7", nn.GELU(approximate="tanh"))
    check_against_predict(model, tmp_path / "m.onnx", np.float64)


def test_float64_exact_gelu_is_valid_onnx_that_onnxruntime_may_lack_a_kernel_for(tmp_path):
    model = nn.Sequential(nn.Linear(6, 4, dtype=np.float64), nn.GELU())
    proto = fo.export(model, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Gelu"]
    try:
        sess = session(tmp_path / "m.onnx")
    except ort.capi.onnxruntime_pybind11_state.NotImplemented as e:  # onnxruntime 1.32: no float64 Gelu or Erf
        assert re.search(r"implementation for (Gelu|Erf)", str(e)), e  # Gelu expands to Erf, which has none
        return
    x = data(np.float64, 7)
    np.testing.assert_allclose(run(sess, x), model.predict(x), **TOL[np.float64])


def test_the_graph_names_shapes_and_initializers(tmp_path):
    model = every_layer(np.float32)
    proto = fo.export(model, tmp_path / "m.onnx")
    g = proto.graph
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["output"]
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(g.input[0]) == ["batch", 6] and dims(g.output[0]) == ["batch", 4]
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [i.name for i in g.initializer] == list(model.state_dict())
    for init in g.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), model.state_dict()[init.name])
    assert "Dropout" not in [n.op_type for n in g.node]
    assert proto.opset_import[0].version == fo.OPSET and proto.ir_version == fo.IR_VERSION
    assert onnx.load(str(tmp_path / "m.onnx")) == proto


def test_a_model_without_parameters(tmp_path):
    model = nn.Sequential(nn.Dropout(0.1), nn.Softmax())
    proto = fo.export(model, tmp_path / "m.onnx", input_features=3)
    x = data(np.float32, 5, features=3)
    np.testing.assert_allclose(run(session(tmp_path / "m.onnx"), x), model.predict(x), **TOL[np.float32])
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    fo.export(nn.Sequential(nn.Dropout(0.1)), tmp_path / "id.onnx", dtype=np.float64)  # only Dropout: the identity
    x = data(np.float64, 4, features=9)
    np.testing.assert_array_equal(run(session(tmp_path / "id.onnx"), x), x)


def test_export_refuses_a_module_without_an_onnx_form(tmp_path):
    class Custom(nn.ReLU):
        pass

    with pytest.raises(TypeError, match=r"^fuseprop.onnx.export: module '1.0' is a .*Custom, which has no ONNX form"):
        fo.export(nn.Sequential(nn.Linear(2, 2), nn.Sequential(Custom())), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_mixed_dtypes_and_a_model_that_cannot_run(tmp_path):
    with pytest.raises(TypeError, match=re.escape("export needs parameters of one dtype, the model has float32, float64")):
        fo.export(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, dtype=np.float64)), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"^module '1' \(Linear\) takes 3 features, the layer before it gives 2"):
        fo.export(nn.Sequential(nn.Linear(2, 2), nn.Linear(3, 2)), tmp_path / "m.onnx")
