"""fuseprop.distributed without MPI: ranks are threads with the in-process stand-in communicator
(LocalComm, via run_local). Sharding, the flat gradient buffer and its buckets, the broadcast, the
averaging (against one process on the same global batches), faults and bad input. tests/test_mpi.py
runs the same code under mpirun."""
import threading
import time

import numpy as np
import pytest

import fuseprop
from fuseprop import datasets, losses, nn, optim
from fuseprop.distributed import DataParallel, DistributedError, LocalComm, run_local

from helpers import blobs


def mlp(seed=0, dtype=np.float32):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(20, 32, dtype=dtype, generator=g), nn.ReLU(),
                         nn.Linear(32, 16, dtype=dtype, generator=g), nn.Tanh(),
                         nn.Linear(16, 3, dtype=dtype, generator=g))


def sgd(model):
    return optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def assert_same_weights(a, b, rtol=1e-5, atol=2e-7):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def fit_on_ranks(world, x, y, make_opt=sgd, bucket_bytes=256, init_seed=lambda rank: 0, **fit_kwargs):
    """fit(distributed=...) on `world` thread-ranks: [(state_dict, history, DataParallel)] by rank."""
    def rank_main(comm):
        model = mlp(init_seed(comm.Get_rank()))
        ddp = DataParallel(model, comm, bucket_bytes=bucket_bytes, timeout=20)
        history = model.fit(x, y, optimizer=make_opt(model), distributed=ddp, **fit_kwargs)
        return model.state_dict(), history, ddp
    return run_local(world, rank_main)


# -- sharding

def test_shards_of_a_global_batch_are_contiguous_array_split_parts():
    x = y = np.arange(23)
    whole = [yb for _, yb in datasets.batches(x, y, 8, rng=np.random.default_rng(1))]
    parts = [[yb for _, yb in datasets.batches(x, y, 8, rng=np.random.default_rng(1), shard=(r, 3))] for r in range(3)]
    assert [len(b) for b in whole] == [8, 8, 7]
    for i, batch in enumerate(whole):
        assert [p[i].tolist() for p in parts] == [a.tolist() for a in np.array_split(batch, 3)]
    assert [len(p[2]) for p in parts] == [3, 2, 2]  # 7 = 3 + 2 + 2: the higher ranks get one fewer


def test_shards_without_shuffle_are_views_and_can_be_empty():
    x = y = np.arange(9)
    parts = [list(datasets.batches(x, y, 4, shuffle=False, shard=(r, 4))) for r in range(4)]
    assert [[yb.tolist() for _, yb in p] for p in parts] == [[[0], [4], [8]], [[1], [5], []], [[2], [6], []],
                                                           [[3], [7], []]]
    assert np.shares_memory(parts[1][0][0], x)
    drop = [[yb.tolist() for _, yb in datasets.batches(x, y, 4, shuffle=False, drop_last=True, shard=(r, 2))]
            for r in range(2)]
    assert drop == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), (1,), [0, 2], (0.0, 2), (True, 2), "0/2"])
def test_batches_refuse_a_bad_shard(shard):
    with pytest.raises(ValueError, match="shard must be"):
        datasets.batches(np.zeros(3), np.zeros(3), 1, shard=shard)


# -- the flat buffer and its buckets

def test_grads_are_views_into_one_flat_buffer_in_backward_order():
    model = mlp()
    ddp = run_local(1, lambda comm: DataParallel(model, comm, bucket_bytes=2048))[0]
    flat = ddp.grad_buffer
    names = [n for n, _ in model.named_parameters()]
    starts = {}
    for name, p in model.named_parameters():
        assert p.grad.base is not None and np.shares_memory(p.grad, flat), name
        starts[name] = (p.grad.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // 4
        assert starts[name] % 16 == 0  # each view on its own 64-byte line
    assert sorted(starts, key=starts.get) == names[::-1]  # the output layer first: backward writes it first
    assert flat.__array_interface__["data"][0] % 64 == 0
    # 2048-byte buckets: [4.bias, 4.weight, 2.bias], then 2.weight (2048 B), 0.bias and 0.weight each alone
    assert ddp.bucket_count == 4 and ddp._bucket_sizes == [3, 1, 1, 1]
    assert run_local(1, lambda comm: DataParallel(mlp(), comm, bucket_bytes=None))[0].bucket_count == 1


def test_kernels_and_the_optimizer_write_through_the_views():
    x, y = blobs(n=16)
    model, ref = mlp(), mlp()
    ddp = run_local(1, lambda comm: DataParallel(model, comm))[0]
    views = [p.grad for p in model.parameters()]
    for m in (model, ref):
        m.zero_grad()
        m(x)
        m._backward(np.ones((16, 3), np.float32), False)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=n)
    assert np.abs(ddp.grad_buffer).sum() > 0
    model.fit(x, y, optimizer=sgd(model), epochs=1, batch_size=8, verbose=0)  # the fused native step
    model.train_step(x, y, losses.CrossEntropyLoss(), optim.Adam(model.parameters()))
    assert all(p.grad is v for p, v in zip(model.parameters(), views))  # written in place, never rebound


