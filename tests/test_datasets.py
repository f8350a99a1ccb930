"""IDX files, the (Fashion-)MNIST loaders, downloads from a local server, and mini-batches."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import re
import threading
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fuseprop
import fuseprop.datasets as datasets

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 4), (2, 3, 5), (1, 2, 1, 3)])
@pytest.mark.parametrize("dtype", IDX_DTYPES)
def test_idx_round_trip(tmp_path, dtype, shape, compress):
    a = sample(dtype, shape)
    path = tmp_path / "a.idx"
    datasets.write_idx(path, a, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    b = datasets.read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and b.shape == shape
    np.testing.assert_array_equal(a, b)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    a = sample(np.int32, (4, 3))
    datasets.write_idx(tmp_path / "raw.gz", a, compress=False)
    datasets.write_idx(tmp_path / "packed.idx", a, compress=True)
    datasets.write_idx(tmp_path / "default.gz", a)  # compress=None follows the name
    assert (tmp_path / "default.gz").read_bytes()[:2] == b"\x1f\x8b"
    for name in ("raw.gz", "packed.idx", "default.gz"):
        np.testing.assert_array_equal(datasets.read_idx(tmp_path / name), a)


def test_write_idx_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        datasets.write_idx(tmp_path / "a", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="shape"):
        datasets.write_idx(tmp_path / "a", np.float32(1))


def idx_bytes(code=0x08, dims=(2, 3), data=None, magic=b"\0\0", ndim=None):
    head = magic + bytes([code, len(dims) if ndim is None else ndim]) + np.asarray(dims, ">u4").tobytes()
    return head + (bytes(int(np.prod(dims))) if data is None else data)


MALFORMED = {
    "bad magic": (idx_bytes(magic=b"\0\1"), "magic number"),
    "bad type": (idx_bytes(code=0x07), "type code 0x07 is not an IDX type"),
    "ndim zero": (idx_bytes(ndim=0), "ndim 0"),
    "ndim larger than the dims present": (idx_bytes(dims=(2,), ndim=3), "ndim 3"),
    "truncated header": (b"\0\0\x08", "header is truncated"),
    "truncated data": (idx_bytes(data=bytes(5)), "data"),
    "trailing bytes": (idx_bytes(data=bytes(7)), "data"),
    "trailing bytes on empty data": (idx_bytes(dims=(0, 3), data=b"x"), "data"),
    "negative dim": (idx_bytes(dims=(2**32 - 1, 1), data=b""), "negative"),
    "huge dims": (idx_bytes(code=0x0E, dims=(2**31 - 1,) * 3, data=b""), "dims"),
    "overflowing dims": (idx_bytes(dims=(2**31 - 1,) * 8, data=b""), "dims"),
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_idx_raises_value_error_naming_file_and_field(tmp_path, case, compress):
    content, field = MALFORMED[case]
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": .*" + re.escape(field)):
        datasets.read_idx(path)


def test_corrupt_gzip_raises_value_error(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(dims=(100,), data=bytes(range(100)))))
    packed[-6] ^= 0xFF  # the CRC
    path = tmp_path / "crc.idx.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(ValueError, match="corrupt gzip"):
        datasets.read_idx(path)


def test_gzip_bomb_is_stopped_at_the_size_the_header_claims(tmp_path):
    # 10 bytes announced, 64 MiB of zeros delivered: reading must stop after the 11th byte.
    packer = zlib.compressobj(wbits=31)  # gzip framing
    chunk = bytes(1 << 20)
    packed = packer.compress(idx_bytes(dims=(10,))) + b"".join(packer.compress(chunk) for _ in range(64)) + packer.flush()
    path = tmp_path / "bomb.idx.gz"
    path.write_bytes(packed)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="trailing bytes"):
            datasets.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def read_or_value_error(path):
    try:
        datasets.read_idx(path)
    except ValueError as e:
        assert str(path) in str(e)


FUZZ = settings(max_examples=100, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(content=st.binary(max_size=64), gz=st.booleans())
def test_fuzz_random_bytes_raise_only_value_error(tmp_path, content, gz):
    path = tmp_path / "fuzz.idx"
    path.write_bytes(gzip.compress(content) if gz else content)
    read_or_value_error(path)


VALID = idx_bytes(code=0x0B, dims=(3, 2), data=bytes(range(12)))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 64), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 64), tail=st.binary(max_size=4), gz=st.booleans(), edit_compressed=st.booleans())
def test_fuzz_mutated_files_raise_only_value_error(tmp_path, edits, cut, tail, gz, edit_compressed):
    content = bytearray(gzip.compress(VALID, mtime=0) if gz and edit_compressed else VALID)
    for pos, value in edits:
        content[pos % len(content)] = value
    content = bytes(content[:len(content) - cut % 8]) + tail
    if gz and not edit_compressed:
        content = gzip.compress(content)
    path = tmp_path / "fuzz.idx"
    path.write_bytes(content)
    read_or_value_error(path)


def write_mnist(directory, n_train=12, n_test=5, seed=0, compress=True):
    """Four small MNIST-layout files; returns the arrays load_mnist should give back."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)]
    for name, a in zip(datasets._MNIST_FILES, arrays):
        datasets.write_idx(os.path.join(directory, name + (".gz" if compress else "")), a)
    return arrays


