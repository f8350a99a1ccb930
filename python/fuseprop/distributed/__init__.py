"""Data-parallel training over MPI (mpi4py): several processes, on one machine or several, train one
model as one process would on the same global batches.

    mpirun -n 2 python -m fuseprop train --distributed          # or, in your own script:
    model.fit(x, y, ..., distributed=True)                       # or DataParallel(model).fit(x, y, ...)

How a step runs on each rank (``DataParallel.train_step``; ``fit(distributed=...)`` calls the same):
  1. Every rank holds the whole model; ``DataParallel(model)`` broadcasts rank 0's parameters once.
  2. ``fit``'s batch_size is the GLOBAL batch. Every rank draws the same shuffled order each epoch
     (same seed: rank 0's is broadcast when fit has none) and takes its part of every global batch
     (``datasets.batches(..., shard=(rank, size))``: contiguous, sizes differing by at most one, so a
     short last batch leaves the higher ranks one sample fewer, or none).
  3. Forward and loss on the local part; backward layer by layer from the output. All gradients live in
     ONE flat buffer (each ``param.grad`` is a view into it, in backward order) cut into buckets of
     about ``bucket_bytes``; a bucket's all-reduce (``Iallreduce``, non-blocking) starts as soon as the
     backward has written all its gradients, while the layers before it are still being differentiated.
  4. With a "mean" loss each rank's gradient is scaled by its sample count n_r before the sum and the
     sum divided by the global count afterwards: sum_r n_r * mean_r / sum_r n_r is the mean over the
     global batch, also for unequal or empty parts. (A "sum" loss is summed as it is.) The count, the
     loss and the correct predictions travel in the first bucket, so the reported loss and accuracy are
     those of the global batch, with no extra message.
  5. After every bucket has completed: penalties, clipping, the finiteness checks and ``optimizer.step()``,
     identical on every rank (the kernels are deterministic), so the replicas stay equal.
  6. Batch normalisation is the exception to "as one process would": each rank normalises its own part of
     the batch with that part's statistics (as torch's DDP without SyncBatchNorm). After every step rank
     0's buffers (the running statistics) are broadcast, so every replica holds the same model.

Faults. Every wait has a deadline (``timeout``, default 60 s or ``$FUSEPROP_DIST_TIMEOUT``): a collective
that does not complete in time (a rank died, hangs, or called a different collective) prints which rank
waited for what on stderr, aborts the communicator (``MPI_Abort``: the launcher ends every rank) and
raises DistributedError. ``mpirun`` itself ends the job when a rank is killed.

Without MPI: ``run_local(n, fn)`` runs fn(comm) on n threads, each with an in-process stand-in
communicator (``LocalComm``: the few mpi4py calls used here), to test training loops and this module.

The package: ``data_parallel`` (DataParallel), ``mpi`` (mpi4py on demand, deadlines, threads per rank,
mpirun), ``local`` (LocalComm and run_local).
"""
from __future__ import annotations

from .data_parallel import DEFAULT_BUCKET_BYTES, DataParallel
from .local import LocalComm, run_local
from .mpi import DEFAULT_TIMEOUT, DistributedError, mpirun_command, threads_per_rank

__all__ = ["DataParallel", "DistributedError", "LocalComm", "run_local", "threads_per_rank", "mpirun_command",
           "DEFAULT_TIMEOUT", "DEFAULT_BUCKET_BYTES"]