def test_each_bucket_starts_as_soon_as_its_layers_are_done():
    x, y = blobs(n=32)
    events = []

    def rank_main(comm):
        model = mlp()
        ddp = DataParallel(model, comm, bucket_bytes=2048)
        allreduce, ready = comm.Iallreduce, ddp._ready
        comm.Iallreduce = lambda s, r, op=LocalComm.SUM: (events.append(("start", r.size)), allreduce(s, r, op))[1]
        ddp._ready = lambda m: (events.append(("done", list(model).index(m))), ready(m))
        ddp.train_step(x, y, losses.CrossEntropyLoss(), sgd(model))

    run_local(1, rank_main)
    # buckets [4.bias 4.weight 2.bias] [2.weight] [0.bias] [0.weight]: the first two start before the
    # backward of layer 0 (their sizes include the count/loss/correct slot and the 64-byte alignment)
    assert events == [("done", 4), ("done", 2), ("start", 96), ("start", 512), ("done", 0), ("start", 32),
                      ("start", 640)]


# -- broadcast and averaging: the same result as one process on the same global batches

@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_match_one_process_on_the_same_global_batches(world):
    x, y = blobs(n=301)  # 301 = 4 * 64 + 45: a short last batch, split unevenly
    ref = mlp()
    expected = ref.fit(x, y, optimizer=sgd(ref), epochs=3, batch_size=64, verbose=0, seed=5)
    results = fit_on_ranks(world, x, y, init_seed=lambda r: 0 if r == 0 else 100 + r, epochs=3, batch_size=64,
                           verbose=0, seed=5)
    for state, history, _ in results:
        assert_same_weights(state, ref.state_dict())
        for key in ("loss", "accuracy"):
            np.testing.assert_allclose(history.history[key], expected.history[key], rtol=1e-5)
        assert history.params["world_size"] == world and history.params["steps"] == 5
    for state, _, _ in results[1:]:  # every replica holds the same bits
        for k in state:
            np.testing.assert_array_equal(state[k], results[0][0][k])


def test_bucketing_on_and_off_give_the_same_bits():
    x, y = blobs(n=200)
    runs = [fit_on_ranks(2, x, y, bucket_bytes=b, epochs=2, batch_size=50, verbose=0, seed=1) for b in (64, 2048, None)]
    assert [r[0][2].bucket_count for r in runs] == [6, 4, 1]
    for other in runs[1:]:
        for k, v in runs[0][0][0].items():
            np.testing.assert_array_equal(v, other[0][0][k], err_msg=k)


def test_adam_sum_reduction_validation_and_penalties_match_one_process():
    x, y = blobs(n=240)
    xv, yv = blobs(n=50, seed=1)
    kwargs = dict(loss=losses.CrossEntropyLoss(reduction="sum", label_smoothing=0.1), epochs=2, batch_size=40,
                  verbose=0, seed=3, validation_data=(xv, yv), l2=1e-3, clip_grad_norm=5.0)
    adam = lambda m: optim.Adam(m.parameters(), lr=1e-3)  # noqa: E731
    ref = mlp()
    expected = ref.fit(x, y, optimizer=adam(ref), **kwargs)
    for state, history, _ in fit_on_ranks(2, x, y, make_opt=adam, **kwargs):
        assert_same_weights(state, ref.state_dict(), rtol=1e-4, atol=1e-6)
        assert history.history.keys() == expected.history.keys()
        for key, values in expected.history.items():
            np.testing.assert_allclose(history.history[key], values, rtol=1e-5, err_msg=key)


