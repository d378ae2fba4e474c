"""Out-of-core analysis with DuckDB over a trace's Parquet files.

For traces too big for one pandas frame (1,000 ranks x 100,000 calls = 1e8 rows), the analysis
functions accept a trace path instead of a DataFrame and run here: DuckDB scans only the columns
a query needs, aggregates in parallel, spills to disk past its memory limit, and shows a
progress bar on long queries. Results are identical to the pandas implementations (tested).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import duckdb
import pandas as pd

from ._load import _check_file, find_part_files, load_metadata

__all__ = ["connect", "events_view", "match_collectives_sql", "summarize_sql", "stragglers_sql",
           "overlap_sql", "mismatch_candidates_sql"]

# The bus-bandwidth factor in SQL, same definitions as _bandwidth.bus_factor.
_BUS_FACTOR = """CASE
  WHEN op = 'all_reduce' THEN 2.0 * (pg_size - 1) / pg_size
  WHEN op IN ('all_gather', 'reduce_scatter', 'all_to_all', 'gather', 'scatter')
    THEN 1.0 * (pg_size - 1) / pg_size
  WHEN op IN ('broadcast', 'reduce', 'send', 'recv') THEN 1.0
  ELSE NULL END"""


def connect(progress: bool | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection sized for this machine, spilling to a temporary folder."""
    con = duckdb.connect()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") \
        else 8 << 30
    con.execute(f"SET memory_limit='{int(mem * 0.6) >> 20}MB'")
    con.execute(f"SET temp_directory='{tempfile.gettempdir()}/commscope-duckdb'")
    show = sys.stderr.isatty() if progress is None else progress
    con.execute(f"SET enable_progress_bar={'true' if show else 'false'}")
    return con


def events_view(con: duckdb.DuckDBPyConnection, path: str | os.PathLike,
                validate: bool = True) -> None:
    """Create view `events` over every part file under `path`, clock offsets applied."""
    files = find_part_files(path)
    if validate:
        for f in files:
            _check_file(f)
    offsets = pd.DataFrame(
        [(m["run_id"], int(m["rank"]), int(m.get("clock_offset_ns") or 0))
         for m in load_metadata(path)], columns=["run_id", "rank", "clock_offset_ns"])
    if offsets.empty:
        offsets = pd.DataFrame({"run_id": pd.Series(dtype=str), "rank": pd.Series(dtype="int32"),
                                "clock_offset_ns": pd.Series(dtype="int64")})
    con.register("offsets_df", offsets)
    file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"""
        CREATE OR REPLACE VIEW events AS
        SELECT e.* REPLACE (
                 e.t_start_ns - coalesce(o.clock_offset_ns, 0) AS t_start_ns,
                 e.t_end_ns - coalesce(o.clock_offset_ns, 0) AS t_end_ns),
               coalesce(o.clock_offset_ns, 0) AS clock_offset_ns
        FROM read_parquet([{file_list}], hive_partitioning = false) e
        LEFT JOIN offsets_df o ON e.run_id = o.run_id AND e.rank = o.rank""")


def _query(path: Any, sql: str, progress: bool | None) -> pd.DataFrame:
    con = connect(progress)
    try:
        events_view(con, path)
        return con.execute(sql).df()
    finally:
        con.close()


