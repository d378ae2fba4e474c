"""Per-call cost of `profiler.instrument` on a no-op communicator method (fake process group),
next to the torch.distributed hooks' cost in the same run. CPU time per call, best of 3 blocks.

    .venv/bin/python benchmarks/instrument_overhead.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

from commscope import profiler


class Communicator:
    """A custom communicator whose all_reduce does nothing (what is measured is the hook)."""

    def __init__(self, group):
        self.group = group

    def all_reduce(self, t):
        return t


def _ns_per_call(fn, t: torch.Tensor, n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time_ns()
        for _ in range(n):
            fn(t)
        best = min(best, (time.process_time_ns() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    n = ap.parse_args().calls
    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    t, comm = torch.ones(1024), Communicator(None)
    plain = _ns_per_call(comm.all_reduce, t, n)
    handle = profiler.instrument(Communicator, "all_reduce", op="all_reduce",
                                 group=lambda self, t: self.group)
    idle = _ns_per_call(comm.all_reduce, t, n)
    with profiler.trace(tempfile.mkdtemp(), flush_events=1 << 20):
        recording = _ns_per_call(comm.all_reduce, t, n)
    handle.remove()
    hook_plain = _ns_per_call(dist.all_reduce, t, n)
    with profiler.trace(tempfile.mkdtemp(), flush_events=1 << 20):
        hook_rec = _ns_per_call(dist.all_reduce, t, n)
    dist.destroy_process_group()
    print(f"instrumented method: plain {plain:,.0f} ns/call; no trace open {idle:,.0f} ns "
          f"(+{idle - plain:,.0f}); recording {recording:,.0f} ns (+{recording - plain:,.0f})")
    print(f"torch.distributed hook, same run: dist.all_reduce on the fake group {hook_plain:,.0f} "
          f"ns/call, recording {hook_rec:,.0f} ns (+{hook_rec - hook_plain:,.0f})")


if __name__ == "__main__":
    main()