def test_mse_and_a_model_that_is_not_sequential():
    class Wrapped(nn.Module):  # backward as one call: the buckets all start after it
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x)

        def backward(self, g):
            return self.net.backward(g)

    x, _ = blobs(n=64)
    target = np.random.default_rng(2).normal(size=(64, 3)).astype(np.float32)
    ref = Wrapped()
    ref.fit(x, target, optimizer=sgd(ref), epochs=2, batch_size=16, verbose=0, seed=0)

    def rank_main(comm):
        model = Wrapped()
        model.fit(x, target, optimizer=sgd(model), epochs=2, batch_size=16, verbose=0, seed=0,
                  distributed=DataParallel(model, comm, timeout=20))
        return model.state_dict()
    for state in run_local(2, rank_main):
        assert_same_weights(state, ref.state_dict())


def test_broadcast_gives_every_rank_rank_0s_parameters():
    def rank_main(comm):
        model = mlp(seed=comm.Get_rank())
        DataParallel(model, comm)
        return model.state_dict()
    states = run_local(3, rank_main)
    for state in states:
        for k, v in mlp(seed=0).state_dict().items():
            np.testing.assert_array_equal(state[k], v)


def test_train_step_on_ranks_returns_the_global_loss_and_counts():
    x, y = blobs(n=10)
    loss_fn = losses.CrossEntropyLoss()
    expected = loss_fn(mlp()(x), y)
    correct = int((mlp()(x).argmax(1) == y).sum())

    def rank_main(comm):
        model = mlp()
        ddp = DataParallel(model, comm)
        part = [slice(0, 7), slice(7, 10), slice(10, 10)][comm.Get_rank()]  # 7, 3 and no samples
        loss = ddp.train_step(x[part], y[part], losses.CrossEntropyLoss(), sgd(model))
        return loss, ddp.last_correct, ddp.last_count
    for loss, right, count in run_local(3, rank_main):
        assert loss == pytest.approx(expected, rel=1e-6) and right == correct and count == 10


def test_same_seed_same_result_and_a_shared_seed_without_one():
    x, y = blobs(n=120)
    a = fit_on_ranks(2, x, y, epochs=1, batch_size=32, verbose=0, seed=9)
    b = fit_on_ranks(2, x, y, epochs=1, batch_size=32, verbose=0, seed=9)
    for k, v in a[0][0].items():
        np.testing.assert_array_equal(v, b[0][0][k])
    # no seed: rank 0 draws one and broadcasts it, so the ranks still agree on the order
    fuseprop.manual_seed(0)
    c = fit_on_ranks(2, x, y, epochs=1, batch_size=32, verbose=0)
    for k, v in c[0][0].items():
        np.testing.assert_array_equal(v, c[1][0][k])


