"""Analysis at scale: generate a trace of RANKS x CALLS rows, then time load + match + summarize.

    .venv/bin/python benchmarks/analysis_scale.py                          # 100 x 100,000 = 1e7
    .venv/bin/python benchmarks/analysis_scale.py --ranks 1000 --calls 100000   # 1e8 rows

The dataset is written by DuckDB straight to Parquet (commscope schema version in the file
metadata, 25 ranks per file), with every rank in the world group, a 10 % share of all_gather,
per-rank jitter and one straggler (rank 7, 2 ms late on every 10th call). The analysis then runs
out of core through the same public functions users call with a trace path.
"""

from __future__ import annotations

import argparse
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
                 CASE WHEN s < {calls // 10} THEN 'prefill' ELSE 'decode' END AS phase,
                 (s // 100)::BIGINT AS step
          FROM range({lo}, {hi}) t(r), range({calls}) u(s)
        ) TO '{d}/part-0-00000.parquet'
          (FORMAT parquet, COMPRESSION zstd,
           KV_METADATA {{'commscope.schema_version': '{SCHEMA_VERSION}'}})""")
    con.close()
    return ranks * calls


def _timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    print(f"  {label:<28} {dt:8.1f} s", flush=True)
    return out, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=100)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--keep", help="keep the generated dataset in this folder")
    a = ap.parse_args()
    out = a.keep or tempfile.mkdtemp(prefix="commscope-scale-")
    try:
        n, gen_s = _timed("generate (DuckDB)", lambda: generate(out, a.ranks, a.calls))
        path = os.path.join(out, "scale")
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        print(f"{n:,} rows ({a.ranks} ranks x {a.calls:,} calls), {size / 1e6:,.0f} MB of Parquet")
        (cols, load_s) = _timed("load (projected, 1 rank)", lambda: analysis.load_events(
            path, columns=["rank", "op", "bytes", "t_start_ns"], filters=[("rank", "==", 7)]))
        m, match_s = _timed("match_collectives", lambda: analysis.match_collectives(path))
        s, strag_s = _timed("stragglers", lambda: analysis.stragglers(path))
        u, sum_s = _timed("summarize", lambda: analysis.summarize(path))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        top = s.iloc[0]
        print(f"instances matched: {len(m):,}; top straggler: rank {int(top['rank'])} "
              f"(last {int(top['times_last']):,} times); summary rows: {len(u)}; "
              f"rank-7 rows loaded: {len(cols):,}")
        total = load_s + match_s + strag_s + sum_s
        print(f"load + match + stragglers + summarize: {total:.1f} s = {n / total:,.0f} rows/s; "
              f"peak RSS {rss:,.0f} MiB")
    finally:
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