def match_collectives_sql(path: Any, progress: bool | None = None) -> pd.DataFrame:
    """`match_collectives` over a trace path, computed by DuckDB."""
    sql = f"""
    WITH coll AS (
      SELECT run_id, pg_name, pg_seq,
             first(op) AS op, max(bytes) AS bytes, first(pg_size) AS pg_size,
             count(DISTINCT rank) AS ranks_seen,
             min(t_start_ns) AS t_first_start_ns, max(t_start_ns) AS t_last_start_ns,
             min(t_end_ns) AS t_first_end_ns, arg_max(rank, t_start_ns) AS last_rank,
             arg_min(phase, t_start_ns) AS phase, arg_min(step, t_start_ns) AS step,
             CAST(NULL AS BIGINT) AS src, CAST(NULL AS BIGINT) AS dst
      FROM events WHERE op NOT IN ('send', 'recv')
      GROUP BY run_id, pg_name, pg_seq),
    p2p AS (
      SELECT s.run_id, s.pg_name, s.pg_seq, 'send' AS op, s.bytes, 2 AS pg_size,
             2 AS ranks_seen, least(s.t_start_ns, r.t_start_ns) AS t_first_start_ns,
             greatest(s.t_start_ns, r.t_start_ns) AS t_last_start_ns,
             least(s.t_end_ns, r.t_end_ns) AS t_first_end_ns,
             CASE WHEN s.t_start_ns >= r.t_start_ns THEN s.rank ELSE r.rank END AS last_rank,
             s.phase, s.step, s.rank AS src, r.rank AS dst
      FROM (SELECT * FROM events WHERE op = 'send') s
      JOIN (SELECT * FROM events WHERE op = 'recv') r
        ON s.run_id = r.run_id AND s.pg_name = r.pg_name AND s.rank = r.peer
       AND s.peer = r.rank AND s.pg_seq = r.pg_seq),
    allm AS (SELECT * FROM coll UNION ALL BY NAME SELECT * FROM p2p)
    SELECT run_id, pg_name, pg_seq, op, bytes, pg_size, ranks_seen, t_first_start_ns,
           t_last_start_ns, t_last_start_ns - t_first_start_ns AS start_skew_ns, last_rank,
           greatest(t_first_end_ns - t_last_start_ns, 0) AS transfer_ns,
           CASE WHEN greatest(t_first_end_ns - t_last_start_ns, 0) > 0
                THEN bytes / greatest(t_first_end_ns - t_last_start_ns, 0) END AS algbw_GBps,
           CASE WHEN greatest(t_first_end_ns - t_last_start_ns, 0) > 0
                THEN bytes / greatest(t_first_end_ns - t_last_start_ns, 0) * {_BUS_FACTOR}
                END AS busbw_GBps,
           phase, step, src, dst
    FROM allm ORDER BY run_id, pg_name, pg_seq, src NULLS FIRST"""
    return _query(path, sql, progress)


def stragglers_sql(path: Any, progress: bool | None = None) -> pd.DataFrame:
    """`stragglers` over a trace path, computed by DuckDB."""
    sql = """
    WITH c AS (SELECT run_id, pg_name, pg_seq, rank, t_start_ns FROM events
               WHERE op NOT IN ('send', 'recv')),
    w AS (SELECT *, max(t_start_ns) OVER (PARTITION BY run_id, pg_name, pg_seq) - t_start_ns
                    AS wait_ns FROM c),
    inst AS (SELECT run_id, pg_name, pg_seq, arg_max(rank, t_start_ns) AS last_rank,
                    sum(wait_ns) AS total_wait, count(DISTINCT rank) AS ranks
             FROM w GROUP BY ALL),
    imposed AS (SELECT last_rank AS rank, count(*) AS times_last,
                       sum(total_wait) AS wait_imposed_ns
                FROM inst WHERE ranks > 1 AND total_wait > 0 GROUP BY last_rank),
    per AS (SELECT rank, count(*) AS collectives, sum(wait_ns) AS wait_total_ns FROM w
            GROUP BY rank)
    SELECT per.rank, collectives, coalesce(times_last, 0) AS times_last,
           coalesce(wait_imposed_ns, 0) AS wait_imposed_ns, wait_total_ns,
           coalesce(times_last, 0) / collectives AS share_last
    FROM per LEFT JOIN imposed USING (rank)
    ORDER BY wait_imposed_ns DESC, rank"""
    out = _query(path, sql, progress)
    for c in ("rank", "collectives", "times_last", "wait_imposed_ns", "wait_total_ns"):
        out[c] = out[c].astype("int64")
    return out