def test_only_rank_0_prints(capsys):
    x, y = blobs(n=64)
    fit_on_ranks(3, x, y, epochs=2, batch_size=16, verbose=2, seed=0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and lines[1].startswith("epoch 2/2")


def test_evaluate_is_reduced_over_ranks():
    x, y = blobs(n=101)
    expected = mlp().evaluate(x, y)

    def rank_main(comm):
        return DataParallel(mlp(), comm).evaluate(x, y, batch_size=16)
    for result in run_local(3, rank_main):
        assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert result["accuracy"] == expected["accuracy"]


def test_a_non_finite_loss_stops_every_rank_before_the_update():
    x, y = blobs(n=8)

    def rank_main(comm):
        model = mlp()
        ddp = DataParallel(model, comm)
        before = model.state_dict()
        xb = x[:4] if comm.Get_rank() == 0 else np.full((4, 20), np.nan, np.float32)  # only rank 1's is bad
        with pytest.raises(FloatingPointError, match="the loss is nan"):
            ddp.train_step(xb, y[:4], losses.CrossEntropyLoss(), sgd(model))
        return all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    assert run_local(2, rank_main) == [True, True]


def test_stats_count_steps_and_communication():
    x, y = blobs(n=64)
    ddp = fit_on_ranks(2, x, y, epochs=1, batch_size=16, verbose=0, seed=0)[0][2]
    assert ddp.stats["steps"] == 4 and 0 < ddp.stats["comm_seconds"] < ddp.stats["step_seconds"]


# -- faults: a rank that stops answering

def test_a_rank_that_stops_makes_the_others_fail_within_the_timeout(capfd):
    x, y = blobs(n=64)

    def rank_main(comm):
        model = mlp()
        ddp = DataParallel(model, comm, timeout=0.5)
        if comm.Get_rank() == 1:
            return "gone"  # as a rank that died: it never joins another collective
        start = time.monotonic()
        with pytest.raises(DistributedError) as info:
            ddp.train_step(x[:8], y[:8], losses.CrossEntropyLoss(), sgd(model))
        return str(info.value), time.monotonic() - start, comm._group.aborted

    message, seconds, aborted = run_local(2, rank_main)[0]
    assert "rank 0 of 2: the all-reduce of the gradients (step 1) did not complete within 0.5 s" in message
    assert "aborting the job" in message and 0.5 <= seconds < 10
    assert aborted == (0, 1)  # the communicator was aborted
    assert message in capfd.readouterr().err  # said on stderr too: under MPI the abort ends the process


def test_an_abort_reaches_every_rank():
    def rank_main(comm):
        ddp = DataParallel(mlp(), comm, timeout=0.3 if comm.Get_rank() == 0 else 30)
        if comm.Get_rank() == 2:
            return None
        start = time.monotonic()
        with pytest.raises(DistributedError, match="rank 0 of 3|aborted by rank 0"):
            ddp.allreduce([1.0])
        return time.monotonic() - start
    waited = run_local(3, rank_main)
    assert waited[1] < 10  # rank 1 (30 s timeout) stopped when rank 0 aborted


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("FUSEPROP_DIST_TIMEOUT", "2.5")
    assert run_local(1, lambda comm: DataParallel(mlp(), comm).timeout) == [2.5]
    monkeypatch.setenv("FUSEPROP_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="FUSEPROP_DIST_TIMEOUT must be a positive number"):
        run_local(1, lambda comm: DataParallel(mlp(), comm))


def test_ranks_with_different_models_are_refused():
    def rank_main(comm):
        model = mlp() if comm.Get_rank() == 0 else nn.Sequential(nn.Linear(20, 3))
        with pytest.raises(ValueError, match="the ranks' models differ"):
            DataParallel(model, comm)
    run_local(2, rank_main)


def test_local_comm_catches_ranks_calling_different_collectives():
    def rank_main(comm):
        buf = np.zeros(3)
        if comm.Get_rank() == 0:
            return comm.Iallreduce(LocalComm.IN_PLACE, buf)
        time.sleep(0.05)
        with pytest.raises(DistributedError, match="called"):
            comm.Ibcast(buf)
    run_local(2, rank_main)


def test_local_comm_collectives():
    def rank_main(comm):
        r = comm.Get_rank()
        a = np.full(4, r + 1.0)
        comm.Allreduce(LocalComm.IN_PLACE, a)
        b = np.zeros(2, np.int64)
        comm.Allreduce(np.array([r, 10 * r]), b)
        c = np.full(3, float(r))
        comm.Bcast(c, root=1)
        comm.Barrier()
        return a.tolist(), b.tolist(), c.tolist()
    assert run_local(3, rank_main) == [([6.0] * 4, [3, 30], [1.0] * 3)] * 3
    with pytest.raises(NotImplementedError):
        run_local(1, lambda comm: comm.Iallreduce(LocalComm.IN_PLACE, np.zeros(1), op="MAX"))


def test_run_local_raises_the_first_error_and_times_out():
    def rank_main(comm):
        if comm.Get_rank() == 1:
            raise KeyError("rank 1 failed")
        return 0
    with pytest.raises(KeyError, match="rank 1 failed"):
        run_local(2, rank_main)
    release = threading.Event()
    with pytest.raises(DistributedError, match="rank 0 still running after 0.2 s"):
        run_local(1, lambda comm: release.wait(5), timeout=0.2)
    release.set()


# -- bad input

def one_rank(**kwargs):
    return run_local(1, lambda comm: DataParallel(kwargs.pop("module", mlp()), comm, **kwargs))[0]


def test_bad_module():
    with pytest.raises(TypeError, match="module must be a fuseprop.nn.Module, got list"):
        one_rank(module=[1])
    with pytest.raises(ValueError, match="module has no parameters"):
        one_rank(module=nn.Sequential(nn.ReLU()))
    shared = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="holds a parameter twice"):
        one_rank(module=nn.Sequential(shared, nn.ReLU(), shared))
    with pytest.raises(ValueError, match="one dtype"):
        one_rank(module=nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3, dtype=np.float64)))


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "bucket_bytes must be positive"), (-5, ValueError, "bucket_bytes must be positive"),
    (1.5, TypeError, "bucket_bytes must be an integer or None, got float"),
    (True, TypeError, "bucket_bytes must be an integer or None, got bool"),
    ("1M", TypeError, "bucket_bytes must be an integer or None, got str")])
