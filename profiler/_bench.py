"""An nccl-tests-like sweep of collectives through torch.distributed, recorded as a normal trace.

Each rank runs, per op and message size (nccl-tests size S, doubling from min to max), `warmup`
untimed-phase iterations then `iters` iterations tagged phase "bench" (step = size index). The
trace is what `commscope calibrate` fits; `commscope bench` prints the nccl-tests-style table.

On NCCL a call returns once its kernel is enqueued, so host time says nothing. There the timed
iterations are timed as nccl-tests times them: a CUDA event before the first and after the last,
one synchronize per size, and each call's device time = block time / iters, written into the
trace rows' `gpu_duration_ns` when the trace is closed (`apply_device_times`). Hook-level CUDA
events are off for the sweep so they add nothing to the block.
"""

from __future__ import annotations

import glob
import os
import socket
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ._phases import label_group, phase
from ._session import trace
from ._writer import write_part

__all__ = ["sweep", "SWEEP_OPS", "sweep_sizes", "per_call_ns", "apply_device_times"]

SWEEP_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "send")


def sweep_sizes(min_bytes: int, max_bytes: int) -> list[int]:
    """Doubling sizes from min to max (inclusive)."""
    out, s = [], max(1, min_bytes)
    while s <= max_bytes:
        out.append(s)
        s *= 2
    return out


def per_call_ns(block_ms: float, iters: int) -> int:
    """Device time of one call (ns) from the CUDA-event time of a block of `iters` calls (ms,
    as `torch.cuda.Event.elapsed_time` returns it)."""
    if iters <= 0 or not block_ms >= 0:
        raise ValueError(f"need iters > 0 and a non-negative block time, got {iters}, {block_ms}")
    return int(round(block_ms * 1e6 / iters))


def _row_ops(op: str) -> list[str]:
    return ["send", "recv"] if op == "send" else [op]


def apply_device_times(rank_dir: str, times: dict[tuple[str, int], int]) -> int:
    """Write per-call device times into one rank's trace parts: `times[(sweep op, size
    index)]` = ns per call goes to `gpu_duration_ns` of the timed rows (phase "bench", that
    step, that op). Files are replaced atomically with their schema and metadata unchanged.
    Returns the number of rows set."""
    total = 0
    for f in sorted(glob.glob(os.path.join(rank_dir, "part-*.parquet"))):
        t = pq.read_table(f)
        col = t.column("gpu_duration_ns").combine_chunks()
        new, hit = col, pa.array([False] * len(t))
        bench = pc.fill_null(pc.equal(t.column("phase"), "bench"), False)
        for (op, step), ns in times.items():
            m = pc.and_(pc.and_(bench, pc.fill_null(pc.equal(t.column("step"), step), False)),
                        pc.is_in(t.column("op"), pa.array(_row_ops(op))))
            new = pc.if_else(m, pa.scalar(int(ns), pa.int64()), new)
            hit = pc.or_(hit, m)
        n = pc.sum(hit).as_py() or 0
        if n:
            t = t.set_column(t.schema.get_field_index("gpu_duration_ns"),
                             t.schema.field("gpu_duration_ns"), new)
            # The trace writer's own encodings; the schema's metadata goes back as key-value
            # metadata.
            write_part(t, rank_dir, os.path.basename(f))
            total += n
    return total


