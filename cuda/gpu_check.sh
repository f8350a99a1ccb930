#!/usr/bin/env bash
# One command for a machine with a GPU: build and install, show the build, run the CUDA tests, time
# the TF32 GEMM at 4096^3 against torch.matmul (TF32 allowed), and run benchmarks/gpu.py (the RESULTS table). Run from anywhere: bash cuda/gpu_check.sh
# Needs python3 with numpy, pytest, pybind11, scikit-build-core, cmake, ninja and nvcc; torch for the timing.
# Writes everything it prints to $OUT/gpu_check.log when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# PIP_BREAK_SYSTEM_PACKAGES: a system python3 may be marked externally managed; the machine is disposable.
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-build-isolation -q .
python3 -c "import fuseprop, pprint; pprint.pprint(fuseprop.build_info())"  # the installed package (source is in python/)
tests=0
# Every CUDA test file (tests/test_cuda*.py), then the CPU suite's parity tests once more on this build.
python3 -m pytest -q -p no:cacheprovider tests/test_cuda*.py || tests=$?  # time even if they fail
# The op registry's CUDA twins (tests/ops/op_registry.py's cuda= runners) against the float64 reference.
python3 -m pytest -q -p no:cacheprovider -m cuda tests/ops || tests=$?

python3 - <<'PY'
# Device time only: fuseprop's cuda_matmul_time_ms times device-resident operands with CUDA events
# (no host copies); torch.matmul is timed the same way, median of 20 after a warm-up.
import sys

import numpy as np
import torch
from fuseprop import _C

n, repeats = 4096, 20
flop = 2.0 * n**3
for tf32 in (True, False):
    ms = _C.cuda_matmul_time_ms(n, n, n, tf32, repeats)
    print(f"fuseprop cuda_matmul {'TF32' if tf32 else 'FP32'} {n}^3: {ms:8.3f} ms  {flop / ms / 1e9:8.1f} GFLOP/s")

torch.backends.cuda.matmul.allow_tf32 = True
sys.path.insert(0, "benchmarks")
from gpu import torch_matmul_ms  # the same CUDA-event timing as the benchmark table
ms_torch = torch_matmul_ms(torch, n, n, n, repeats)
ms_tf32 = _C.cuda_matmul_time_ms(n, n, n, True, repeats)
print(f"torch.matmul TF32 {n}^3: {ms_torch:8.3f} ms  {flop / ms_torch / 1e9:8.1f} GFLOP/s")
print(f"fuseprop TF32 / torch TF32 time: {ms_tf32 / ms_torch:.2f}x")

# The same product checked once at this size: TF32 within its bound of the float64 result.
rng = np.random.default_rng(0)
x, y = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
want = torch.from_numpy(x).double().cuda() @ torch.from_numpy(y).double().cuda()
got = torch.from_numpy(_C.cuda_matmul(x, y, tf32=True)).double().cuda()
bound = (2.0**-10 + n * 2.0**-23) * float((torch.from_numpy(x).double().abs().cuda() @ torch.from_numpy(y).double().abs().cuda()).max())
err = float((got - want).abs().max())
print(f"TF32 {n}^3 max abs error {err:.3e} (bound {bound:.3e}): {'ok' if err <= bound else 'FAIL'}")
if err > bound:
    raise SystemExit(1)
PY

# The issue-5 table: GEMM and train-step timings against torch (eager and torch.compile).
python3 benchmarks/gpu.py --out "${OUT:-/tmp}/gpu_bench.md" || tests=$((tests ? tests : 1))
exit "$tests"
