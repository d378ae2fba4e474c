"""Analysis at scale: generate a trace of RANKS x CALLS rows, then time match + stragglers +
summarize on it (and a projected load of one rank).

    .venv/bin/python benchmarks/analysis_scale.py                          # 100 x 100,000 = 1e7
    .venv/bin/python benchmarks/analysis_scale.py --ranks 1000 --calls 100000   # 1e8 rows

The dataset is written by DuckDB straight to Parquet in a child process (so the peak RSS
printed is the analysis's alone): schema-1.1 columns with empty device times as hook traces on
CPU have them, 25 ranks per file, every rank in the world group, a 10 % share of all_gather,
per-rank jitter, one straggler (rank 7, 2 ms late on every 10th call) and a clock offset in
each rank folder's metadata.json, so the clock alignment is part of every query. The analysis
opens the trace once (`analysis.Trace`) and asks the three questions; `--free` also times the
free functions on the path, each opening the trace anew.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time

import duckdb

from commscope import analysis
from commscope.profiler._schema import SCHEMA_VERSION

RANKS_PER_FILE = 25


def generate(out: str, ranks: int, calls: int) -> int:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar=false")
    con.execute(f"SET temp_directory='{tempfile.gettempdir()}/commscope-duckdb'")
    for lo in range(0, ranks, RANKS_PER_FILE):
        hi = min(ranks, lo + RANKS_PER_FILE)
        d = os.path.join(out, "scale", f"rank_{lo:05d}")
        os.makedirs(d, exist_ok=True)
        con.execute(f"""
        COPY (
          SELECT 'scale' AS run_id, r::INTEGER AS rank, {ranks}::INTEGER AS world_size,
                 s::BIGINT AS seq, '0' AS pg_name, 'tp' AS pg_dim, {ranks}::INTEGER AS pg_size,
                 s::BIGINT AS pg_seq,
                 CASE WHEN s % 10 = 5 THEN 'all_gather' ELSE 'all_reduce' END AS op,
                 'bfloat16' AS dtype,
                 (CASE WHEN s % 10 = 5 THEN 8192 * {ranks} ELSE (2 << (s % 7)) * 4096 END)::BIGINT
                   AS bytes,
                 CAST(NULL AS INTEGER) AS peer,
                 (s * 100000 + hash(r, s) % 5000
                   + CASE WHEN r = 7 AND s % 10 = 0 THEN 2000000 ELSE 0 END)::BIGINT
                   AS t_start_ns,
                 (s * 100000 + 5000 + 20000 + (2 << (s % 7))
                   + CASE WHEN s % 10 = 0 THEN 2000000 ELSE 0 END)::BIGINT AS t_end_ns,
                 NULL::BIGINT AS gpu_duration_ns, NULL::BIGINT AS gpu_start_ns,
                 NULL::BIGINT AS gpu_end_ns, 'hooks' AS source,
                 CASE WHEN s < {calls // 10} THEN 'prefill' ELSE 'decode' END AS phase,
                 (s // 100)::BIGINT AS step
          FROM range({lo}, {hi}) t(r), range({calls}) u(s)
        ) TO '{d}/part-0-00000.parquet'
          (FORMAT parquet, COMPRESSION zstd,
           KV_METADATA {{'commscope.schema_version': '{SCHEMA_VERSION}'}})""")
        # One metadata.json per folder (its first rank): a clock offset to subtract.
        with open(os.path.join(d, "metadata.json"), "w") as fh:
            json.dump({"run_id": "scale", "rank": lo, "clock_offset_ns": 1000 + lo}, fh)
    con.close()
    return ranks * calls


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(label: str, fn):
    """Wall time, and this process's CPU time (all DuckDB threads): on a shared machine the
    CPU seconds say what the work costs when the wall time is inflated by other load."""
    t0, c0 = time.perf_counter(), _cpu_s()
    out = fn()
    dt, dc = time.perf_counter() - t0, _cpu_s() - c0
    print(f"  {label:<34} {dt:8.1f} s wall {dc:8.1f} s CPU", flush=True)
    return out, dt


def _generate_in_child(out: str, ranks: int, calls: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=generate, args=(out, ranks, calls))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"dataset generation failed (exit code {p.exitcode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=100)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--keep", help="keep the generated dataset in this folder (reused if there)")
    ap.add_argument("--free", action="store_true",
                    help="also time the free functions on the path (each opens the trace)")
    a = ap.parse_args()
    out = a.keep or tempfile.mkdtemp(prefix="commscope-scale-")
    path = os.path.join(out, "scale")
    try:
        n = a.ranks * a.calls
        if not os.path.isdir(path):
            _timed("generate (DuckDB, child process)",
                   lambda: _generate_in_child(out, a.ranks, a.calls))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        print(f"{n:,} rows ({a.ranks} ranks x {a.calls:,} calls), {size / 1e6:,.0f} MB of Parquet")
        c0 = _cpu_s()
        t, open_s = _timed("Trace(path): checks, metadata", lambda: analysis.Trace(path))
        m, match_s = _timed("match_collectives  (t.match)", t.match)
        s, strag_s = _timed("stragglers         (t.stragglers)", t.stragglers)
        u, sum_s = _timed("summarize          (t.summary)", t.summary)
        total = open_s + match_s + strag_s + sum_s
        total_cpu = _cpu_s() - c0
        cols, load_s = _timed("load (projected, 1 rank)", lambda: t.events(
            columns=["rank", "op", "bytes", "t_start_ns"], filters=[("rank", "==", 7)]))
        t.close()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        top = s.iloc[0]
        print(f"instances matched: {len(m):,}; top straggler: rank {int(top['rank'])} "
              f"(last {int(top['times_last']):,} times); summary rows: {len(u)}; "
              f"rank-7 rows loaded: {len(cols):,}")
        print(f"open + match + stragglers + summarize: {total:.1f} s wall = {n / total:,.0f} "
              f"rows/s ({total_cpu:.1f} s CPU on {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f} at the end); peak RSS {rss:,.0f} MiB")
        if a.free:
            free = 0.0
            for name in ("match_collectives", "stragglers", "summarize"):
                free += _timed(f"analysis.{name}(path)",
                               lambda name=name: getattr(analysis, name)(path))[1]
            print(f"free functions on the path: {free:.1f} s (Trace: {total:.1f} s); "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    finally:
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