def _run_op(op: str, nbytes: int, n: int, rank: int, dtype: torch.dtype, dev: torch.device,
            bufs: dict) -> None:
    elem = torch.tensor([], dtype=dtype).element_size()
    count = max(1, nbytes // elem)
    key = (op, count)
    if key not in bufs:  # allocate once per size, outside the timed calls
        per = max(1, count // n)
        bufs.clear()
        bufs[key] = {
            "all_reduce": (torch.ones(count, dtype=dtype, device=dev),),
            "broadcast": (torch.ones(count, dtype=dtype, device=dev),),
            "all_gather": (torch.empty(per * n, dtype=dtype, device=dev),
                           torch.ones(per, dtype=dtype, device=dev)),
            "reduce_scatter": (torch.empty(per, dtype=dtype, device=dev),
                               torch.ones(per * n, dtype=dtype, device=dev)),
            "all_to_all": (torch.empty(per * n, dtype=dtype, device=dev),
                           torch.ones(per * n, dtype=dtype, device=dev)),
            "send": (torch.ones(count, dtype=dtype, device=dev),),
        }[op]
    b = bufs[key]
    if op == "all_reduce":
        dist.all_reduce(b[0])
    elif op == "broadcast":
        dist.broadcast(b[0], src=0)
    elif op == "all_gather":
        dist.all_gather_into_tensor(b[0], b[1])
    elif op == "reduce_scatter":
        dist.reduce_scatter_tensor(b[0], b[1])
    elif op == "all_to_all":
        dist.all_to_all_single(b[0], b[1])
    elif op == "send":  # pairs (0,1), (2,3), ...: even ranks send, odd ranks receive
        peer = rank ^ 1
        if peer < n:
            if rank % 2 == 0:
                dist.send(b[0], dst=peer)
            else:
                dist.recv(b[0], src=peer)
    else:
        raise ValueError(f"unknown op {op!r}; choose from {SWEEP_OPS}")


def _rank(rank: int, world: int, port: int, a: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if a["backend"] == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    dist.init_process_group(a["backend"], rank=rank, world_size=world)
    label_group(None, "bench")
    dtype = getattr(torch, a["dtype"])
    bufs: dict = {}
    cuda = dev.type == "cuda"
    device_ns: dict[tuple[str, int], int] = {}
    session = trace(a["out"], run_name=a["run_name"], tags={"bench": a}, cuda_timing=False)
    with session:
        for op in a["ops"]:
            for i, nbytes in enumerate(sweep_sizes(a["min_bytes"], a["max_bytes"])):
                for _ in range(a["warmup"]):
                    _run_op(op, nbytes, world, rank, dtype, dev, bufs)
                dist.barrier()
                with phase("bench", step=i):
                    if cuda:  # nccl-tests: events around the block, one synchronize per size
                        start = torch.cuda.Event(enable_timing=True)
                        end = torch.cuda.Event(enable_timing=True)
                        start.record()
                    for _ in range(a["iters"]):
                        _run_op(op, nbytes, world, rank, dtype, dev, bufs)
                    if cuda:
                        end.record()
                        end.synchronize()
                        device_ns[(op, i)] = per_call_ns(start.elapsed_time(end), a["iters"])
    if device_ns:
        apply_device_times(session.rank_dir, device_ns)
    dist.destroy_process_group()


def sweep(out: str, *, backend: str = "gloo", world_size: int = 2,
          ops: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter"),
          min_bytes: int = 1024, max_bytes: int = 1 << 22, iters: int = 20, warmup: int = 5,
          dtype: str = "float32", run_name: str | None = None) -> str:
    """Run the sweep on `world_size` spawned ranks; returns the trace's run folder."""
    bad = [o for o in ops if o not in SWEEP_OPS]
    if bad:
        raise ValueError(f"unknown ops {bad}; choose from {', '.join(SWEEP_OPS)}")
    if backend == "nccl" and not (dist.is_nccl_available() and torch.cuda.is_available()):
        raise ValueError("backend nccl needs CUDA GPUs and a torch build with NCCL")
    name = run_name or f"bench_{backend}_{world_size}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = dict(out=out, backend=backend, ops=list(ops), min_bytes=min_bytes,
                max_bytes=max_bytes, iters=iters, warmup=warmup, dtype=dtype, run_name=name)
    os.makedirs(out, exist_ok=True)
    before = set(os.listdir(out))
    mp.spawn(_rank, nprocs=world_size, args=(world_size, port, args))
    # A reused name gets a suffix (rank 0 decides): report the folder actually created.
    created = sorted(set(os.listdir(out)) - before)
    return os.path.join(os.path.abspath(out), created[0] if created else name)