def test_bad_bucket_bytes(value, error, message):
    with pytest.raises(error, match=message):
        one_rank(bucket_bytes=value)


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "timeout must be a positive, finite number"), (-1.0, ValueError, "positive"),
    (float("inf"), ValueError, "finite"), (float("nan"), ValueError, "finite"),
    ("60", TypeError, "timeout must be a number of seconds, got str"), (True, TypeError, "got bool")])
def test_bad_timeout(value, error, message):
    with pytest.raises(error, match=message):
        one_rank(timeout=value)


def test_bad_comm():
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator .* got object without Get_rank"):
        DataParallel(mlp(), object())


def test_fit_refuses_a_bad_distributed_argument():
    x, y = blobs(n=8)
    with pytest.raises(TypeError, match="distributed must be True, False or a fuseprop.distributed.DataParallel, "
                                        "got str"):
        mlp().fit(x, y, distributed="mpi", verbose=0)

    def rank_main(comm):
        ddp = DataParallel(mlp(), comm)
        with pytest.raises(ValueError, match="a DataParallel over another model"):
            mlp().fit(x, y, distributed=ddp, verbose=0)
    run_local(1, rank_main)


def test_train_step_refuses_mismatched_or_all_empty_batches():
    x, y = blobs(n=8)

    def rank_main(comm):
        model = mlp()
        ddp = DataParallel(model, comm)
        with pytest.raises(ValueError, match="x and y must have the same number of samples"):
            ddp.train_step(x, y[:3], losses.CrossEntropyLoss(), sgd(model))
        with pytest.raises(ValueError, match="every rank's part of the batch is empty"):
            ddp.train_step(x[:0], y[:0], losses.CrossEntropyLoss(), sgd(model))
    run_local(2, rank_main)


def test_run_local_bad_arguments():
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        run_local(0, lambda comm: None)
    with pytest.raises(TypeError, match="fn must be callable"):
        run_local(1, "f")


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    with pytest.raises(ImportError, match=r"pip install 'fuseprop\[mpi\]'.*openmpi-bin libopenmpi-dev"):
        DataParallel(mlp())
    x, y = blobs(n=8)
    with pytest.raises(ImportError, match=r"fuseprop\[mpi\]"):
        mlp().fit(x, y, distributed=True, verbose=0)


def test_a_replaced_grad_is_refused_instead_of_silently_not_reduced():
    x, y = blobs(n=8)

    def rank_main(comm):
        model = mlp()
        ddp = DataParallel(model, comm)
        model[0].bias.grad = np.zeros(32, np.float32)
        with pytest.raises(RuntimeError, match="no longer a view into the all-reduced buffer"):
            ddp.train_step(x, y, losses.CrossEntropyLoss(), sgd(model))
    run_local(1, rank_main)


def test_thread_ranks_sharing_one_loss_object_do_not_mix_their_gradients():
    """run_local's ranks are threads: one loss object handed to all of them must not let a rank read the
    gradient another rank's call left in it. The same run, repeated, gives the same bits."""
    x, y = blobs(n=240)
    loss = losses.CrossEntropyLoss(label_smoothing=0.1)
    runs = [fit_on_ranks(3, x, y, epochs=2, batch_size=40, verbose=0, seed=3, loss=loss) for _ in range(6)]
    ref = mlp()
    expected = ref.fit(x, y, optimizer=sgd(ref), epochs=2, batch_size=40, verbose=0, seed=3, loss=loss)
    for results in runs:
        for state, history, _ in results:
            assert_same_weights(state, ref.state_dict())
            np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)
        for k in runs[0][0][0]:
            np.testing.assert_array_equal(results[0][0][k], runs[0][0][0][k])


def test_batch_norm_buffers_are_the_same_on_every_rank_after_a_step():
    x = np.random.default_rng(0).normal(size=(32, 3, 6, 6)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 2, 32)

    def rank_main(comm):
        fuseprop.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
        ddp = DataParallel(model, comm, timeout=20)
        lo = comm.Get_rank() * 16
        ddp.train_step(x[lo:lo + 16], y[lo:lo + 16], losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1))
        return {k: v.copy() for k, v in model.state_dict().items()}

    first, second = run_local(2, rank_main)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=k)
    assert int(first["1.num_batches_tracked"]) == 1
