"""End-to-end tracing overhead: the demo's Llama decoder, traced and untraced pass by pass.

    .venv/bin/python benchmarks/e2e_overhead.py --tp 2 --pairs 300

Every rank runs the same greedy generation 2 x `pairs` times inside one profiler.trace session
(default capture) and switches recording on and off between forward passes, all ranks alike:
in each pair of generations every pass runs once traced and once untraced (recording paused),
neighbouring passes alternate, and which generation of the pair traces a pass flips from pair to
pair (`_traced`), so neither the prefill nor the first generation of a pair always falls on one
side. A pass's two runs are one generation apart (~0.5 s on gloo): slow spells of this 2-core
machine longer than that fall on both sides alike, where alternating whole generations left
±3-4 % of noise after 200 pairs.

The session's timer is off; the writer thread runs the timer's job (the same flush) at the start
of every K-th traced pass, K passes being `--flush-interval` of traced time (measured in a
warm-up). That pass ends when the part is written and every rank has written its own (a
barrier), so each rank's writer work, and the other ranks' waiting for it, fall on traced
passes. Not charged: what a flush leaves behind (evicted caches) for the next pass, traced or
not. A timer running on its own clock would charge about half of the writer's work to untraced
passes.

Rank 0 prints traced time / untraced time summed over all pairs (a mean: a median would hide the
flushes) with a 95 % bootstrap interval over the pairs, for:
- wall time (what the issue's ratio is about);
- the CPU time of its main thread (the traced thread), as µs per traced call;
- the writer thread's CPU time per flush.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tempfile
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from commscope import profiler
from commscope.profiler._wrappers import hook_kind


def _thread_cpu_ns(thread: threading.Thread) -> int:
    return time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))


def _ratio_ci(traced: np.ndarray, untraced: np.ndarray, n: int = 10000) -> tuple[float, float]:
    """95 % bootstrap interval of sum(traced) / sum(untraced), resampling pairs."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(traced), (n, len(traced)))
    r = traced[idx].sum(axis=1) / untraced[idx].sum(axis=1)
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def _rank(rank: int, world: int, port: int, a: dict) -> None:
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
    passes = a["output"]

    def generate(around=None) -> dict:
        timings: dict = {}
        llama.generate(cfg, par, a["batch"], a["prompt"], a["output"], torch.float32,
                       timings=timings, around_pass=around)
        return timings

    for _ in range(2):  # warm up: connections, allocator, kernels
        t = generate()
    # Every rank must flush after the same traced passes: rank 0's pass time decides.
    per_pass = torch.tensor([(t["end_ns"] - t["start_ns"]) / passes / 1e9])
    dist.broadcast(per_pass, 0)
    flush_every = max(1, round(a["flush_interval"] / float(per_pass)))

    t0 = time.perf_counter()
    # The timer is off: the flushes in around() stand in for it (see the module's docstring).
    session = profiler.trace(a["out"], flush_interval_s=1e9).open()
    setup = time.perf_counter() - t0
    writer = session._writer.thread
    gens = 2 * a["pairs"]
    wall = np.zeros((gens, passes), np.int64)
    cpu = np.zeros((gens, passes), np.int64)
    flush_cpu: list[int] = []
    state = {"g": 0, "traced": 0}

    @contextlib.contextmanager
    def around(i: int):
        traced = _traced(state["g"], i)
        flush = False
        if traced:
            session.resume()
            state["traced"] += 1
            flush = state["traced"] % flush_every == 0
        else:
            session.pause()
        w0 = _thread_cpu_ns(writer) if flush else 0
        start, c0 = time.perf_counter_ns(), time.thread_time_ns()
        # The timer's own job, on the writer thread: take the buffers, build and write a part.
        job = session._writer.submit(session.flush, False) if flush else None
        yield
        if job is not None:
            job.result()  # the writer's work belongs to this traced pass
            flush_cpu.append(_thread_cpu_ns(writer) - w0)
            session.pause()  # not recorded: a benchmark's call, not the decoder's
            dist.barrier()  # every rank's writer work belongs here (all flush after this pass)
        wall[state["g"], i] = time.perf_counter_ns() - start
        cpu[state["g"], i] = time.thread_time_ns() - c0

    for g in range(gens):
        state["g"] = g
        session.pause()  # the barrier is no part of the generation
        dist.barrier()
        generate(around)
    t0 = time.perf_counter()
    session.close()
    teardown = time.perf_counter() - t0
    if rank == 0:
        # A file, not a queue: a pipe blocks once it holds 64 KB, before the parent reads it.
        np.savez(a["result"], wall=wall, cpu=cpu, flush_cpu=np.asarray(flush_cpu, np.int64),
                 flush_every=flush_every, calls=session.events_written / a["pairs"],
                 setup=setup, teardown=teardown)
    dist.destroy_process_group()


