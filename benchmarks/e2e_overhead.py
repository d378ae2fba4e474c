"""End-to-end tracing overhead: the demo's Llama inference, traced vs untraced, alternating.

    .venv/bin/python benchmarks/e2e_overhead.py --tp 2 --pairs 10

Each rank runs the same greedy generation `pairs` times untraced and `pairs` times inside
profiler.trace (default capture), alternating, and rank 0 prints the median per-pair ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from commscope import profiler


def _rank(rank: int, world: int, port: int, a: dict, q) -> None:
    from commscope.models import llama

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = llama.Config()
    par = llama.Parallel(a["tp"], a["pp"])

    def once() -> float:
        dist.barrier()
        t0 = time.perf_counter()
        llama.generate(cfg, par, a["batch"], a["prompt"], a["output"], torch.float32)
        dist.barrier()
        return time.perf_counter() - t0

    once()  # warm up
    t0 = time.perf_counter()
    session = profiler.trace(a["out"]).open()  # one session, as a user traces a long run
    setup = time.perf_counter() - t0
    base, traced = [], []
    for _ in range(a["pairs"]):
        session.pause()
        base.append(once())
        session.resume()
        traced.append(once())
    t0 = time.perf_counter()
    session.close()
    teardown = time.perf_counter() - t0
    if rank == 0:
        ratios = [t / b for b, t in zip(base, traced)]
        q.put((statistics.median(base), statistics.median(traced), statistics.median(ratios),
               session.events_written // a["pairs"], setup, teardown))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--output", type=int, default=32)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        args = dict(vars(a), out=out)
        q = mp.get_context("spawn").SimpleQueue()
        mp.start_processes(_rank, args=(a.tp * a.pp, port, args, q), nprocs=a.tp * a.pp,
                           start_method="spawn")
        b, t, r, calls, setup, teardown = q.get()
    print(f"TP={a.tp} PP={a.pp}, batch {a.batch}, prompt {a.prompt}, {a.output} tokens, "
          f"{a.pairs} alternating pairs in one session; {calls} calls traced per generation")
    print(f"untraced {b * 1e3:.1f} ms, traced {t * 1e3:.1f} ms per generation (medians); "
          f"added {100 * (r - 1):+.2f} % (median of per-pair ratios)")
    print(f"once per session: open (run-id and clock agreement) {setup * 1e3:.0f} ms, "
          f"close (final write) {teardown * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
