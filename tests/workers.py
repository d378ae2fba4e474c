"""Rank programs for the multi-process gloo tests (module level so `spawn` can import them)."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from commscope import profiler

F32 = torch.float32


def _t(n: int, rank: int, dtype=F32) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 100 * rank).to(dtype)


def do_all_ops(rank: int, world: int, sub: dist.ProcessGroup | None) -> list[torch.Tensor]:
    """Every torch.distributed operation once, with distinct sizes; returns every result."""
    out: list[torch.Tensor] = []
    nxt, prv = (rank + 1) % world, (rank - 1) % world

    t = _t(3, rank)
    dist.all_reduce(t)
    out.append(t)
    t = _t(5, rank)
    dist.all_reduce(t, async_op=True).wait()
    out.append(t)
    lst = [torch.empty(7) for _ in range(world)]
    dist.all_gather(lst, _t(7, rank))
    out += lst
    o = torch.empty(11 * world)
    dist.all_gather_into_tensor(o, _t(11, rank))
    out.append(o)
    o = torch.empty(13 * world)
    dist.all_gather_single(o, _t(13, rank))
    out.append(o)
    o = torch.empty(4)
    dist.reduce_scatter(o, [_t(4, rank + i) for i in range(world)])
    out.append(o)
    o = torch.empty(6)
    dist.reduce_scatter_tensor(o, _t(6 * world, rank))
    out.append(o)
    o = torch.empty(9, dtype=torch.bfloat16)
    dist.reduce_scatter_single(o, _t(9 * world, rank, torch.bfloat16))
    out.append(o)
    t = _t(10, rank)
    dist.broadcast(t, src=1)
    out.append(t)
    t = _t(12, rank)
    dist.reduce(t, dst=1)
    out.append(t)
    gl = [torch.empty(14) for _ in range(world)] if rank == 0 else None
    dist.gather(_t(14, rank), gl, dst=0)
    out += gl or []
    t = torch.empty(15)
    dist.scatter(t, [_t(15, i) for i in range(world)] if rank == 0 else None, src=0)
    out.append(t)
    o = torch.empty(2 * world)
    dist.all_to_all_single(o, _t(2 * world, rank))
    out.append(o)
    in_splits = [j + 1 for j in range(world)]
    out_splits = [rank + 1] * world
    o = torch.empty(sum(out_splits))
    dist.all_to_all_single(o, _t(sum(in_splits), rank), out_splits, in_splits)
    out.append(o)
    outs = [torch.empty(3) for _ in range(world)]
    dist.all_to_all(outs, [_t(3, rank + j) for j in range(world)])
    out += outs
    buf = torch.empty(17)
    if rank % 2 == 0:
        dist.send(_t(17, rank), dst=nxt)
        dist.recv(buf, src=prv)
    else:
        dist.recv(buf, src=prv)
        dist.send(_t(17, rank), dst=nxt)
    out.append(buf)
    buf = torch.empty(19)
    works = [dist.isend(_t(19, rank), dst=nxt), dist.irecv(buf, src=prv)]
    for w in works:
        w.wait()
    out.append(buf)
    buf = torch.empty(21)
    reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, _t(21, rank), nxt),
                                   dist.P2POp(dist.irecv, buf, prv)])
    for r in reqs:
        r.wait()
    out.append(buf)
    dist.barrier()
    ts = [_t(2, rank), _t(3, rank)]
    dist.all_reduce_coalesced(ts)
    out += ts
    t = _t(8, rank, torch.int64)
    dist.all_reduce(t)
    out.append(t)
    t = _t(8, rank, torch.float16)
    dist.all_reduce(t)
    out.append(t)
    from torch.distributed import _functional_collectives as funcol

    r = funcol.all_reduce(_t(23, rank), "sum", dist.group.WORLD)
    out.append(r.wait() if hasattr(r, "wait") else r)
    if sub is not None:
        t = _t(25, rank)
        dist.all_reduce(t, group=sub)
        out.append(t)
    dist.monitored_barrier()
    return [x.clone() for x in out]


def expected_rows(rank: int, world: int, sub_size: int | None) -> list[dict]:
    """The rows `do_all_ops` must produce on `rank`, in order (count, bytes as in the schema)."""
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    W = world

    def row(api, op, count, nbytes, *, dtype="float32", in_b=None, out_b=None, peer=None,
            root=None, async_op=False, pg_size=W):
        return dict(api=api, op=op, count=count, bytes=nbytes, dtype=dtype,
                    in_bytes=in_b if in_b is not None else count * 4,
                    out_bytes=out_b if out_b is not None else count * 4, peer=peer, root=root,
                    async_op=async_op, pg_size=pg_size)

    rows = [
        row("all_reduce", "all_reduce", 3, 12),
        row("all_reduce", "all_reduce", 5, 20, async_op=True),
        row("all_gather", "all_gather", 7, 28 * W, out_b=28 * W),
        row("all_gather_into_tensor", "all_gather", 11, 44 * W, out_b=44 * W),
        row("all_gather_single", "all_gather", 13, 52 * W, out_b=52 * W),
        row("reduce_scatter", "reduce_scatter", 4, 16 * W, in_b=16 * W),
        row("reduce_scatter_tensor", "reduce_scatter", 6, 24 * W, in_b=24 * W),
        row("reduce_scatter_single", "reduce_scatter", 9, 18 * W, dtype="bfloat16",
            in_b=18 * W, out_b=18),
        row("broadcast", "broadcast", 10, 40, root=1),
        row("reduce", "reduce", 12, 48, root=1),
        row("gather", "gather", 14, 56 * W, out_b=56 * W if rank == 0 else 0, root=0),
        row("scatter", "scatter", 15, 60 * W, in_b=60 * W if rank == 0 else 0, root=0),
        row("all_to_all_single", "all_to_all", 2 * W, 8 * W),
        row("all_to_all_single", "all_to_all", W * (W + 1) // 2, 4 * W * (W + 1) // 2,
            out_b=4 * W * (rank + 1)),
        row("all_to_all", "all_to_all", 3 * W, 12 * W),
    ]
    send = row("send", "send", 17, 68, peer=nxt)
    recv = row("recv", "recv", 17, 68, peer=prv)
    rows += [send, recv] if rank % 2 == 0 else [recv, send]
    rows += [
        row("isend", "send", 19, 76, peer=nxt, async_op=True),
        row("irecv", "recv", 19, 76, peer=prv, async_op=True),
        row("batch_isend_irecv", "send", 21, 84, peer=nxt, async_op=True),
        row("batch_isend_irecv", "recv", 21, 84, peer=prv, async_op=True),
        row("barrier", "barrier", 0, 0, dtype=None),
        row("all_reduce_coalesced", "all_reduce", 5, 20),
        row("all_reduce", "all_reduce", 8, 64, dtype="int64", in_b=64, out_b=64),
        row("all_reduce", "all_reduce", 8, 16, dtype="float16", in_b=16, out_b=16),
        row("funcol.all_reduce", "all_reduce", 23, 92, async_op=True),
    ]
    if sub_size is not None:
        rows.append(row("all_reduce", "all_reduce", 25, 100, pg_size=sub_size))
    rows.append(row("monitored_barrier", "barrier", 0, 0, dtype=None))
    return rows


def _subgroup(rank: int, world: int):
    if world < 4:
        return None
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    for g in groups:
        profiler.label_group(g, "tp")
    return groups[rank // 2]


def all_ops_worker(rank: int, world: int, out_dir: str) -> None:
    sub = _subgroup(rank, world)
    untraced = do_all_ops(rank, world, sub)
    with profiler.trace(out_dir, run_name="all_ops") as session, profiler.phase("ops", step=7):
        traced = do_all_ops(rank, world, sub)
    assert len(untraced) == len(traced)
    for a, b in zip(untraced, traced):
        assert torch.equal(a, b), (a, b)
    assert session.run_dir.endswith("all_ops")
    # Hooks are gone: module attributes are torch's own again.
    assert not hasattr(dist.all_reduce, "__commscope_original__")
    assert not hasattr(dist.distributed_c10d.all_gather_single, "__commscope_original__")


def enter_before_init_worker(rank: int, world: int, out_dir: str) -> None:
    with profiler.trace(out_dir) as session:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        t = torch.ones(4)
        dist.all_reduce(t)
        g = dist.new_group([0, 1])  # created after the trace started
        dist.all_reduce(t, group=g)
        assert t[0].item() == 2 * world
    with open(os.path.join(out_dir, f"run_dir_{rank}.txt"), "w") as fh:
        fh.write(session.run_dir)
    dist.destroy_process_group()


def exception_worker(rank: int, world: int, out_dir: str) -> None:
    try:
        with profiler.trace(out_dir, run_name="crash"):
            for _ in range(10):
                dist.all_reduce(torch.ones(8))
            raise RuntimeError("user code failed")
    except RuntimeError as exc:
        assert str(exc) == "user code failed"
    else:
        raise AssertionError("the exception was swallowed")


def sigkill_worker(rank: int, world: int, out_dir: str) -> None:
    # No timed flush during the test: rank 1 must lose exactly its unflushed buffer.
    session = profiler.trace(out_dir, run_name="killed", flush_events=10, flush_interval_s=600)
    session.open()
    for _i in range(35):
        dist.all_reduce(torch.ones(4))
    dist.barrier()  # both ranks have issued all 35 before one dies
    if rank == 1:
        time.sleep(0.5)  # let the writer thread finish the parts already flushed
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.5)
    session.close()


def sigterm_worker(rank: int, world: int, out_dir: str) -> None:
    session = profiler.trace(out_dir, run_name="terminated")
    session.open()
    for _ in range(12):
        dist.all_reduce(torch.ones(4))
    dist.barrier()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    session.close()


def peer_gone_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank 1 leaves without joining the second all_reduce; rank 0's call fails and is recorded."""
    with profiler.trace(out_dir, run_name="peer_gone"):
        dist.all_reduce(torch.ones(4))
        if rank == 0:
            try:
                dist.all_reduce(torch.ones(4))
            except RuntimeError:
                pass
            else:
                raise AssertionError("all_reduce without the peer should fail")
    if rank == 1:
        os._exit(0)  # vanish without destroy_process_group


