"""Hand-built traces on disk for the analysis tests, written straight from the schema.

Rows are given in true (rank-0) time; `write_rank` adds the rank's clock offset to every time
column, as a rank whose clock runs ahead would have recorded them, and stores the offset in
metadata.json, so that analyses must subtract it to get the true times back.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from commscope.profiler._schema import COLUMNS, SCHEMA_VERSION_KEY, arrow_schema

MS = 1_000_000
TIME_COLUMNS = ("t_start_ns", "t_end_ns", "t_return_ns", "t_wait_ns", "gpu_start_ns",
                "gpu_end_ns")
# Columns added in schema 1.1: a 1.0 trace has none of them.
V11_COLUMNS = ("gpu_start_ns", "gpu_end_ns", "gpu_hidden_ns", "source", "cuda_graph")


def row(**kw) -> dict:
    """One event with defaults for a 2-rank gloo group '0'."""
    base = dict(run_id="run", world_size=2, host="h", pid=1, pg_name="0", pg_dim="tp",
                pg_size=2, pg_ranks=[0, 1], dtype="float32", phase="decode", step=0,
                async_op=False, backend="gloo", device="cpu", completion="return",
                source="hooks", capture="hook")
    base.update(kw)
    if base.get("t_return_ns") is None and "t_end_ns" in base and not base["async_op"]:
        base["t_return_ns"] = base["t_end_ns"]
    return base


def write_rank(run_dir, rank: int, rows: list[dict], *, offset_ns: int = 0,
               version: str = "1.1", run_id: str = "run") -> str:
    """Write `rows` of `rank` as one part file (+ metadata.json) under run_dir/rank_<N>/."""
    rows = [dict(r, rank=rank, run_id=run_id) for r in rows]
    for i, r in enumerate(rows):
        r.setdefault("seq", i)
        for c in TIME_COLUMNS:
            if r.get(c) is not None:
                r[c] = r[c] + offset_ns
    names = [c.name for c in COLUMNS if version != "1.0" or c.name not in V11_COLUMNS]
    schema = arrow_schema()
    schema = pa.schema([schema.field(n) for n in names],
                       metadata={SCHEMA_VERSION_KEY: version.encode()})
    table = pa.table({n: pa.array([r.get(n) for r in rows], schema.field(n).type)
                      for n in names}, schema=schema)
    d = os.path.join(os.fspath(run_dir), f"rank_{rank:05d}")
    os.makedirs(d, exist_ok=True)
    pq.write_table(table, os.path.join(d, "part-1-00000.parquet"))
    with open(os.path.join(d, "metadata.json"), "w") as fh:
        json.dump({"run_id": run_id, "rank": rank, "clock_offset_ns": offset_ns}, fh)
    return d


def offset_run(run_dir, offset_ns: int = 3 * MS) -> None:
    """A 2-rank run whose rank 1 clock runs `offset_ns` ahead. True times:
    all_reduce #0: both 0..2 ms; all_reduce #1: rank 0 from 10 ms, rank 1 from 15 ms, both end
    17 ms; async send 0->1: 20 ms, returns 20.1, waited at 25, done 26; async recv on 1: 21 ms,
    returns 21.1, waited at 22, done 26; broadcast #2 with device times on both ranks:
    host starts 30 / 30.5 ms (enqueue), device starts 31 / 33 ms, device ends 36 / 36 ms."""
    r0 = [row(pg_seq=0, op="all_reduce", bytes=4_000_000, t_start_ns=0, t_end_ns=2 * MS),
          row(pg_seq=1, op="all_reduce", bytes=4_000_000, t_start_ns=10 * MS,
              t_end_ns=17 * MS),
          row(pg_seq=0, pg_name="p2p", op="send", peer=1, bytes=64, async_op=True,
              t_start_ns=20 * MS, t_return_ns=20_100_000, t_wait_ns=25 * MS, t_end_ns=26 * MS,
              completion="wait"),
          row(pg_seq=2, op="broadcast", bytes=1_000_000, t_start_ns=30 * MS,
              t_end_ns=30_100_000, gpu_start_ns=31 * MS, gpu_end_ns=36 * MS,
              gpu_duration_ns=5 * MS, device="cuda:0", phase="prefill")]
    r1 = [row(pg_seq=0, op="all_reduce", bytes=4_000_000, t_start_ns=0, t_end_ns=2 * MS),
          row(pg_seq=1, op="all_reduce", bytes=4_000_000, t_start_ns=15 * MS,
              t_end_ns=17 * MS),
          row(pg_seq=0, pg_name="p2p", op="recv", peer=0, bytes=64, async_op=True,
              t_start_ns=21 * MS, t_return_ns=21_100_000, t_wait_ns=22 * MS, t_end_ns=26 * MS,
              completion="wait"),
          row(pg_seq=2, op="broadcast", bytes=1_000_000, t_start_ns=30_500_000,
              t_end_ns=30_600_000, gpu_start_ns=33 * MS, gpu_end_ns=36 * MS,
              gpu_duration_ns=3 * MS, device="cuda:1", phase="prefill")]
    write_rank(run_dir, 0, r0, offset_ns=0)
    write_rank(run_dir, 1, r1, offset_ns=offset_ns)


def shift_rank(run_dir, rank: int, offset_ns: int) -> None:
    """Make a recorded rank look as if its clock ran `offset_ns` ahead of rank 0's (gloo ranks
    on one host share a clock): every time column of its part files moves by the offset, which
    metadata.json records, so every analysis must subtract it again."""
    import pyarrow.compute as pc

    folder = run_dir / f"rank_{rank:05d}"
    for part in folder.glob("*.parquet"):
        t = pq.read_table(part)
        for c in TIME_COLUMNS:
            if c in t.column_names:
                i = t.column_names.index(c)
                t = t.set_column(i, c, pc.add(t.column(c), pa.scalar(offset_ns, pa.int64())))
        pq.write_table(t, part)
    meta = folder / "metadata.json"
    m = json.loads(meta.read_text())
    m["clock_offset_ns"] = m.get("clock_offset_ns", 0) + offset_ns
    meta.write_text(json.dumps(m))


def session_events(session):
    """A finished session's events in call order."""
    from commscope import analysis

    return analysis.load_events(session.run_dir).sort_values("seq").reset_index(drop=True)
