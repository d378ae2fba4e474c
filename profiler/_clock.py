"""Agreement between ranks at trace start: one run id, and each rank's clock offset to rank 0.

Done through the default group's key-value store (c10d Store), never with collectives: it can
run on any thread at any moment (inside init_process_group, on the writer thread at a first
flush) without interleaving with the user's collectives, and without touching a CUDA device.
Ranks on different hosts have different wall clocks; the offset is estimated from timestamps
taken right after a store barrier releases every rank, so its error is bounded by the release
skew (reported as the spread over rounds).
"""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Agreement", "agree", "exchanges"]

# Backends whose collectives move no data (the single-process fake group): nothing to agree on.
_NO_EXCHANGE = {"fake"}
# Every rank agrees once per session, in the same order: the k-th agreement uses keys
# "commscope/agree/<k>/..." on every rank.
_COUNTER = itertools.count()


class Agreement(NamedTuple):
    run_id: str
    clock_offset_ns: int
    clock_offset_spread_ns: int
    method: str


def exchanges() -> bool:
    """Whether this process shares a run with other processes through the default group."""
    import torch.distributed as dist

    return (dist.is_initialized() and dist.get_world_size() > 1
            and str(dist.get_backend()) not in _NO_EXCHANGE)


def agree(candidate_run_id: str, reserve: Callable[[str], str], rounds: int = 5,
          timeout_s: float = 300.0) -> Agreement:
    """Rank 0's run id for everyone, and this rank's clock offset (its clock minus rank 0's).

    `reserve(candidate) -> run_id` claims the run folder; rank 0 (or a lone process) calls it.
    """
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not exchanges():
        how = "single-process" if not dist.is_initialized() or dist.get_world_size() == 1 \
            else f"skipped ({dist.get_backend()} backend)"
        return Agreement(reserve(candidate_run_id), 0, 0, how)
    store = _own_store(c10d._get_default_store())
    rank, world = dist.get_rank(), dist.get_world_size()
    prefix = f"commscope/agree/{next(_COUNTER)}/"
    host = socket.gethostname()
    if rank == 0:
        run_id, host0 = reserve(candidate_run_id), host
        store.set(prefix + "run", json.dumps([run_id, host]))
    else:
        _wait(store, prefix + "run", timeout_s)
        run_id, host0 = json.loads(store.get(prefix + "run"))
    samples = []
    for r in range(rounds):
        # Store barrier: the last rank to arrive releases everyone.
        if store.add(f"{prefix}arrived/{r}", 1) == world:
            store.set(f"{prefix}go/{r}", "1")
        _wait(store, f"{prefix}go/{r}", timeout_s)
        now = time.time_ns()
        if rank == 0:
            store.set(f"{prefix}t0/{r}", str(now))
        else:
            _wait(store, f"{prefix}t0/{r}", timeout_s)
        samples.append(now - int(store.get(f"{prefix}t0/{r}")))
    spread = int(max(samples) - min(samples))
    if host0 == host:
        # Same host as rank 0: the same wall clock, so the offset is 0 by construction (a
        # barrier-based estimate would only add its release skew as error).
        return Agreement(str(run_id), 0, spread, "same host as rank 0")
    return Agreement(str(run_id), int(statistics.median(samples)), spread,
                     f"store barrier x{rounds}")


def _own_store(store: object) -> object:
    """A connection of this thread's own to the store.

    The agreement runs on the writer thread while the traced thread may be inside a call that
    waits on the same store (new_group, a gloo rendezvous): a TCPStore client holds its lock
    for the whole of a blocking wait, so two threads sharing one client can deadlock across
    ranks. A clone is a separate connection to the same store.
    """
    try:
        return store.clone()  # type: ignore[attr-defined]
    except Exception:  # store types without clone(): _wait() never blocks inside the client
        return store


def _wait(store: object, key: str, timeout_s: float) -> None:
    """Wait for `key` by polling `check` (a short call) rather than a blocking `wait`, so the
    store client is never held while another rank is waited for."""
    deadline = time.monotonic() + timeout_s
    pause = 0.0005
    while not store.check([key]):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError(f"commscope clock agreement: no '{key}' after {timeout_s:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
