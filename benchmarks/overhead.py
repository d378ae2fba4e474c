"""Cost of tracing: added time per call, trace write rate, memory over many events.

    .venv/bin/python benchmarks/overhead.py            # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/overhead.py --memory-events 10000000
    COMMSCOPE_NO_NATIVE=1 .venv/bin/python benchmarks/overhead.py   # the pure-Python hook

It prints which hook runs (the compiled one, or the pure-Python fallback), then, each a ratio or
difference taken in this one run:
1. Sustained: whole sessions (open, N calls with several part files written, close) against the
   same N calls untraced, alternating; added wall time per call, the calling thread's CPU, and
   the per-session part (open and close), which N amortises. A third arm runs the same sessions
   with no part encoded or written: the difference is what the writer thread costs the caller.
2. Hook cost per call on the single-process fake process group (same Python path as a real
   backend, ~0.02 us noise): untraced and traced blocks alternate; the median of the per-pair
   differences is the added time per call. Default and capture="full" modes.
3. The same on 2 real gloo ranks (1-element all_reduce), alternating blocks. On 2 cores its
   noise (tens of us) is far above the hook's cost; it is printed for reference.
4. Write rate: packed records and raw rows -> Arrow -> LZ4 Parquet part files, events/s.
5. Memory: peak RSS growth while recording N events through the hooks (the buffer is bounded
   by flush_events, so growth must not scale with N).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

from commscope import profiler
from commscope.profiler._wrappers import hook_kind


def _block(n: int, t: torch.Tensor, fn=None) -> float:
    fn = fn or dist.all_reduce
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn(t)
    return (time.perf_counter_ns() - t0) / n / 1e3


def _summary(base: list[float], traced: list[float]) -> tuple[float, float, float]:
    diffs = [b - a for a, b in zip(base, traced)]
    return statistics.median(base), statistics.median(traced), statistics.median(diffs)


def fake_pg_overhead(pairs: int, calls: int, out: str) -> tuple[float, float, float]:
    """Default capture: one long session; blocks alternate between torch's own all_reduce and
    the traced one, so the difference is the hook plus its amortised share of flushing."""
    t = torch.ones(1)
    base, traced = [], []
    with profiler.trace(out, run_name="overhead"):
        wrapped = dist.all_reduce
        original = wrapped.__commscope_original__
        _block(calls, t, original)
        _block(calls, t, wrapped)
        for _ in range(pairs):
            base.append(_block(calls, t, original))
            traced.append(_block(calls, t, wrapped))
    return _summary(base, traced)


def _session_calls(n: int, t: torch.Tensor, out: str, name: str) -> tuple[int, int, int, int]:
    """One whole session around n calls: open, calls and close in ns of wall time, parts."""
    t0 = time.perf_counter_ns()
    s = profiler.trace(out, run_name=name, flush_events=65536).open()
    t1 = time.perf_counter_ns()
    fn = dist.all_reduce
    for _ in range(n):
        fn(t)
    t2 = time.perf_counter_ns()
    s.close()
    return t1 - t0, t2 - t1, time.perf_counter_ns() - t2, s.parts


def sustained_overhead(n: int, rounds: int, out: str) -> dict:
    """The honest figure: a whole session (open, n calls with several flushes, close, final
    write) against the same n calls untraced, alternating `rounds` times in this run. A third
    arm runs the same sessions with each part's encoding and writing replaced by nothing (the
    session module's `columns_to_table` and `write_part`: these sessions buffer packed records
    only), so the difference between the two traced arms is what the writer thread costs the
    calling thread. Returns medians (us/call: untraced, traced, added
    wall and CPU time of the calling thread, added wall and CPU with no part written), the parts
    per session and the median open and close times (ms). Wall minus CPU is what the calling
    thread spent waiting (for the GIL or a core while the writer thread ran)."""
    from commscope.profiler import _session

    encode_write = _session.columns_to_table, _session.write_part
    nothing = (lambda *args: None, lambda *args: "")

    t = torch.ones(1)
    base, bcpu, traced, cpu, bare, bare_cpu, opens, closes = ([] for _ in range(8))
    for r in range(rounds):
        c0 = time.thread_time_ns()
        base.append(_block(n, t))
        bcpu.append((time.thread_time_ns() - c0) / n / 1e3)
        for arm, (wall, cpus) in (("traced", (traced, cpu)), ("bare", (bare, bare_cpu))):
            _session.columns_to_table, _session.write_part = \
                encode_write if arm == "traced" else nothing
            try:
                c0 = time.thread_time_ns()
                o, c, cl, parts = _session_calls(n, t, out, f"sustained-{arm}-{r}")
                cpus.append((time.thread_time_ns() - c0) / n / 1e3)
            finally:
                _session.columns_to_table, _session.write_part = encode_write
            wall.append((o + c + cl) / n / 1e3)
            if arm == "traced":
                opens.append(o / 1e6)
                closes.append(cl / 1e6)

    def added(xs, ys):
        return statistics.median(y - x for x, y in zip(xs, ys))

    return {"untraced": statistics.median(base), "traced": statistics.median(traced),
            "added": added(base, traced), "cpu": added(bcpu, cpu),
            "bare": added(base, bare), "bare_cpu": added(bcpu, bare_cpu), "parts": parts,
            "open": statistics.median(opens), "close": statistics.median(closes)}


def full_capture_overhead(pairs: int, calls: int, out: str) -> tuple[float, float, float]:
    """capture="full" intercepts every dispatched op, so untraced blocks run outside a session."""
    t = torch.ones(1)
    base, traced = [], []
    for _ in range(pairs):
        base.append(_block(calls, t))
        with profiler.trace(out, capture="full"):
            traced.append(_block(calls, t))
    return _summary(base, traced)


def wrapper_floor(calls: int) -> float:
    """What any Python wrapper that takes two timestamps, reads dtype/numel and appends a tuple
    costs on this machine: the floor under the hook's cost."""
    import threading
    from time import time_ns

    t = torch.ones(1)
    buf: list = []

    def noop(tensor):
        return None

    def minimal(tensor):
        tid = threading.get_ident()
        t0 = time_ns()
        res = noop(tensor)
        buf.append((t0, time_ns(), tensor.dtype, tensor.numel(), tid))
        return res

    a = min(_block(calls * 10, t, noop) for _ in range(5))
    b = min(_block(calls * 10, t, minimal) for _ in range(5))
    return b - a


