"""Datasets on disk: the IDX format (MNIST, Fashion-MNIST), their loaders, and shuffled mini-batches.

read_idx checks a whole header before it allocates anything, so a damaged or hostile file fails
with a ValueError naming the file and the field instead of exhausting memory.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import sys
import urllib.request
import uuid
import zlib

import numpy as np

from . import _random

__all__ = ["read_idx", "write_idx", "load_mnist", "load_fashion_mnist", "batches"]

# IDX type codes, stored big-endian (https://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MAX_NDIM = 32  # NumPy 1.x's limit (2.x allows 64); no IDX file in use has more than 3
# Deflate cannot expand data by more than about 1032:1, so a header claiming more than this many
# bytes per compressed byte is a lie (or a gzip bomb) and is refused before decompressing anything.
_MAX_DEFLATE_RATIO = 1100
_CHUNK = 1 << 20


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (raw or gzip, told apart by the gzip magic 1f 8b, not by the name),
    in native byte order. Raises ValueError naming the file and the field when the file is malformed."""
    path = os.fspath(path)
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                try:
                    return _read_idx_stream(f, path, max_data=_MAX_DEFLATE_RATIO * size)
                except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                    raise ValueError(f"{path}: corrupt gzip stream ({e})") from None
        return _read_idx_stream(raw, path, exact_data=size)


def _read_idx_stream(f, path: str, exact_data: int | None = None, max_data: int | None = None) -> np.ndarray:
    """Parse from f. exact_data (a raw file's size) or max_data (a gzip's bound) is checked before allocating."""
    head = f.read(4)
    if len(head) < 4:
        raise ValueError(f"{path}: header is truncated ({len(head)} of 4 magic bytes)")
    if head[:2] != b"\0\0":
        raise ValueError(f"{path}: magic number {head.hex()} does not start with two zero bytes")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: type code 0x{code:02X} is not an IDX type")
    if not 1 <= ndim <= _MAX_NDIM:
        raise ValueError(f"{path}: ndim {ndim} is not between 1 and {_MAX_NDIM}")
    dim_bytes = f.read(4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise ValueError(f"{path}: header is truncated ({len(dim_bytes)} of {4 * ndim} bytes of dims for ndim {ndim})")
    # Dims are 32-bit big-endian; read them signed so that a value >= 2**31 shows up as negative.
    dims = tuple(int(d) for d in np.frombuffer(dim_bytes, ">i4"))
    if any(d < 0 for d in dims):
        raise ValueError(f"{path}: dims {dims} has a negative size")
    dtype = _IDX_DTYPES[code]
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > sys.maxsize:
        raise ValueError(f"{path}: dims {dims} hold {nbytes} bytes, more than this machine can address")
    if exact_data is not None and nbytes != exact_data - 4 - 4 * ndim:
        raise ValueError(f"{path}: data size is {exact_data - 4 - 4 * ndim} bytes, dims {dims} of "
                         f"{dtype.name[1:]} need {nbytes}")
    if max_data is not None and nbytes > max_data:
        raise ValueError(f"{path}: dims {dims} need {nbytes} bytes, more than a gzip of this size can hold")
    data = bytearray(nbytes)
    view = memoryview(data)
    got = 0
    while got < nbytes:  # in chunks, so a stream that ends early never makes us read past the buffer
        n = f.readinto(view[got:got + _CHUNK])
        if not n:
            raise ValueError(f"{path}: data is truncated ({got} of {nbytes} bytes for dims {dims})")
        got += n
    if f.read(1):
        raise ValueError(f"{path}: data has trailing bytes after the {nbytes} that dims {dims} need")
    array = np.frombuffer(data, dtype).reshape(dims)
    return array if dtype.itemsize == 1 else array.byteswap(inplace=True).view(dtype.newbyteorder("="))


def write_idx(path, array, compress: bool | None = None) -> None:
    """Write array as an IDX file; gzip it when compress is True, or when it is None and path ends in .gz."""
    path = os.fspath(path)
    array = np.asarray(array)
    code = next((c for c, t in _IDX_DTYPES.items() if t.kind == array.dtype.kind
                 and t.itemsize == array.dtype.itemsize), None)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of "
                         f"{', '.join(t.name[1:] for t in _IDX_DTYPES.values())}")
    if not 1 <= array.ndim <= _MAX_NDIM or any(d >= 2**31 for d in array.shape):
        raise ValueError(f"IDX cannot store shape {array.shape}")
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
               + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes())
    if compress if compress is not None else path.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # mtime=0: the same array always gives the same bytes
    with open(path, "wb") as f:
        f.write(payload)


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _find_file(directory: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        full = os.path.join(directory, candidate)
        if os.path.isfile(full):
            return full
    return None


def _has_mnist_files(directory: str) -> bool:
    return all(_find_file(directory, name) for name in _MNIST_FILES)


def _read_split(directory: str, images_name: str, labels_name: str):
    paths = []
    for name in (images_name, labels_name):
        path = _find_file(directory, name)
        if path is None:
            raise FileNotFoundError(f"{os.path.join(directory, name)}(.gz) not found")
        paths.append(path)
    x, y = read_idx(paths[0]), read_idx(paths[1])
    for path, a, ndim in ((paths[0], x, 3), (paths[1], y, 1)):
        if a.dtype != np.uint8 or a.ndim != ndim:
            raise ValueError(f"{path}: expected ubyte data of ndim {ndim}, got {a.dtype} of ndim {a.ndim}")
    if len(x) != len(y):
        raise ValueError(f"{paths[0]} has {len(x)} images but {paths[1]} has {len(y)} labels")
    return x, y


def load_mnist(path):
    """(x_train, y_train), (x_test, y_test) from the four MNIST-layout IDX files in directory path (each raw
    or .gz), as keras' load_data() returns them: uint8 images (N, 28, 28) and uint8 labels (N,)."""
    path = os.fspath(path)
    return _read_split(path, *_MNIST_FILES[:2]), _read_split(path, *_MNIST_FILES[2:])


# Fashion-MNIST's official location and the MD5s of its .gz files, from the dataset's README
# (https://github.com/zalandoresearch/fashion-mnist). Module attributes so a mirror can be used.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Debian's dataset-fashion-mnist package installs the four files here (recompressed, so their MD5s
# differ from the official ones: local files are validated structurally by read_idx instead).
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download is abandoned


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fuseprop", "fashion-mnist")


def _search_dirs() -> list[str]:
    dirs = []
    if os.environ.get("FUSEPROP_DATA"):
        dirs += [os.environ["FUSEPROP_DATA"], os.path.join(os.environ["FUSEPROP_DATA"], "fashion-mnist")]
    return dirs + [SYSTEM_DIR, _cache_dir()]


def _download(url: str, dest: str, md5: str) -> None:
    """Fetch url to dest through a temporary file renamed into place only once its MD5 is right."""
    tmp = f"{dest}.{uuid.uuid4().hex}.part"
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(tmp, "xb") as f:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"{url}: MD5 {digest.hexdigest()} does not match the published {md5}; "
                             f"the download is corrupt and was deleted")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_fashion_mnist(path=None, download: bool = False):
    """Fashion-MNIST as (x_train, y_train), (x_test, y_test), laid out as load_mnist returns it.

    With path, the files are read from that directory (no search, no download). Without it, the first
    directory holding the four files wins: $FUSEPROP_DATA, $FUSEPROP_DATA/fashion-mnist,
    /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), then the user cache
    ($XDG_CACHE_HOME or ~/.cache)/fuseprop/fashion-mnist. With download=True and nothing found, the
    files are fetched from FASHION_MNIST_URL into the cache and checked against FASHION_MNIST_MD5."""
    if path is not None:
        return load_mnist(path)
    for directory in _search_dirs():
        if _has_mnist_files(directory):
            return load_mnist(directory)
    if not download:
        raise FileNotFoundError(
            "Fashion-MNIST not found in " + ", ".join(_search_dirs()) + ". Get it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or call load_fashion_mnist(download=True), "
            "or put the four IDX files in a directory and set FUSEPROP_DATA to it.")
    cache = _cache_dir()
    os.makedirs(cache, exist_ok=True)
    for name, md5 in FASHION_MNIST_MD5.items():
        if _find_file(cache, name.removesuffix(".gz")) is None:
            _download(FASHION_MNIST_URL.rstrip("/") + "/" + name, os.path.join(cache, name), md5)
    return load_mnist(cache)


