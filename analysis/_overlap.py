"""Overlap of asynchronous communication with computation.

For an async call: issue window = t_wait_ns - t_return_ns (time the program did other work
between issuing and waiting: where the transfer could hide), exposed = t_end_ns - t_wait_ns
(time blocked in wait), hidden fraction = 1 - exposed / (t_end_ns - t_start_ns).
Calls never waited on (`completion == 'unobserved'`) are counted but not timed.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

__all__ = ["overlap"]


def overlap(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Per (phase, op) over async calls: count, waited, total_ns (issue to completion),
    window_ns (issue returned to wait began), exposed_ns (blocked in wait), hidden_ns,
    hidden_fraction. `events` may be a trace path (DuckDB, out of core)."""
    if isinstance(events, (str, os.PathLike)):
        from ._engine import overlap_sql

        return overlap_sql(events)
    ev = events[events["async_op"].fillna(False).astype(bool)].copy()
    cols = ["phase", "op", "count", "waited", "total_ns", "window_ns", "exposed_ns", "hidden_ns",
            "hidden_fraction"]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    waited = ev["t_wait_ns"].notna()
    ev["waited"] = waited
    ev["total_ns"] = (ev["t_end_ns"] - ev["t_start_ns"]).where(waited)
    ev["window_ns"] = (ev["t_wait_ns"] - ev["t_return_ns"]).clip(lower=0)
    ev["exposed_ns"] = (ev["t_end_ns"] - ev["t_wait_ns"]).clip(lower=0)
    ev["phase"] = ev["phase"].fillna("(none)")
    g = ev.groupby(["phase", "op"], dropna=False).agg(
        count=("op", "size"), waited=("waited", "sum"), total_ns=("total_ns", "sum"),
        window_ns=("window_ns", "sum"), exposed_ns=("exposed_ns", "sum")).reset_index()
    for c in ("total_ns", "window_ns", "exposed_ns"):
        g[c] = g[c].astype("int64")
    g["hidden_ns"] = (g["total_ns"] - g["exposed_ns"]).clip(lower=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        g["hidden_fraction"] = np.where(g["total_ns"] > 0, g["hidden_ns"] / g["total_ns"], np.nan)
    return g[cols]