def dtensor_worker(rank: int, world: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    x = torch.randn(4, 16)
    expected = dense(x)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    model = parallelize_module(dense, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    with profiler.trace(out_dir, run_name="dtensor"), torch.no_grad():
        y = model(x)
    assert torch.allclose(y, expected, atol=1e-5), (y - expected).abs().max()


def straggler_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank 1 sleeps 100 ms before every third all_reduce (far above the 40 ms the test needs:
    opening a trace costs the ranks different amounts before the first call)."""
    t = torch.ones(1024)
    with profiler.trace(out_dir, run_name="straggler"):
        for i in range(9):
            if rank == 1 and i % 3 == 0:
                time.sleep(0.1)
            dist.all_reduce(t)


def overlap_worker(rank: int, world: int, out_dir: str) -> None:
    """Async isend/irecv with computation between issue and wait."""
    a = torch.randn(256, 256)
    with profiler.trace(out_dir, run_name="overlap"), profiler.phase("decode", step=0):
        if rank == 0:
            work = dist.isend(torch.ones(1 << 16), dst=1)
        else:
            buf = torch.empty(1 << 16)
            work = dist.irecv(buf, src=0)
        t_end = time.perf_counter() + 0.03  # ~30 ms of computation overlapping the transfer
        while time.perf_counter() < t_end:
            a = torch.tanh(a @ a)
        work.wait()
        if rank == 1:
            assert buf.sum().item() == 1 << 16


def mismatch_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank 1 skips the third all_reduce; rank 0 times out in it (typical hang)."""
    with profiler.trace(out_dir, run_name="mismatch"):
        for i in range(3):
            if rank == 1 and i == 2:
                break
            try:
                dist.all_reduce(torch.ones(16))
            except RuntimeError:
                assert rank == 0 and i == 2
    if rank == 1:
        time.sleep(5)  # stay alive past rank 0's timeout, as a hung peer would
    os._exit(0)


# --- issue 14: recording must not lose or hang -------------------------------------------------

def sigterm_in_flush_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank 1 gets SIGTERM while its second flush is being written (on the main thread); an
    async call never waited on is carried from flush to flush."""
    session = profiler.trace(out_dir, run_name="term_in_flush", flush_events=5,
                             flush_interval_s=600)
    session.open()
    if rank == 1:
        orig, calls = session._flush_locked, []

        def flush_then_signal(final):
            calls.append(final)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # handled while this flush runs
            return orig(final)

        session._flush_locked = flush_then_signal
    dist.all_reduce(torch.ones(4), async_op=True)  # never waited: carried
    for _ in range(9):
        dist.all_reduce(torch.ones(4))
    session.close()


def sigterm_while_thread_flushes_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank 1: a user thread is flushing when SIGTERM reaches the main thread."""
    session = profiler.trace(out_dir, run_name="term_thread", flush_events=5,
                             flush_interval_s=600)
    session.open()
    if rank == 1:
        orig = session._flush_locked

        def slow_flush(final):
            if threading.current_thread() is not threading.main_thread() and not final:
                os.kill(os.getpid(), signal.SIGTERM)  # the main thread handles it meanwhile
                time.sleep(1.0)
            return orig(final)

        session._flush_locked = slow_flush

    def work():
        dist.all_reduce(torch.ones(4), async_op=True)  # never waited: carried
        for _ in range(4):
            dist.all_reduce(torch.ones(4))

    t = threading.Thread(target=work)
    t.start()
    while t.is_alive():
        t.join(0.05)
    time.sleep(3)  # a process that survived the SIGTERM carries on and exits 0
    session.close()


def hang_worker(rank: int, world: int, out_dir: str) -> None:
    """Rank 1 skips the third all_reduce and stays alive: rank 0 blocks in it (a hang)."""
    with profiler.trace(out_dir, run_name="hang", flush_interval_s=0.3):
        for i in range(3):
            if rank == 1 and i == 2:
                break
            dist.all_reduce(torch.ones(16))
    if rank == 1:
        open(os.path.join(out_dir, "rank1_done"), "w").close()
        time.sleep(600)  # killed by the test


def lazy_agreement_worker(rank: int, world: int, out_dir: str) -> None:
    """init_process_group bound by name before tracing started (not hooked): the agreement
    happens later, at different moments on each rank (rank 0 flushes after every call)."""
    init = dist.distributed_c10d.init_process_group  # torch's own: imported before tracing
    with profiler.trace(out_dir, run_name="lazy", flush_events=1 if rank == 0 else 1000):
        init("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
        for _ in range(6):
            dist.all_reduce(torch.ones(4))


def init_under_trace_worker(rank: int, world: int, out_dir: str) -> None:
    """init_process_group called while tracing: commscope issues no collective on the group."""
    with profiler.trace(out_dir, run_name="init_traced") as session:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        pg = dist.distributed_c10d._get_default_group()
        seq_after_init = pg._get_sequence_number_for_group()
        dist.all_reduce(torch.ones(2))
        seq_after_one = pg._get_sequence_number_for_group()
    with open(os.path.join(out_dir, f"seq_{rank}.txt"), "w") as fh:
        fh.write(f"{seq_after_init} {seq_after_one} {session.run_dir}")


def reinit_worker(rank: int, world: int, out_dir: str) -> None:
    """Default group "0" of 2 ranks, destroyed; each process re-inits its own 1-rank group,
    again named "0"."""
    with profiler.trace(out_dir, run_name="reinit"):
        dist.all_gather_into_tensor(torch.empty(3 * world), torch.ones(3))
        dist.destroy_process_group()
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/store_{rank}", rank=0,
                                world_size=1)
        dist.all_gather_into_tensor(torch.empty(3), torch.ones(3))


def new_group_under_trace_worker(rank: int, world: int, out_dir: str) -> None:
    """Groups created right after a trace opens: the run-id/clock agreement runs on the writer
    thread through the same store that new_group's rendezvous uses on this thread (sharing one
    store client deadlocked both ranks). A deadlock exits the process instead of hanging."""
    import faulthandler

    faulthandler.dump_traceback_later(90, exit=True)
    try:
        with profiler.trace(out_dir, run_name="newgroup"):
            for _ in range(3):
                group = dist.new_group(list(range(world)))
                dist.all_reduce(torch.ones(4), group=group)
    finally:
        faulthandler.cancel_dump_traceback_later()
