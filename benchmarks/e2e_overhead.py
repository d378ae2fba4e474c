"""End-to-end tracing overhead: the demo's Llama inference, traced vs untraced, alternating.

    .venv/bin/python benchmarks/e2e_overhead.py --tp 2 --pairs 20

Each rank runs the same greedy generation `pairs` times untraced and `pairs` times inside one
profiler.trace session (default capture; recording paused for the untraced ones), in ABBA order
so that a drift in machine load falls on both sides equally. Rank 0 prints, per generation:
- wall time (what the issue's ratio is about), median of the per-pair traced/untraced ratios;
- the CPU time of its main thread (the traced thread: the hooks' work and nothing else), which
  on this 2-core machine is far less noisy than wall time, where every collective waits for the
  other rank to be scheduled;
- the CPU time of its writer thread (encoding and writing parts).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from commscope import profiler


def _thread_cpu(thread: threading.Thread | None) -> float:
    if thread is None or not thread.is_alive():
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def _median_ci(ratios: list[float], n: int = 10000) -> tuple[float, float]:
    """95 % bootstrap interval of the median of the per-pair ratios: how far the noise of this
    2-core machine leaves the figure open."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.asarray(ratios)
    meds = np.median(x[rng.integers(0, len(x), (n, len(x)))], axis=1)
    return float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))


def _rank(rank: int, world: int, port: int, a: dict, q) -> None:
    from commscope.models import llama

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if a["pin"] and hasattr(os, "sched_setaffinity"):
        # Before any thread starts (gloo's, OpenMP's, the writer): they inherit the mask.
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[rank % len(cpus)]})
    if a["fake"]:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    # As the demo (and torchrun) run it: each rank gets its share of the cores for intra-op
    # threads. With the default (every core per rank) idle OpenMP threads of one rank spin on
    # the core the other rank needs to answer a collective: generations take ~3x longer and
    # vary by +-10 %, which buries the tracing cost.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // world))
    cfg = llama.Config()
    par = llama.Parallel(a["tp"], a["pp"])
    writer = None

    def once() -> tuple[float, float, float]:
        """Wall time, main-thread CPU time and writer-thread CPU time of one generation."""
        dist.barrier()
        w0 = _thread_cpu(writer)
        t0, c0 = time.perf_counter(), time.thread_time()
        llama.generate(cfg, par, a["batch"], a["prompt"], a["output"], torch.float32)
        dist.barrier()
        return time.perf_counter() - t0, time.thread_time() - c0, _thread_cpu(writer) - w0

    once()  # warm up
    t0 = time.perf_counter()
    session = profiler.trace(a["out"], flush_interval_s=a["flush_interval"]).open()
    setup = time.perf_counter() - t0
    writer = session._writer.thread
    base, traced = [], []
    for i in range(a["pairs"]):
        for mode in (("untraced", "traced") if i % 2 == 0 else ("traced", "untraced")):
            if mode == "untraced":
                session.pause()
                base.append(once())
            else:
                session.resume()
                traced.append(once())
    t0 = time.perf_counter()
    session.close()
    teardown = time.perf_counter() - t0
    if rank == 0:
        def stats(k: int) -> tuple:
            """Medians untraced and traced, median per-pair ratio and its interval."""
            ratios = [t[k] / b[k] for b, t in zip(base, traced)]
            return (statistics.median(b[k] for b in base),
                    statistics.median(t[k] for t in traced),
                    statistics.median(ratios), _median_ci(ratios))

        q.put({
            "wall": stats(0), "cpu": stats(1),
            "writer": statistics.median(t[2] for t in traced),
            "calls": session.events_written // a["pairs"], "setup": setup, "teardown": teardown,
        })
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--pin", action="store_true",
                    help="pin each rank (and its threads) to one core: the OS then never "
                         "moves a rank, which narrows the per-pair spread")
    ap.add_argument("--fake", action="store_true",
                    help="rank 0 alone on the fake process group: the same decoder and calls "
                         "with no communication, so the hook's cost in situ stands out of the "
                         "noise of two ranks sharing 2 cores")
    ap.add_argument("--flush-interval", type=float, default=2.0,
                    help="the session's flush_interval_s (timed flushes of buffered rows)")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        args = dict(vars(a), out=out)
        if a.fake:
            import queue

            q = queue.SimpleQueue()
            _rank(0, a.tp * a.pp, port, args, q)
        else:
            q = mp.get_context("spawn").SimpleQueue()
            mp.start_processes(_rank, args=(a.tp * a.pp, port, args, q), nprocs=a.tp * a.pp,
                               start_method="spawn")
        r = q.get()
    print(f"TP={a.tp} PP={a.pp}, batch {a.batch}, prompt {a.prompt}, {a.output} tokens, "
          f"{a.pairs} pairs (ABBA) in one session{', ranks pinned to cores' if a.pin else ''}"
          f"{', rank 0 alone on the fake process group' if a.fake else ''}; "
          f"{r['calls']} calls traced per generation; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    b, t, ratio, (lo, hi) = r["wall"]
    print(f"wall: untraced {b * 1e3:.1f} ms, traced {t * 1e3:.1f} ms per generation (medians); "
          f"traced/untraced {ratio:.4f} (median of per-pair ratios; 95 % bootstrap interval "
          f"{lo:.4f}-{hi:.4f})")
    b, t, ratio, (lo, hi) = r["cpu"]
    print(f"rank 0 main-thread CPU: untraced {b * 1e3:.1f} ms, traced {t * 1e3:.1f} ms per "
          f"generation; traced/untraced {ratio:.4f} ({lo:.4f}-{hi:.4f}), i.e. "
          f"{(t - b) / r['calls'] * 1e6:+.1f} us per traced call; writer thread "
          f"{r['writer'] * 1e3:.1f} ms CPU per traced generation")
    print(f"once per session: open (run-id and clock agreement) {r['setup'] * 1e3:.0f} ms, "
          f"close (final write) {r['teardown'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
