"""The program tests/test_mpi.py starts under mpirun: python tests/mpi_job.py SCENARIO OUT_DIR.

equivalence  fit(distributed=...) for 2 epochs with buckets of 1 KiB and with one bucket; every rank
             saves its weights and losses to OUT_DIR/rank<r>.npz for the test to compare with one process
kill         rank 1 kills itself (SIGKILL) after 3 steps
hang         rank 1 stops answering (sleeps) after 3 steps; the others' timeout is 3 s
"""
import os
import signal
import sys
import time

import numpy as np

from fuseprop import training
from fuseprop.distributed import DataParallel


def problem():
    """257 samples (batches of 32: the last global batch has one sample, so rank 1's part is empty)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(257, 30)).astype(np.float32)
    y = (x @ rng.normal(size=(30, 4))).argmax(1)
    return x, y


def model_and_optimizer():
    from fuseprop import nn, optim
    g = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(30, 64, generator=g), nn.ReLU(), nn.Linear(64, 32, generator=g), nn.GELU(),
                          nn.Linear(32, 4, generator=g))
    return model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)


FIT = dict(epochs=2, batch_size=32, seed=3, verbose=0)


class Fault(training.Callback):
    def __init__(self, rank, kind):
        self.rank, self.kind = rank, kind

    def on_batch_end(self, batch, logs=None):
        if self.rank == 1 and batch == 2:
            if self.kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)


def main(scenario, out):
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    x, y = problem()
    if scenario == "equivalence":
        saved = {}
        for label, bucket_bytes in (("buckets", 1024), ("one_bucket", None)):
            model, opt = model_and_optimizer()
            ddp = DataParallel(model, bucket_bytes=bucket_bytes, timeout=30)
            history = model.fit(x, y, optimizer=opt, distributed=ddp, **FIT)
            saved.update({f"{label}/{k}": v for k, v in model.state_dict().items()})
            saved[f"{label}/loss"] = np.array(history.history["loss"])
            saved[f"{label}/buckets"] = np.array(ddp.bucket_count)
        np.savez(os.path.join(out, f"rank{rank}.npz"), **saved)
    else:
        model, opt = model_and_optimizer()
        ddp = DataParallel(model, timeout=3)
        model.fit(x, y, optimizer=opt, distributed=ddp, callbacks=[Fault(rank, scenario)], **FIT)
        print(f"rank {rank} finished, which it should not have", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
