"""Checkpoints: exact resumption of training, refusal of mismatches, atomic saves, no pickle."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

import fuseprop
import fuseprop.checkpoint as checkpoint
from fuseprop import losses, nn, optim

from helpers import relu_mlp

HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None
FORMATS = ["npz", pytest.param("safetensors", marks=pytest.mark.skipif(
    not HAS_SAFETENSORS, reason="safetensors is not installed"))]
OPTIMIZERS = {
    "sgd-momentum": lambda params: optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda params: optim.Adam(params, lr=0.01, betas=(0.8, 0.99), weight_decay=1e-3),
}


def net(seed, hidden=5, dtype=np.float32):
    fuseprop.manual_seed(seed)
    return relu_mlp(6, hidden, 3, dtype=dtype)


def train(model, opt, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.standard_normal((8, 6)).astype(np.float32)
        model.train_step(x, rng.integers(0, 3, 8), losses.CrossEntropyLoss(), opt)


def snapshot(model, opt):
    return {k: v.copy() for k, v in model.state_dict().items()}, repr(opt.state_dict())


def assert_unchanged(before, model, opt):
    params, opt_state = before
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, params[k])
    assert repr(opt.state_dict()) == opt_state


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_resumed_training_is_bit_identical(tmp_path, fmt, opt_name):
    model = net(0)
    opt = OPTIMIZERS[opt_name](model.parameters())
    train(model, opt, 3, seed=1)
    extra = {"epoch": 3, "losses": [0.5, 0.25], "rng": np.arange(4, dtype=np.int64), "split": (0.9, "val"), 7: None}
    checkpoint.save_checkpoint(tmp_path / "ckpt", model, opt, extra=extra, format=fmt)
    train(model, opt, 4, seed=2)

    resumed = net(1)  # other initial weights, fresh optimizer state
    resumed_opt = OPTIMIZERS[opt_name](resumed.parameters())
    got = checkpoint.load_checkpoint(tmp_path / "ckpt", resumed, resumed_opt)
    assert got.keys() == extra.keys() and got["split"] == (0.9, "val") and got[7] is None
    assert got["losses"] == [0.5, 0.25] and got["epoch"] == 3
    np.testing.assert_array_equal(got["rng"], extra["rng"])
    train(resumed, resumed_opt, 4, seed=2)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v)


@pytest.mark.skipif(not HAS_SAFETENSORS, reason="safetensors is not installed")
def test_default_format_is_safetensors_when_installed(tmp_path):
    from safetensors import safe_open
    model = net(0)
    checkpoint.save_checkpoint(tmp_path / "ckpt", model)
    with safe_open(tmp_path / "ckpt", framework="numpy") as f:  # readable by any safetensors tool
        assert set(f.keys()) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}
        assert json.loads(f.metadata()["__fuseprop__"])["format"] == "fuseprop-checkpoint"
        np.testing.assert_array_equal(f.get_tensor("model.0.weight"), model[0].weight.data)


def test_default_format_is_npz_without_safetensors(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_safetensors", lambda: None)
    model = net(0)
    checkpoint.save_checkpoint(tmp_path / "ckpt", model)
    assert (tmp_path / "ckpt").read_bytes()[:4] == b"PK\x03\x04"
    with pytest.raises(ImportError, match="safetensors"):
        checkpoint.save_checkpoint(tmp_path / "ckpt", model, format="safetensors")
    checkpoint.load_checkpoint(tmp_path / "ckpt", net(1))


@pytest.mark.parametrize("name, magic", [("m.npz", b"PK\x03\x04"), pytest.param("m.safetensors", None, marks=pytest.mark.skipif(
    not HAS_SAFETENSORS, reason="safetensors is not installed"))])
def test_the_extension_picks_the_format(tmp_path, name, magic):
    model = net(0)
    checkpoint.save_checkpoint(tmp_path / name, model)
    head = (tmp_path / name).read_bytes()[:8]
    if magic is not None:
        assert head[:4] == magic
    else:  # safetensors: a little-endian u64 header length, then the JSON header
        assert head[:4] != b"PK\x03\x04" and (tmp_path / name).read_bytes()[8:9] == b"{"
    checkpoint.load_checkpoint(tmp_path / name, net(1))


def test_safetensors_without_the_package_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_safetensors", lambda: None)
    with pytest.raises(ImportError, match=r"pip install 'fuseprop\[checkpoint\]'"):
        checkpoint.save_checkpoint(tmp_path / "m.safetensors", net(0))
    assert list(tmp_path.iterdir()) == []  # before: an .npz archive under the .safetensors name


@pytest.mark.parametrize("name, fmt", [("m.npz", "safetensors"), ("m.safetensors", "npz")])
def test_a_format_the_extension_contradicts_is_refused(tmp_path, name, fmt):
    with pytest.raises(ValueError, match=r"contradicts the file name"):
        checkpoint.save_checkpoint(tmp_path / name, net(0), format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_npz_needs_no_pickle(tmp_path):
    model = net(0)
    opt = optim.Adam(model.parameters())
    train(model, opt, 1, seed=0)
    checkpoint.save_checkpoint(tmp_path / "ckpt.npz", model, opt, extra={"a": np.ones(2)}, format="npz")
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert not any(a.dtype.hasobject for a in arrays.values())
    assert "optimizer.state.0.exp_avg" in arrays and "extra.a" in arrays
    assert json.loads(arrays["__fuseprop__"].item())["optimizer"]["type"] == "Adam"


def test_unstorable_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="extra.x"):
        checkpoint.save_checkpoint(tmp_path / "c", net(0), extra={"x": object()}, format="npz")
    with pytest.raises(TypeError, match="Python objects"):
        checkpoint.save_checkpoint(tmp_path / "c", net(0), extra=np.array([None]), format="npz")
    assert not os.listdir(tmp_path)


MISMATCHES = {
    "wrong layer size": (lambda: net(1, hidden=4), optim.SGD, ValueError, "0.weight is float32"),
    "missing key": (lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3, bias=False)), optim.SGD,
                    KeyError, "unexpected keys \\['2.bias'\\]"),
    "extra layer": (lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 3)),
                    optim.SGD, KeyError, "missing keys \\['4.bias', '4.weight'\\]"),
    "wrong dtype": (lambda: net(1, dtype=np.float64), optim.SGD, ValueError, "float32.*the model has float64"),
    "wrong optimizer": (lambda: net(1), optim.Adam, ValueError, "holds SGD state, the optimizer is Adam"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", MISMATCHES)
def test_mismatched_checkpoint_is_refused_and_changes_nothing(tmp_path, fmt, case):
    make_model, make_opt, error, message = MISMATCHES[case]
    model = net(0)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, opt, 2, seed=0)
    checkpoint.save_checkpoint(tmp_path / "ckpt", model, opt, format=fmt)

    target = make_model()
    target_opt = make_opt(target.parameters(), lr=0.3)
    train(target, target_opt, 1, seed=5)
    before = snapshot(target, target_opt)
    with pytest.raises(error, match=message):
        checkpoint.load_checkpoint(tmp_path / "ckpt", target, target_opt)
    assert_unchanged(before, target, target_opt)


def test_missing_optimizer_state_is_refused(tmp_path):
    checkpoint.save_checkpoint(tmp_path / "ckpt", net(0), format="npz")
    target = net(1)
    opt = optim.SGD(target.parameters())
    before = snapshot(target, opt)
    with pytest.raises(KeyError, match="no optimizer state"):
        checkpoint.load_checkpoint(tmp_path / "ckpt", target, opt)
    assert_unchanged(before, target, opt)


def test_foreign_file_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", w=np.ones(3))
    with pytest.raises(ValueError, match="not a fuseprop checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "other.npz", net(0))


def fail_midway(f, tensors, meta):
    f.write(b"half a checkpoint")
    raise RuntimeError("simulated crash")


def failing_fsync(fd):
    raise OSError("simulated disk failure")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("failure", ["writer", "fsync"])
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fmt, failure):
    model = net(0)
    checkpoint.save_checkpoint(tmp_path / "ckpt", model, extra={"epoch": 1}, format=fmt)
    saved = {k: v.copy() for k, v in model.state_dict().items()}
    model[0].weight.data += 1
    if failure == "writer":
        monkeypatch.setattr(checkpoint, f"_write_{fmt}", fail_midway)
    else:
        monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises((RuntimeError, OSError), match="simulated"):
        checkpoint.save_checkpoint(tmp_path / "ckpt", model, extra={"epoch": 2}, format=fmt)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt"]
    restored = net(1)
    assert checkpoint.load_checkpoint(tmp_path / "ckpt", restored) == {"epoch": 1}
    for k, v in restored.state_dict().items():
        np.testing.assert_array_equal(v, saved[k])
