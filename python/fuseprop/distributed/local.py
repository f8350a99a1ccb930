"""The in-process stand-in for MPI: LocalComm (the few mpi4py calls DataParallel makes) and run_local,
which runs fn(comm) on n threads to test training loops and the data-parallel trainer without MPI."""
from __future__ import annotations

import threading
import time

import numpy as np

from .mpi import DistributedError, _check_timeout

__all__ = ["LocalComm", "run_local"]


class _InPlace:
    def __repr__(self):
        return "LocalComm.IN_PLACE"


class _Group:
    """What the LocalComms of one run_local share: collectives by sequence number, and an abort flag."""

    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.slots = {}  # sequence number -> {"what", "data": {rank: array or None}, "taken": set}
        self.aborted = None  # (rank, error code)


class LocalComm:
    """An in-process stand-in for an mpi4py communicator, one per thread (see run_local), with the calls
    fuseprop.distributed makes: Get_rank, Get_size, Iallreduce (op SUM), Ibcast, Allreduce, Bcast,
    Barrier, Abort; requests have Test and Wait. As MPI requires, the ranks must issue the same
    collectives in the same order: a mismatch raises DistributedError. Sums run in rank order, so
    every rank gets the same bits. Abort does not end the process: every rank's next Test raises."""

    IN_PLACE = _InPlace()
    SUM = "SUM"

    def __init__(self, group: _Group, rank: int):
        self._group, self._rank, self._seq = group, rank, 0

    def Get_rank(self) -> int:
        return self._rank

    def Get_size(self) -> int:
        return self._group.size

    def _post(self, what, data, target, root=0):
        """Contribute data to this rank's next collective; the request copies the result into target."""
        g = self._group
        with g.cond:
            if g.aborted:
                raise DistributedError(f"the communicator was aborted by rank {g.aborted[0]}")
            slot = g.slots.setdefault(self._seq, {"what": what, "data": {}, "taken": set()})
            if slot["what"] != what:
                raise DistributedError(f"collective {self._seq}: rank {self._rank} called {what}, another rank "
                                       f"{slot['what']}")
            slot["data"][self._rank] = np.array(data, copy=True) if data is not None else None
            g.cond.notify_all()
        request = _LocalRequest(self, self._seq, what, target, root)
        self._seq += 1
        return request

    def Iallreduce(self, sendbuf, recvbuf, op=SUM):
        if op != self.SUM:
            raise NotImplementedError("LocalComm.Iallreduce supports op=SUM only")
        data = recvbuf if sendbuf is self.IN_PLACE else sendbuf
        return self._post(("Iallreduce", np.asarray(recvbuf).dtype.str, np.shape(recvbuf)), data, recvbuf)

    def Ibcast(self, buf, root=0):
        return self._post(("Ibcast", np.asarray(buf).dtype.str, np.shape(buf), root),
                          buf if self._rank == root else None, buf, root)

    def Allreduce(self, sendbuf, recvbuf, op=SUM):
        self.Iallreduce(sendbuf, recvbuf, op).Wait()

    def Bcast(self, buf, root=0):
        self.Ibcast(buf, root).Wait()

    def Barrier(self):
        self.Iallreduce(self.IN_PLACE, np.zeros(1)).Wait()

    def Abort(self, errorcode=1):
        g = self._group
        with g.cond:
            g.aborted = g.aborted or (self._rank, errorcode)
            g.cond.notify_all()


class _LocalRequest:
    def __init__(self, comm, seq, what, target, root):
        self._comm, self._seq, self._what, self._target, self._root = comm, seq, what, target, root
        self._done = False

    def Test(self) -> bool:
        if self._done:
            return True
        g = self._comm._group
        with g.cond:
            if g.aborted:
                raise DistributedError(f"the communicator was aborted by rank {g.aborted[0]} "
                                       f"(error code {g.aborted[1]})")
            slot = g.slots[self._seq]
            if len(slot["data"]) < g.size:
                return False
            if self._what[0] == "Iallreduce":
                total = slot["data"][0].copy()
                for r in range(1, g.size):
                    total += slot["data"][r]
            else:
                total = slot["data"][self._root]
            np.copyto(self._target, total)
            slot["taken"].add(self._comm._rank)
            if len(slot["taken"]) == g.size:
                del g.slots[self._seq]
        self._done = True
        return True

    def Wait(self):
        g = self._comm._group
        while not self.Test():
            with g.cond:
                g.cond.wait(0.01)


def run_local(world_size: int, fn, timeout: float = 120.0) -> list:
    """fn(comm) on world_size threads, each with its own LocalComm of one group; returns their results
    in rank order. The first exception (by rank) is raised once every thread has ended; a thread still
    running after timeout seconds raises DistributedError (it keeps running: a daemon thread)."""
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    timeout = _check_timeout(timeout)
    group = _Group(int(world_size))
    results, errors = [None] * world_size, [None] * world_size

    def body(rank):
        try:
            results[rank] = fn(LocalComm(group, rank))
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            errors[rank] = e

    threads = [threading.Thread(target=body, args=(r,), daemon=True, name=f"rank {r}") for r in range(world_size)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        raise DistributedError(f"run_local: {', '.join(alive)} still running after {timeout:g} s")
    for e in errors:
        if e is not None:
            raise e
    return results
