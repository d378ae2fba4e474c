"""Process groups for tests: real gloo ranks (a free port, N processes, failures re-raised with
rank), and the single-process fake group of the fast unit tests."""

from __future__ import annotations

import contextlib
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


@contextlib.contextmanager
def fake_process_group(rank: int, world: int) -> Iterator[None]:
    """torch's fake process group as `rank` of `world`, for the block (collectives return at
    once; the Python path up to the backend is the real one)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple, errq: Any,
           timeout_s: float, init: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    try:
        if init:
            dist.init_process_group("gloo", rank=rank, world_size=world,
                                    timeout=timedelta(seconds=timeout_s))
        fn(rank, world, *args)
        if init and dist.is_initialized():
            dist.destroy_process_group()
    except BaseException:
        errq.put((rank, traceback.format_exc()))
        raise


def run_ranks(fn: Callable, world: int, *args: Any, timeout_s: float = 60.0,
              init: bool = True, expect_failure: bool = False) -> None:
    """Run fn(rank, world, *args) on `world` gloo ranks (process group initialised unless init=False).

    `fn` must be importable (module level). Raises with the failing ranks' tracebacks unless
    `expect_failure`.
    """
    ctx = mp.get_context("spawn")
    errq = ctx.SimpleQueue()
    port = free_port()
    try:
        mp.start_processes(_entry, args=(world, port, fn, args, errq, timeout_s, init),
                           nprocs=world, join=True, start_method="spawn")
    except mp.ProcessRaisedException as exc:
        if expect_failure:
            return
        errors = []
        while not errq.empty():
            rank, tb = errq.get()
            errors.append(f"rank {rank}:\n{tb}")
        raise AssertionError("\n".join(errors) or str(exc)) from None
    except mp.ProcessExitedException:
        if expect_failure:
            return
        raise
