"""fuseprop.distributed under mpirun: 2 ranks (processes) on this machine, with Open MPI and mpi4py.

These need `mpirun` and mpi4py (.ci/run installs Debian's openmpi-bin and libopenmpi-dev and the `mpi`
extra). Without them they are skipped, except in CI (CI=true), where they fail: CI must not pass by
skipping them."""
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from fuseprop import datasets

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "mpi_job.py")
sys.path.insert(0, HERE)
import mpi_job  # noqa: E402  (the problem and model the ranks train, to train them here in one process)


def missing():
    why = []
    if shutil.which("mpirun") is None:
        why.append("mpirun (apt-get install openmpi-bin libopenmpi-dev)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        why.append("mpi4py (pip install 'fuseprop[mpi]')")
    return why


@pytest.fixture(scope="module", autouse=True)
def need_mpi():
    why = missing()
    if why and os.environ.get("CI") == "true":
        pytest.fail("CI must run the MPI tests, but this machine lacks " + " and ".join(why))
    if why:
        pytest.skip("needs " + " and ".join(why))


def mpirun(ranks, *argv, timeout=120):
    """Run argv on `ranks` ranks; (return code, stdout + stderr, seconds)."""
    from fuseprop.distributed import mpirun_command
    start = time.monotonic()
    proc = subprocess.run(mpirun_command(ranks) + list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, time.monotonic() - start


def test_two_ranks_match_one_process_with_and_without_buckets(tmp_path):
    code, out, _ = mpirun(2, sys.executable, JOB, "equivalence", str(tmp_path))
    assert code == 0, out
    x, y = mpi_job.problem()
    model, opt = mpi_job.model_and_optimizer()
    history = model.fit(x, y, optimizer=opt, **mpi_job.FIT)  # one process, the same global batches
    expected = model.state_dict()
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert int(ranks[0]["buckets/buckets"]) == 4 and int(ranks[0]["one_bucket/buckets"]) == 1
    for saved in ranks:
        for k, v in expected.items():
            np.testing.assert_allclose(saved[f"buckets/{k}"], v, rtol=1e-5, atol=1e-6, err_msg=k)
            # bucketing changes when the sums start, not what they add: the same bits
            np.testing.assert_array_equal(saved[f"buckets/{k}"], saved[f"one_bucket/{k}"], err_msg=k)
            np.testing.assert_array_equal(saved[f"buckets/{k}"], ranks[0][f"buckets/{k}"], err_msg=k)
        np.testing.assert_allclose(saved["buckets/loss"], history.history["loss"], rtol=1e-5)


@pytest.mark.parametrize("fault, says", [
    ("kill", r"exited on signal 9|Killed"),
    ("hang", r"rank 0 of 2: the all-reduce of the gradients \(step 4\) did not complete within 3 s: another rank "
             r"has died, hangs, or called a different collective; aborting the job")], ids=["kill", "hang"])
def test_a_dead_or_hung_rank_ends_the_job_with_a_clear_error_in_bounded_time(tmp_path, fault, says):
    code, out, seconds = mpirun(2, sys.executable, JOB, fault, str(tmp_path))
    assert code != 0 and re.search(says, out), out
    assert "finished, which it should not have" not in out
    assert seconds < 60, f"took {seconds:.1f} s"


def idx_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300).astype(np.uint8)
    images = (np.kron(np.eye(3)[labels], np.ones(48)).reshape(300, 12, 12) * 200
              + rng.integers(0, 50, (300, 12, 12))).astype(np.uint8)
    args = []
    for flag, arr in (("--train-images", images), ("--train-labels", labels), ("--test-images", images[:100]),
                      ("--test-labels", labels[:100])):
        path = tmp_path / f"{flag[2:]}.gz"
        datasets.write_idx(path, arr)
        args += [flag, str(path)]
    return args + ["--hidden", "16", "--epochs", "3", "--verbose", "2"]


def test_cli_train_distributed(tmp_path):
    args = idx_files(tmp_path)
    code, out, _ = mpirun(2, sys.executable, "-m", "fuseprop", "train", "--distributed", "--timeout", "30",
                          "--out", str(tmp_path / "out"), *args)
    assert code == 0, out
    assert out.count("final test accuracy") == 1 and out.count("epoch 3/3") == 1  # rank 0 alone prints
    assert "over 2 ranks" in out and os.listdir(tmp_path / "out")
    one = subprocess.run([sys.executable, "-m", "fuseprop", "train", *args], capture_output=True, text=True,
                         timeout=120)
    accuracy = [re.search(r"final test accuracy ([\d.]+)%", o).group(1) for o in (out, one.stdout)]
    assert accuracy[0] == accuracy[1] and float(accuracy[0]) > 90