def assert_loaded(loaded, arrays):
    (x, y), (xt, yt) = loaded
    for got, want in zip((x, y, xt, yt), arrays):
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No Fashion-MNIST anywhere: FUSEPROP_DATA unset, the system directory and the cache empty."""
    monkeypatch.delenv("FUSEPROP_DATA", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("subfolder", ["", "fashion-mnist"])
@pytest.mark.parametrize("compress", [False, True])
def test_load_fashion_mnist_from_fuseprop_data(no_data, monkeypatch, subfolder, compress):
    arrays = write_mnist(no_data / "data" / subfolder, compress=compress)
    monkeypatch.setenv("FUSEPROP_DATA", str(no_data / "data"))
    assert_loaded(datasets.load_fashion_mnist(), arrays)
    assert_loaded(datasets.load_mnist(no_data / "data" / subfolder), arrays)


def test_load_mnist_checks_counts_and_layout(tmp_path):
    write_mnist(tmp_path)
    datasets.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        datasets.load_mnist(tmp_path)
    datasets.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((5, 1), np.uint8))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: expected ubyte data of ndim 1"):
        datasets.load_mnist(tmp_path)


def test_not_found_says_how_to_get_the_data(no_data):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_fashion_mnist()
    for hint in ("apt-get install dataset-fashion-mnist", "download=True", "FUSEPROP_DATA"):
        assert hint in str(info.value)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served; yields (base URL, list of requested paths)."""
    root = tmp_path / "served"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve_mnist(root, monkeypatch, url):
    arrays = write_mnist(root)
    md5 = {name + ".gz": hashlib.md5((root / (name + ".gz")).read_bytes()).hexdigest()
           for name in datasets._MNIST_FILES}
    monkeypatch.setattr(datasets, "FASHION_MNIST_URL", url)
    monkeypatch.setattr(datasets, "FASHION_MNIST_MD5", md5)
    return arrays, md5


def test_download_fetches_verifies_and_caches(no_data, server, monkeypatch):
    url, root, requests = server
    arrays, _ = serve_mnist(root, monkeypatch, url)
    assert_loaded(datasets.load_fashion_mnist(download=True), arrays)
    assert sorted(requests) == sorted("/" + name + ".gz" for name in datasets._MNIST_FILES)
    cache = no_data / "cache" / "fuseprop" / "fashion-mnist"
    assert sorted(os.listdir(cache)) == sorted(name + ".gz" for name in datasets._MNIST_FILES)
    assert_loaded(datasets.load_fashion_mnist(download=True), arrays)
    assert len(requests) == 4  # the second call read the cache


def test_download_with_wrong_checksum_raises_and_leaves_nothing(no_data, server, monkeypatch):
    url, root, _ = server
    _, md5 = serve_mnist(root, monkeypatch, url)
    monkeypatch.setitem(md5, "train-labels-idx1-ubyte.gz", "0" * 32)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: MD5 .* does not match"):
        datasets.load_fashion_mnist(download=True)
    cache = no_data / "cache" / "fuseprop" / "fashion-mnist"
    assert "train-labels-idx1-ubyte.gz" not in os.listdir(cache)
    assert not [f for f in os.listdir(cache) if f.endswith(".part")]


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian():
    (x, y), (xt, yt) = datasets.load_fashion_mnist("/usr/share/datasets/fashion-mnist")
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert all(a.dtype == np.uint8 for a in (x, y, xt, yt))
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10


def epoch(x, y, batch_size, **kwargs):
    return list(datasets.batches(x, y, batch_size, **kwargs))


def test_batches_are_deterministic_per_seed_and_reshuffled_each_epoch():
    x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    first = [yb for _, yb in epoch(x, y, 3, rng=rng_a)]
    assert all(np.array_equal(a, b) for a, b in zip(first, [yb for _, yb in epoch(x, y, 3, rng=rng_b)]))
    second = np.concatenate([yb for _, yb in epoch(x, y, 3, rng=rng_a)])
    assert not np.array_equal(np.concatenate(first), second)
    for order in (np.concatenate(first), second):  # every sample exactly once
        assert sorted(order.tolist()) == list(range(10))
    for xb, yb in epoch(x, y, 4, rng=rng_a):  # x and y stay paired
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)


def test_batches_use_fuseprops_default_generator():
    x = y = np.arange(50)
    fuseprop.manual_seed(7)
    a = np.concatenate([yb for _, yb in epoch(x, y, 8)])
    fuseprop.manual_seed(7)
    b = np.concatenate([yb for _, yb in epoch(x, y, 8)])
    np.testing.assert_array_equal(a, b)


def test_batches_drop_last_and_no_shuffle():
    x = y = np.arange(10)
    assert [len(yb) for _, yb in epoch(x, y, 3)] == [3, 3, 3, 1]
    assert [len(yb) for _, yb in epoch(x, y, 3, drop_last=True)] == [3, 3, 3]
    assert [len(yb) for _, yb in epoch(x, y, 5, drop_last=True)] == [5, 5]
    assert np.concatenate([yb for _, yb in epoch(x, y, 3, shuffle=False)]).tolist() == list(range(10))


class CountingArray(np.ndarray):
    gathers = 0

    def __getitem__(self, index):
        type(self).gathers += 1
        return np.asarray(self).__getitem__(index)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_gather_once_per_batch(shuffle):
    x = np.arange(30.0).reshape(10, 3).view(CountingArray)
    CountingArray.gathers = 0
    out = epoch(x, np.arange(10), 4, shuffle=shuffle)
    assert len(out) == 3 and CountingArray.gathers == 3


def test_batches_refuse_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        datasets.batches(np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="3 samples but y has 2"):
        datasets.batches(np.zeros(3), np.zeros(2), 1)
    with pytest.raises(TypeError, match="Generator"):
        datasets.batches(np.zeros(3), np.zeros(3), 1, rng=3)
