"""The per-(phase, op, dimension, size) summary table (`commscope summary`)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ._bandwidth import bandwidth

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


def summarize(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Per (phase, op, pg_dim, pg_size, size bucket): calls, total time, p50/p90/p99 latency,
    median busbw, bytes, and share of the trace's wall time (first start to last end, per rank,
    averaged over ranks), largest total time first.

    `events` may be a trace path: then DuckDB computes it out of core (for huge traces)."""
    if isinstance(events, (str, os.PathLike)):
        from ._engine import summarize_sql

        return summarize_sql(events)
    ev = bandwidth(events)
    ev["size_bucket"], ev["_bucket_bytes"] = size_bucket(ev["bytes"])
    ev["phase"] = ev["phase"].fillna("(none)")
    ev["pg_dim"] = ev["pg_dim"].fillna("(unlabelled)")
    ev["duration_us"] = ev["duration_ns"].astype("float64") / 1e3
    spans = ev.groupby("rank").agg(a=("t_start_ns", "min"), b=("t_end_ns", "max"))
    wall_ns = float((spans["b"] - spans["a"]).mean()) if len(spans) else 0.0
    n_ranks = max(ev["rank"].nunique(), 1)
    keys = ["phase", "op", "pg_dim", "pg_size", "size_bucket"]
    g = ev.groupby(keys + ["_bucket_bytes"], dropna=False)
    out = g.agg(calls=("op", "size"), bytes_total=("bytes", "sum"),
                total_time_us=("duration_us", "sum"),
                p50_us=("duration_us", lambda s: s.quantile(0.5)),
                p90_us=("duration_us", lambda s: s.quantile(0.9)),
                p99_us=("duration_us", lambda s: s.quantile(0.99)),
                median_busbw_GBps=("busbw_GBps", "median")).reset_index()
    # Time per rank (calls of all ranks are summed above) over the wall time of one rank.
    out["share_of_wall"] = (out["total_time_us"] * 1e3 / n_ranks / wall_ns) if wall_ns else np.nan
    out = out.sort_values(["total_time_us", "_bucket_bytes"], ascending=[False, True])
    return out.drop(columns="_bucket_bytes").reset_index(drop=True)
