"""Algorithm and bus bandwidth with the nccl-tests definitions.

algbw = bytes / time, busbw = algbw x factor(op, n), n = process-group size, GB = 1e9 bytes.
Factors (nccl-tests doc/PERFORMANCE.md): all_reduce 2(n-1)/n; all_gather, reduce_scatter,
all_to_all, gather, scatter (n-1)/n; broadcast, reduce, send, recv 1; barrier has none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["bandwidth", "bus_factor", "BUSBW_DEFINITION"]

# The one table of bus factors (nccl-tests): `bus_factor` and the SQL `_sql.BUS_FACTOR_SQL`
# are both built from it.
#: Ops whose factor is (n-1)/n (all_reduce has twice that).
RING_OPS = ("all_gather", "reduce_scatter", "all_to_all", "gather", "scatter")
#: Ops whose factor is 1.
UNIT_OPS = ("broadcast", "reduce", "send", "recv")

BUSBW_DEFINITION = ("algbw = bytes / time; busbw = algbw x 2(n-1)/n for all_reduce, x (n-1)/n "
                    "for all_gather, reduce_scatter, all_to_all, gather, scatter, x 1 for "
                    "broadcast, reduce, send, recv (nccl-tests); n = process-group size; "
                    "1 GB = 1e9 bytes")


def bus_factor(op: pd.Series | np.ndarray, n: pd.Series | np.ndarray) -> np.ndarray:
    """The nccl-tests bus-bandwidth factor per row (NaN for barrier and unknown ops)."""
    op = np.asarray(op, dtype=object)
    n = np.asarray(pd.to_numeric(pd.Series(n), errors="coerce").astype("float64"))
    ring = np.where(n > 0, (n - 1) / np.where(n > 0, n, 1), np.nan)
    out = np.full(len(op), np.nan)
    out = np.where(op == "all_reduce", 2 * ring, out)
    out = np.where(np.isin(op, RING_OPS), ring, out)
    out = np.where(np.isin(op, UNIT_OPS), 1.0, out)
    return out


def _gbps(nbytes: pd.Series, ns: pd.Series) -> np.ndarray:
    b = pd.to_numeric(nbytes, errors="coerce").astype("float64").to_numpy()
    t = pd.to_numeric(ns, errors="coerce").astype("float64").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t > 0, b / t, np.nan)  # bytes per ns = GB/s


def bandwidth(events: pd.DataFrame) -> pd.DataFrame:
    """`events` with `duration_ns`, `algbw_GBps` and `busbw_GBps` from each call's own
    duration, and `time_basis`: device time where the row has it (gpu_end_ns - gpu_start_ns,
    else gpu_duration_ns), host time (t_end_ns - t_start_ns) otherwise."""
    from ._trace import opened

    frame = events.assign(_row=np.arange(len(events), dtype="int64"))
    with opened(frame, extra=("_row",)) as src:
        b = src.sql("SELECT _row, dur_ns, time_basis FROM events ORDER BY _row")
    out = events.copy()
    out["duration_ns"] = pd.array(b["dur_ns"], dtype="Int64")
    out["time_basis"] = b["time_basis"].to_numpy()
    out["algbw_GBps"] = _gbps(out["bytes"], out["duration_ns"])
    out["busbw_GBps"] = out["algbw_GBps"] * bus_factor(out["op"], out["pg_size"])
    return out
