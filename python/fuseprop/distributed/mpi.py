"""MPI for the data-parallel trainer: mpi4py on demand, deadlines for collectives, threads per rank,
and the mpirun command line."""
from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["DistributedError", "threads_per_rank", "mpirun_command", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 60.0  # seconds a rank waits for the others at any one collective; $FUSEPROP_DIST_TIMEOUT overrides


class DistributedError(RuntimeError):
    """A collective did not complete in time (a rank died or hangs), or the ranks do not agree."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("fuseprop.distributed needs mpi4py and an MPI library: pip install 'fuseprop[mpi]' and, "
                          "on Debian or Ubuntu, apt-get install openmpi-bin libopenmpi-dev") from e
    return MPI


def _default_timeout() -> float:
    value = os.environ.get("FUSEPROP_DIST_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        return _check_timeout(float(value), "FUSEPROP_DIST_TIMEOUT")
    except ValueError:
        raise ValueError(f"FUSEPROP_DIST_TIMEOUT must be a positive number of seconds, got {value!r}") from None


def _check_timeout(value, name="timeout") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def threads_per_rank(comm=None) -> int:
    """The kernel threads each rank should use: the CPUs this process may run on, shared among the
    ranks on this machine (mpirun binds each rank to one core by default: then 1)."""
    MPI = _mpi()
    comm = comm if comm is not None else MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks_here = local.Get_size()
    finally:
        local.Free()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // ranks_here) if cpus > 1 else 1


def mpirun_command(ranks: int, mpirun: str = "mpirun") -> list:
    """The mpirun argv that starts `ranks` processes on this machine, with what Open MPI needs in a
    container: --oversubscribe (more ranks than cores), --allow-run-as-root when root, and no
    single-copy shared-memory transfers (CMA needs ptrace rights that containers often lack).
    Append your program: mpirun_command(2) + [sys.executable, "train.py"]."""
    import shutil
    import subprocess
    path = shutil.which(mpirun)
    if path is None:
        raise FileNotFoundError(f"{mpirun} not found: install Open MPI (Debian: apt-get install openmpi-bin "
                                "libopenmpi-dev)")
    argv = [path, "-n", str(int(ranks))]
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "Open RTE" in version:
        argv += ["--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.append("--allow-run-as-root")
    return argv
