"""Checkpoints of a model, its optimizer and any extra values, without pickle.

Arrays are stored as named tensors ("model.0.weight", "optimizer.state.0.exp_avg", "extra.<key>"); the
rest (optimizer hyper-parameters, step counts, extra values) goes into one JSON string in which every
array is replaced by a reference to its tensor. The file is safetensors (a .safetensors name, or any
name other than .npz when the safetensors package is importable) or a .npz that np.load reads with
allow_pickle=False. Saves are atomic; loads check everything before changing anything.
"""
from __future__ import annotations

import io
import json
import os
import uuid

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = "fuseprop-checkpoint"
_VERSION = 1
_META_KEY = "__fuseprop__"  # the JSON's name: a safetensors metadata key, or an npz entry (a 0-d str array)


def _encode(value, name: str, tensors: dict):
    """value as JSON, its arrays moved into tensors. Tuples and dicts are tagged so that they come
    back as tuples and as dicts with their original (int or str) keys, as PyTorch's layout has them."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:  # would need pickle
            raise TypeError(f"cannot store {name}: arrays of Python objects are not supported")
        if name in tensors:
            raise ValueError(f"two values would be stored as tensor {name!r}")
        tensors[name] = np.ascontiguousarray(value)
        return {"tensor": name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if any(isinstance(k, bool) or not isinstance(k, (int, str)) for k in value):
            raise TypeError(f"cannot store {name}: dict keys must be str or int")
        return {"dict": [[k, _encode(v, f"{name}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{name}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {name} of type {type(value).__name__} in a checkpoint")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        (tag, inner), = value.items()
        if tag == "tensor":
            return tensors[inner]
        if tag == "tuple":
            return tuple(_decode(v, tensors) for v in inner)
        return {k: _decode(v, tensors) for k, v in inner}
    return value


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        return None
    return safetensors


def _write_npz(f, tensors: dict, meta: str):
    np.savez(f, **tensors, **{_META_KEY: np.array(meta)})


def _write_safetensors(f, tensors: dict, meta: str):
    f.write(_safetensors().numpy.save(tensors, metadata={_META_KEY: meta}))


def _write_atomic(path: str, write) -> None:
    """write(file) into a temporary file beside path, made durable, then renamed over path: a crash or
    an exception at any point leaves either the old file or the new one, and no temporary file."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX only)
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def default_format() -> str:
    """The format save_checkpoint writes by default: "safetensors" when it is installed, else "npz"."""
    return "safetensors" if _safetensors() else "npz"


_EXTENSIONS = {".safetensors": "safetensors", ".npz": "npz"}


def save_checkpoint(path, model, optimizer=None, extra=None, format: str | None = None) -> None:
    """Save model's parameters and buffers, optimizer's state_dict() and extra (JSON values, tuples and NumPy arrays,
    nested in dicts and lists) to path, atomically. format is "safetensors" or "npz"; None takes it from
    path's extension (.safetensors or .npz), and for any other name picks safetensors when it is
    installed (pip install 'fuseprop[checkpoint]'), else npz. A format the extension contradicts is refused."""
    path = os.fspath(path)
    if format is not None and format not in ("safetensors", "npz"):
        raise ValueError(f"format must be 'safetensors', 'npz' or None, got {format!r}")
    named = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if format is None:
        format = named or default_format()
    elif named is not None and named != format:
        raise ValueError(f"format={format!r} contradicts the file name {os.path.basename(path)!r} (a {named} "
                         "extension): a reader would take one for the other")
    if format == "safetensors" and not _safetensors():
        raise ImportError(f"writing {os.path.basename(path)!r} as safetensors needs the safetensors package: "
                          "pip install 'fuseprop[checkpoint]' (or save to a .npz name)")
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    saved_opt = None if optimizer is None else {
        "type": type(optimizer).__name__, "state_dict": _encode(optimizer.state_dict(), "optimizer", tensors)}
    meta = json.dumps({"format": _FORMAT, "version": _VERSION, "optimizer": saved_opt,
                       "extra": _encode(extra, "extra", tensors)})
    writer = _write_safetensors if format == "safetensors" else _write_npz
    _write_atomic(path, lambda f: writer(f, tensors, meta))


def _read(path: str):
    """(tensors, metadata) of a checkpoint in either format, told apart by content (npz is a zip)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"PK\x03\x04":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            tensors = {k: npz[k] for k in npz.files}
        meta = tensors.pop(_META_KEY, None)
        meta = None if meta is None else meta.item()
    else:
        st = _safetensors()
        if st is None:
            raise ImportError(f"{path} is not an npz; reading safetensors needs the safetensors package")
        tensors = st.numpy.load(data)
        header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 length, then a JSON header
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {}).get(_META_KEY)
    if meta is None:
        raise ValueError(f"{path} is not a fuseprop checkpoint (no {_META_KEY} metadata)")
    meta = json.loads(meta)
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r} version {meta.get('version')!r}")
    return tensors, meta


def load_checkpoint(path, model, optimizer=None):
    """Restore model (and optimizer) from path and return the saved extra. Every name, shape and dtype is
    checked against the model and optimizer first: a mismatch raises KeyError or ValueError and changes nothing."""
    path = os.fspath(path)
    tensors, meta = _read(path)
    params = model.state_dict()  # parameters and buffers (BatchNorm's running statistics), as saved
    saved = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise KeyError(f"{path} does not match the model: missing keys {missing}, unexpected keys {unexpected}")
    for name, p in params.items():
        if saved[name].shape != p.shape or saved[name].dtype != p.dtype:
            raise ValueError(f"{path}: {name} is {saved[name].dtype}{list(saved[name].shape)}, "
                             f"the model has {p.dtype}{list(p.shape)}")
    if optimizer is not None:
        saved_opt = meta["optimizer"]
        if saved_opt is None:
            raise KeyError(f"{path} holds no optimizer state")
        if saved_opt["type"] != type(optimizer).__name__:
            raise ValueError(f"{path} holds {saved_opt['type']} state, the optimizer is {type(optimizer).__name__}")
        state_dict = _decode(saved_opt["state_dict"], tensors)
        _check_optimizer_dtypes(path, optimizer, state_dict)
        optimizer.load_state_dict(state_dict)  # checks everything else before it changes anything
    model.load_state_dict(saved)  # cannot fail now: names, shapes and dtypes were checked above
    return _decode(meta["extra"], tensors)


def _check_optimizer_dtypes(path: str, optimizer, state_dict: dict):
    # Optimizer.load_state_dict would convert state arrays to the parameter's dtype; a checkpoint
    # from a model of another precision is refused instead, like the parameters themselves.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, entry in state_dict["state"].items():
        for k, v in entry.items():
            if isinstance(v, np.ndarray) and 0 <= i < len(params) and v.dtype != params[i].dtype:
                raise ValueError(f"{path}: optimizer state {k!r} of parameter {i} is {v.dtype}, "
                                 f"the parameter is {params[i].dtype}")
