"""The per-(phase, op, dimension, size) summary table (`commscope summary`)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ._sql import BUS_FACTOR_SQL

__all__ = ["summarize", "size_bucket"]

_UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, "B"))


def _bucket_label(v: float) -> str:
    if not v or v != v:
        return "0B"
    for size, unit in _UNITS:
        if v >= size:
            return f"<={int(v // size)}{unit}"
    return f"<={int(v)}B"


def size_bucket(nbytes: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Power-of-two upper bound of each size, as a label ('<=4KiB'; '0B' for empty calls),
    and the bound in bytes."""
    b = pd.to_numeric(nbytes, errors="coerce").astype("float64").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(b > 0, 2 ** np.ceil(np.log2(np.where(b > 0, b, 1))), 0)
    labels = {v: _bucket_label(v) for v in np.unique(up)}
    return pd.Series([labels[v] for v in up], index=nbytes.index, dtype=object), up


def _summary(src) -> pd.DataFrame:
    """`summarize`: per (phase, op, dimension, size bucket) latency and bandwidth."""
    from ._matching import rank_stats

    # Wall span per rank (device times included), from the pass stragglers shares.
    stats = rank_stats(src)
    # Per row only what must be per row; the bus factor, units and labels are applied to the
    # few result rows (op and pg_size are group keys, so the factor is constant per group).
    sql = f"""
    WITH spans AS (SELECT avg(b - a) AS wall_ns, count(*) AS n_ranks FROM
                   (SELECT rank, min(a) AS a, max(b) AS b FROM {stats} GROUP BY rank)),
    g AS (
      SELECT phase, op, pg_dim, pg_size,
             coalesce(CASE WHEN bytes > 0 THEN pow(2, ceil(log2(bytes))) END, 0)
               AS bucket_bytes,
             count(*) AS calls, CAST(coalesce(sum(bytes), 0) AS BIGINT) AS bytes_total,
             coalesce(sum(dur_ns), 0) AS total_ns,
             quantile_cont(dur_ns, [0.5, 0.9, 0.99]) AS q_ns,
             median(CASE WHEN dur_ns > 0 THEN bytes / dur_ns END) AS median_algbw,
             bool_and(dev_duration) AS dev_all, bool_or(dev_duration) AS dev_any
      FROM events GROUP BY ALL)
    SELECT coalesce(phase, '(none)') AS phase, op, coalesce(pg_dim, '(unlabelled)') AS pg_dim,
           pg_size, bucket_bytes, calls, bytes_total, total_ns / 1e3 AS total_time_us,
           q_ns[1] / 1e3 AS p50_us, q_ns[2] / 1e3 AS p90_us, q_ns[3] / 1e3 AS p99_us,
           median_algbw * {BUS_FACTOR_SQL} AS median_busbw_GBps,
           CASE WHEN spans.wall_ns > 0 THEN total_ns / spans.n_ranks / spans.wall_ns END
             AS share_of_wall,
           CASE WHEN dev_all THEN 'device' WHEN dev_any THEN 'mixed' ELSE 'host' END
             AS time_basis
    FROM g, spans
    ORDER BY total_time_us DESC, bucket_bytes, phase, op, pg_dim, pg_size"""
    out = src.sql(sql)
    out.insert(4, "size_bucket", [_bucket_label(v) for v in out["bucket_bytes"]])
    cols = ["phase", "op", "pg_dim", "pg_size", "size_bucket", "calls", "bytes_total",
            "total_time_us", "p50_us", "p90_us", "p99_us", "median_busbw_GBps", "share_of_wall",
            "time_basis"]
    out["calls"] = out["calls"].astype("int64")
    return out[cols]


def summarize(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Per (phase, op, pg_dim, pg_size, size bucket): calls, total time, p50/p90/p99 latency,
    median busbw, bytes, share of the trace's wall time (first start to last end, per rank,
    averaged over ranks), largest total time first, and time_basis: 'device' when every call's
    duration is device time, 'host' when none is, 'mixed' otherwise.

    `events`: DataFrame, trace path (out of core) or `Trace`; one implementation for all."""
    from ._trace import opened

    with opened(events) as src:
        return src.summary()