def write_rate(n: int, out: str) -> tuple[float, float]:
    """Events per second from buffer to Parquet part files, as the writer thread does it, for
    the two kinds of buffered events: packed records (every blocking call on CPU tensors: what
    the hooks append) and raw Python rows (async calls, engine methods, CUDA-timed calls)."""
    from commscope.profiler._columns import ColumnBuffer, KeyTable, pack
    from commscope.profiler._groups import GroupInfo
    from commscope.profiler._phases import PhaseFrame
    from commscope.profiler._rows import register_api
    from commscope.profiler._writer import Identity, columns_to_table, rows_to_table, write_part

    api = register_api("all_reduce", "all_reduce")
    group = GroupInfo("0", 2, (0, 1), "gloo")
    ident = Identity("bench", 0, 2, "host", 1, "0")
    chunk = 65536
    keys, buf = KeyTable(), ColumnBuffer()
    t0 = time.time_ns()
    frame = None
    for i in range(n):  # one decode step per 100 calls, as the hook would see them
        if i % 100 == 0:
            frame = PhaseFrame("decode", "decode", i // 100)
        code, step = keys.code(api, torch.bfloat16, group, frame)
        buf.ints.frombytes(pack(t0 + i, t0 + i + 400, 4096, 4096, 4096, i, i, 1234, step, code))
    data, snapshot = buf.take(), keys.snapshot()
    start = time.perf_counter()
    for k in range(0, n, chunk):
        write_part(columns_to_table(data[k:k + chunk], snapshot, ident, {}), out,
                   f"packed-{k}.parquet")
    packed = n / (time.perf_counter() - start)
    rows = [[api, t0 + i, t0 + i + 500, t0 + i + 400, torch.bfloat16, 4096, 4096, 4096, group,
             i, i, frame, 1234, None] for i in range(min(n, 4 * chunk))]
    start = time.perf_counter()
    for k in range(0, len(rows), chunk):
        write_part(rows_to_table(rows[k:k + chunk], ident, {}), out, f"rows-{k}.parquet")
    return packed, len(rows) / (time.perf_counter() - start)


def memory_growth(n: int, out: str) -> tuple[float, float, float]:
    """Peak RSS (MiB) before and after recording n events, and the events/s achieved."""
    t = torch.ones(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with profiler.trace(out, run_name="memory") as s:
        for _ in range(n):
            dist.all_reduce(t)
    rate = n / (time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert s.events_written == n
    return before, after, rate


def _gloo_rank(rank: int, world: int, port: int, pairs: int, calls: int, out: str, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    t = torch.ones(1)
    _block(calls, t)
    base, traced = [], []
    for _ in range(pairs):
        dist.barrier()
        base.append(_block(calls, t))
        with profiler.trace(out):
            dist.barrier()
            traced.append(_block(calls, t))
    if rank == 0:
        q.put((statistics.median(base), statistics.median(traced),
               statistics.median(b - a for a, b in zip(base, traced))))
    dist.destroy_process_group()


def gloo_overhead(pairs: int, calls: int, out: str) -> tuple[float, float, float]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_gloo_rank, args=(2, port, pairs, calls, out, q), nprocs=2,
                       start_method="spawn")
    return q.get()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=30, help="alternating untraced/traced pairs")
    ap.add_argument("--calls", type=int, default=2000, help="calls per block")
    ap.add_argument("--write-events", type=int, default=1_000_000)
    ap.add_argument("--memory-events", type=int, default=2_000_000)
    # Several whole sessions, alternating with the same calls untraced: the median of the
    # paired differences shrugs off bursts of other work on a shared 2-core machine. A session
    # of 1 M calls (~5-9 s here) keeps its fixed open/close cost (printed) to ~0.03 us/call.
    ap.add_argument("--sustained-events", type=int, default=1_000_000,
                    help="calls per session (flush_events 65536: 16 part files each)")
    ap.add_argument("--sustained-rounds", type=int, default=9)
    ap.add_argument("--skip-gloo", action="store_true")
    ap.add_argument("--only-sustained", action="store_true",
                    help="print the sustained, write-rate and memory figures only")
    a = ap.parse_args()
    from torch.testing._internal.distributed.fake_pg import FakeStore

    with tempfile.TemporaryDirectory() as out:
        dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
        print(f"torch {torch.__version__}, {os.cpu_count()} cores; blocks of {a.calls} calls, "
              f"{a.pairs} alternating pairs")
        print(f"[hook] {hook_kind()}")
        r = sustained_overhead(a.sustained_events, a.sustained_rounds,
                               os.path.join(out, "sustained"))
        n = a.sustained_events
        print(f"[sustained, fake pg] {n:,} calls: untraced {r['untraced']:.2f} us/call; whole "
              f"session (open, calls, {r['parts']} parts written, close) {r['traced']:.2f} "
              f"us/call; added {r['added']:+.2f} us/call (median of {a.sustained_rounds} "
              f"alternating rounds); the calling thread's CPU {r['cpu']:+.2f} us/call; of the "
              f"added time, open {r['open']:.1f} ms and close {r['close']:.1f} ms per session "
              f"({(r['open'] + r['close']) * 1e3 / n:.2f} us/call)")
        print(f"[sustained, no part written] the same sessions with encoding and writing "
              f"replaced by nothing: added {r['bare']:+.2f} us/call (CPU {r['bare_cpu']:+.2f}); "
              f"the writer thread costs the calling thread {r['added'] - r['bare']:+.2f} us/call")
        runs = () if a.only_sustained else (("default", fake_pg_overhead),
                                            ("full", full_capture_overhead))
        for capture, fn in runs:
            b, t, d = fn(a.pairs, a.calls, os.path.join(out, capture))
            print(f"[fake pg, capture={capture:7s}] untraced {b:7.2f} us/call, traced {t:7.2f} "
                  f"us/call, added {d:+.2f} us/call (median of pair differences), "
                  f"ratio {t / b:.3f}")
        print(f"[floor] a minimal Python wrapper (2 timestamps, dtype, numel, append) adds "
              f"{wrapper_floor(a.calls):.2f} us/call on this machine")
        before, after, rec_rate = memory_growth(a.memory_events, os.path.join(out, "mem"))
        print(f"[memory] {a.memory_events:,} events traced at {rec_rate:,.0f} calls/s; peak RSS "
              f"{before:.0f} MiB -> {after:.0f} MiB (+{after - before:.0f} MiB)")
        packed, raw = write_rate(a.write_events, os.path.join(out, "write"))
        print(f"[write] {a.write_events:,} events -> Parquet at {packed:,.0f} events/s "
              f"(packed records of blocking calls); raw rows (async, engine, CUDA-timed calls) "
              f"{raw:,.0f} events/s")
        dist.destroy_process_group()
        if not (a.skip_gloo or a.only_sustained):
            b, t, d = gloo_overhead(max(5, a.pairs // 3), a.calls // 4, os.path.join(out, "gloo"))
            print(f"[gloo 2 ranks] untraced {b:7.2f} us/call, traced {t:7.2f} us/call, added "
                  f"{d:+.2f} us/call, ratio {t / b:.3f} (noise on 2 cores is +-10-40 us)")


if __name__ == "__main__":
    main()