def batches(x, y, batch_size: int, shuffle: bool = True, drop_last: bool = False, rng=None, *, shard=None):
    """One epoch of (x_batch, y_batch) pairs, in a fresh random order per call (drawn from rng, a
    numpy.random.Generator; default fuseprop's, see manual_seed) unless shuffle is False.
    Each batch is one gather (x[indices], y[indices]); without shuffling, batches are views (slices).

    shard=(rank, world_size): data-parallel training. Every rank draws the same order (give every rank
    an rng of the same seed) and gets its part of each batch of batch_size samples (the global batch):
    np.array_split's parts, contiguous and of sizes that differ by at most one, so a short last batch
    leaves the higher ranks one sample fewer, or none (an empty batch)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if shard is not None:
        ok = isinstance(shard, tuple) and len(shard) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
        if not ok or not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    n = len(x)
    # Drawn now, not at the first next(), so the generator advances in call order (one draw per epoch).
    order = _random.resolve(rng).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    return _iterate(x, y, order, int(batch_size), stop, shard)


def _iterate(x, y, order, batch_size, stop, shard, first=0):
    """Batches first, first+1, ... over the rows order names (None: unshuffled), up to row stop."""
    for start in range(first * batch_size, stop, batch_size):
        end = min(start + batch_size, stop)
        if shard is not None:  # rank r's part of [start, end), as np.array_split cuts it
            count, (rank, world) = end - start, shard
            size, extra = divmod(count, world)
            start, end = start + rank * size + min(rank, extra), start + (rank + 1) * size + min(rank + 1, extra)
        index = slice(start, end) if order is None else order[start:end]
        yield x[index], y[index]