def summarize_sql(path: Any, progress: bool | None = None) -> pd.DataFrame:
    """`summarize` over a trace path, computed by DuckDB."""
    sql = f"""
    WITH e AS (
      SELECT coalesce(phase, '(none)') AS phase, op, coalesce(pg_dim, '(unlabelled)') AS pg_dim,
             pg_size, rank, bytes, t_start_ns, t_end_ns,
             (t_end_ns - t_start_ns) / 1e3 AS duration_us,
             CASE WHEN bytes > 0 THEN pow(2, ceil(log2(bytes))) ELSE 0 END AS bucket_bytes,
             CASE WHEN t_end_ns > t_start_ns
                  THEN bytes / (t_end_ns - t_start_ns) * {_BUS_FACTOR} END AS busbw
      FROM events),
    spans AS (SELECT avg(b - a) AS wall_ns, count(*) AS n_ranks FROM
              (SELECT rank, min(t_start_ns) AS a, max(t_end_ns) AS b FROM e GROUP BY rank))
    SELECT phase, op, pg_dim, pg_size, bucket_bytes, count(*) AS calls,
           CAST(sum(bytes) AS BIGINT) AS bytes_total, sum(duration_us) AS total_time_us,
           quantile_cont(duration_us, 0.5) AS p50_us, quantile_cont(duration_us, 0.9) AS p90_us,
           quantile_cont(duration_us, 0.99) AS p99_us, median(busbw) AS median_busbw_GBps,
           sum(duration_us) * 1e3 / any_value(spans.n_ranks) / any_value(spans.wall_ns)
             AS share_of_wall
    FROM e, spans GROUP BY phase, op, pg_dim, pg_size, bucket_bytes
    ORDER BY total_time_us DESC, bucket_bytes"""
    from ._summary import _bucket_label

    out = _query(path, sql, progress)
    out.insert(4, "size_bucket", [_bucket_label(v) for v in out["bucket_bytes"]])
    return out.drop(columns="bucket_bytes")


def overlap_sql(path: Any, progress: bool | None = None) -> pd.DataFrame:
    """`overlap` over a trace path, computed by DuckDB."""
    sql = """
    WITH a AS (
      SELECT coalesce(phase, '(none)') AS phase, op, t_wait_ns IS NOT NULL AS waited,
             CASE WHEN t_wait_ns IS NOT NULL THEN t_end_ns - t_start_ns END AS total_ns,
             greatest(t_wait_ns - t_return_ns, 0) AS window_ns,
             greatest(t_end_ns - t_wait_ns, 0) AS exposed_ns
      FROM events WHERE async_op)
    SELECT phase, op, count(*) AS count, sum(waited::INTEGER) AS waited,
           coalesce(sum(total_ns), 0)::BIGINT AS total_ns,
           coalesce(sum(window_ns), 0)::BIGINT AS window_ns,
           coalesce(sum(exposed_ns), 0)::BIGINT AS exposed_ns
    FROM a GROUP BY phase, op ORDER BY phase, op"""
    out = _query(path, sql, progress)
    out["hidden_ns"] = (out["total_ns"] - out["exposed_ns"]).clip(lower=0)
    out["hidden_fraction"] = (out["hidden_ns"] / out["total_ns"]).where(out["total_ns"] > 0)
    return out


def mismatch_candidates_sql(path: Any, progress: bool | None = None) -> pd.DataFrame:
    """The rows of the first suspicious collective instance per group (fewer callers than
    members, or several op/bytes/dtype signatures), for `find_mismatches` to explain."""
    sql = """
    WITH c AS (SELECT * FROM events WHERE op NOT IN ('send', 'recv')),
    inst AS (
      SELECT run_id, pg_name, pg_seq, count(DISTINCT rank) AS n,
             count(DISTINCT op || ' ' || coalesce(bytes::VARCHAR, '') || ' ' ||
                   coalesce(dtype, '')) AS sigs,
             max(len(pg_ranks)) AS members
      FROM c GROUP BY ALL),
    first_bad AS (
      SELECT run_id, pg_name, min(pg_seq) AS pg_seq FROM inst
      WHERE n < members OR sigs > 1 GROUP BY ALL)
    SELECT c.run_id, c.pg_name, c.pg_seq, c.rank, c.op, c.bytes, c.dtype, c.pg_ranks
    FROM c JOIN first_bad USING (run_id, pg_name, pg_seq)"""
    return _query(path, sql, progress)