def _traced(g, i):
    """Whether pass i of generation g is traced (ints or arrays): passes alternate, the two
    generations of a pair are complementary, and the pattern flips from one pair to the next."""
    return (g + i + g // 2) % 2 == 0


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of generations: time of its traced passes, time of its untraced passes."""
    gens, passes = x.shape
    traced = _traced(np.arange(gens)[:, None], np.arange(passes)[None, :])
    pairs = gens // 2
    t = np.where(traced, x, 0).sum(axis=1).reshape(pairs, 2).sum(axis=1)
    u = np.where(traced, 0, x).sum(axis=1).reshape(pairs, 2).sum(axis=1)
    return t.astype(float), u.astype(float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=100,
                    help="pairs of generations; each traces every forward pass once")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--pin", action="store_true",
                    help="pin each rank (and its threads) to one core")
    ap.add_argument("--fake", action="store_true",
                    help="rank 0 alone on the fake process group: the same decoder and calls "
                         "with no communication, so the hook's cost in situ stands out of the "
                         "noise of two ranks sharing 2 cores")
    ap.add_argument("--flush-interval", type=float, default=2.0,
                    help="traced seconds between flushes (the session's flush_interval_s)")
    a = ap.parse_args()
    if a.output % 2:
        ap.error("--output must be even: each generation then traces half its passes")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        args = dict(vars(a), out=os.path.join(out, "trace"), result=os.path.join(out, "r.npz"))
        if a.fake:
            _rank(0, a.tp * a.pp, port, args)
        else:
            mp.start_processes(_rank, args=(a.tp * a.pp, port, args), nprocs=a.tp * a.pp,
                               start_method="spawn")
        with np.load(args["result"]) as f:
            r = {k: f[k] for k in f.files}
    calls = float(r["calls"])
    print(f"TP={a.tp} PP={a.pp}, batch {a.batch}, prompt {a.prompt}, {a.output} tokens "
          f"({a.output} forward passes), {a.pairs} pairs of generations, traced and untraced "
          f"passes alternating{', ranks pinned to cores' if a.pin else ''}"
          f"{', rank 0 alone on the fake process group' if a.fake else ''}; "
          f"{calls:.0f} calls traced per generation; {hook_kind()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    t, u = _split(r["wall"])
    lo, hi = _ratio_ci(t, u)
    print(f"wall: untraced {u.mean() / 1e6:.1f} ms, traced {t.mean() / 1e6:.1f} ms per "
          f"generation (means over pairs); traced/untraced {t.sum() / u.sum():.4f} (95 % "
          f"bootstrap interval {lo:.4f}-{hi:.4f}), {(t.sum() - u.sum()) / a.pairs / calls / 1e3:+.1f} "
          f"us per traced call")
    wall_u = u.mean()
    t, u = _split(r["cpu"])
    lo, hi = _ratio_ci(t, u)
    print(f"rank 0 main-thread CPU: untraced {u.mean() / 1e6:.1f} ms, traced "
          f"{t.mean() / 1e6:.1f} ms per generation; traced/untraced {t.sum() / u.sum():.4f} "
          f"({lo:.4f}-{hi:.4f}), {(t.sum() - u.sum()) / a.pairs / calls / 1e3:+.1f} us per "
          f"traced call")
    fc = np.asarray(r["flush_cpu"], float)
    per_gen = len(fc) / a.pairs
    print(f"writer: a flush every {int(r['flush_every'])} traced passes, {len(fc)} flushes "
          f"({per_gen:.2f} per generation), writer-thread CPU "
          f"{np.median(fc) / 1e6 if len(fc) else 0:.1f} ms per flush (median), "
          f"{fc.sum() / a.pairs / 1e6:.2f} ms per generation")
    # What tracing adds on this rank's critical path, from CPU times (precise where wall time is
    # not): the traced thread's extra CPU plus all of the writer's, as if it never overlapped.
    added = (t.sum() - u.sum()) / a.pairs + fc.sum() / a.pairs
    print(f"CPU added per generation: main thread {(t.sum() - u.sum()) / a.pairs / 1e6:.2f} ms + "
          f"writer {fc.sum() / a.pairs / 1e6:.2f} ms = {added / wall_u:.2%} of the untraced "
          f"generation's wall time")
    print(f"once per session: open (run-id and clock agreement) {float(r['setup']) * 1e3:.0f} ms, "
          f"close (final write) {float(r['teardown']) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
