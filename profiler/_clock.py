"""Agreement between ranks at trace start: one run id, and each rank's clock offset to rank 0.

Runs unrecorded (the caller holds the hooks' re-entry flag) on the default group. Ranks on
different hosts have different wall clocks; the offset is estimated from timestamps taken right
after a barrier releases every rank, so its error is bounded by the barrier's release skew
(reported as the spread over rounds).
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import NamedTuple

__all__ = ["Agreement", "agree", "exchanges"]

# Backends whose collectives move no data (the single-process fake group): nothing to agree on.
_NO_EXCHANGE = {"fake"}


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


def agree(candidate_run_id: str, rounds: int = 5) -> Agreement:
    """Rank 0's run id for everyone, and this rank's clock offset (its clock minus rank 0's)."""
    import torch.distributed as dist

    if not exchanges():
        how = "single-process" if not dist.is_initialized() or dist.get_world_size() == 1 \
            else f"skipped ({dist.get_backend()} backend)"
        return Agreement(candidate_run_id, 0, 0, how)
    box = [candidate_run_id, socket.gethostname()]
    dist.broadcast_object_list(box, src=0)
    samples = []
    world = dist.get_world_size()
    for _ in range(rounds):
        dist.barrier()
        now = time.time_ns()
        stamps: list = [None] * world
        dist.all_gather_object(stamps, now)
        samples.append(now - stamps[0])
    spread = int(max(samples) - min(samples))
    if box[1] == socket.gethostname():
        # Same host as rank 0: the same wall clock, so the offset is 0 by construction (a
        # barrier-based estimate would only add its release skew as error).
        return Agreement(str(box[0]), 0, spread, "same host as rank 0")
    return Agreement(str(box[0]), int(statistics.median(samples)), spread, f"barrier x{rounds}")
