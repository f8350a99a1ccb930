"""The build: the kernels are portable C++ that also compiles for aarch64 (checked with a cross
compiler when one is installed; .ci/run installs Debian's g++-aarch64-linux-gnu)."""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
CROSS = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)")
# What CMake builds on aarch64: every kernel source in csrc/'s folders but the x86-only SIMD files
# (*_avx2.cpp, *_avx512.cpp) and the bindings (csrc/python/).
@pytest.mark.parametrize("source", sorted(p.relative_to(CSRC).as_posix() for p in CSRC.rglob("*.cpp")
                                          if p.parent.name != "python" and not p.stem.endswith(("_avx2", "_avx512"))))
def test_kernel_compiles_for_aarch64(source, tmp_path):
    result = subprocess.run([CROSS, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-c", str(CSRC / source),
                             "-I", str(CSRC), "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
