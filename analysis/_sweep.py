"""The nccl-tests-style table of a `commscope bench` sweep trace."""

from __future__ import annotations

import pandas as pd

from ..profiler._ops import GATHER_LIKE
from ._bandwidth import _gbps, bandwidth, bus_factor
from ._matching import match_collectives

__all__ = ["sweep_table"]


def sweep_table(events: pd.DataFrame) -> pd.DataFrame:
    """Per (op, size): count (elements of S), time_us (median per-call time over ranks and
    iterations, as nccl-tests times one call on each rank; device time where the trace has
    it, see `bandwidth`), transfer_us (median from the last
    arrival to the first completion), algbw_GBps and busbw_GBps from time_us (nccl-tests
    definitions), iterations. Only calls tagged phase "bench" (not the warm-up) count."""
    ev = events[events["phase"] == "bench"]
    if ev.empty:
        return pd.DataFrame(columns=["op", "pg_size", "bytes", "count", "dtype", "time_us",
                                     "transfer_us", "algbw_GBps", "busbw_GBps", "iterations"])
    # Device time per call where the trace has it (on NCCL host time is only the enqueue).
    ev = bandwidth(ev)
    ev = ev.assign(dur=ev["duration_ns"].astype("float64"))
    # Element size from the trace itself: bytes = count x elem (x pg_size for gathers).
    mult = ev["pg_size"].where(ev["op"].isin(GATHER_LIKE), 1)
    ev = ev.assign(elem=ev["bytes"] // (ev["count"] * mult).where(ev["count"] > 0, 1))
    t = ev.groupby(["op", "pg_size", "bytes", "dtype"]).agg(
        time_ns=("dur", "median"), calls=("dur", "size"), ranks=("rank", "nunique"),
        elem=("elem", "first")).reset_index()
    m = match_collectives(ev)
    tr = m.groupby(["op", "bytes"])["transfer_ns"].median().rename("transfer_ns")
    t = t.join(tr, on=["op", "bytes"])
    t["count"] = (t["bytes"] // t["elem"].clip(lower=1)).astype("int64")
    t["time_us"] = t["time_ns"] / 1e3
    t["transfer_us"] = t["transfer_ns"].astype("float64") / 1e3
    t["algbw_GBps"] = _gbps(t["bytes"], t["time_ns"])
    t["busbw_GBps"] = t["algbw_GBps"] * bus_factor(t["op"], t["pg_size"])
    t["iterations"] = (t["calls"] // t["ranks"]).astype("int64")
    cols = ["op", "pg_size", "bytes", "count", "dtype", "time_us", "transfer_us", "algbw_GBps",
            "busbw_GBps", "iterations"]
    return t.sort_values(["op", "bytes"])[cols].reset_index(drop=True)
