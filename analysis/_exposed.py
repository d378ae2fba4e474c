"""Exposed communication on the GPU (as in the ISO and TokenWeave papers).

Per rank and step/phase: how much communication-kernel time ran while compute kernels ran on
other streams of the same device (hidden) and how much did not (exposed), and the exposed part
as a share of the step's GPU busy time. Kernel-level inputs come from imported Kineto traces:
`gpu_hidden_ns` per row and the GPU busy time per step in metadata.json (`gpu_busy`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from ._trace import Trace

__all__ = ["exposed_communication"]

_COLUMNS = ["run_id", "rank", "step", "phase", "comm_kernels", "comm_ns", "hidden_ns",
            "exposed_ns", "hidden_fraction", "gpu_busy_ns", "exposed_share_of_gpu"]


def _busy_table(metadata: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"run_id": m.get("run_id"), "rank": int(m.get("rank", 0)), "step": b.get("step"),
             "phase": b.get("phase"), "gpu_busy_ns": b.get("gpu_busy_ns")}
            for m in metadata for b in (m.get("gpu_busy") or [])]
    if not rows:
        return pd.DataFrame(columns=["run_id", "rank", "step", "phase", "gpu_busy_ns"])
    # Several devices per rank (rare): the step's GPU time is the busiest device's.
    return pd.DataFrame(rows).groupby(["run_id", "rank", "step", "phase"], dropna=False,
                                      as_index=False)["gpu_busy_ns"].max()


def exposed_communication(events: pd.DataFrame | str | os.PathLike, *,
                          metadata: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """Hidden vs exposed communication-kernel time per (run, rank, step, phase).

    `events` is a trace path (metadata is read from it) or a DataFrame of events (pass the
    runs' `metadata` for the GPU busy time; without it `gpu_busy_ns` and the share are null).
    Only rows with device time and `gpu_hidden_ns` count (imported Kineto traces); hook rows
    do not know the compute kernels around them. exposed_ns = comm_ns - hidden_ns;
    exposed_share_of_gpu = exposed_ns / gpu_busy_ns (GPU busy = union of all kernels of the
    step on that device).
    """
    if isinstance(events, (str, os.PathLike)):
        with Trace(events) as t:
            metadata = t.metadata if metadata is None else metadata
            events = t.events(columns=["run_id", "rank", "step", "phase", "gpu_duration_ns",
                                       "gpu_hidden_ns"])
    ev = events[events["gpu_duration_ns"].notna() & events["gpu_hidden_ns"].notna()]
    if ev.empty:
        return pd.DataFrame(columns=_COLUMNS)
    ev = ev.assign(comm=ev["gpu_duration_ns"].astype("int64"),
                   hidden=ev["gpu_hidden_ns"].astype("int64"),
                   step=ev["step"].astype("Int64"), phase=ev["phase"].astype(object))
    out = ev.groupby(["run_id", "rank", "step", "phase"], dropna=False, as_index=False).agg(
        comm_kernels=("comm", "size"), comm_ns=("comm", "sum"), hidden_ns=("hidden", "sum"))
    out["exposed_ns"] = out["comm_ns"] - out["hidden_ns"]
    out["hidden_fraction"] = out["hidden_ns"] / out["comm_ns"].where(out["comm_ns"] > 0)
    busy = _busy_table(metadata or [])
    if len(busy):
        busy["step"] = busy["step"].astype("Int64")
        busy["phase"] = busy["phase"].astype(object)
        busy["rank"] = busy["rank"].astype(out["rank"].dtype)
        out = out.merge(busy, on=["run_id", "rank", "step", "phase"], how="left")
    else:
        out["gpu_busy_ns"] = np.nan
    out["exposed_share_of_gpu"] = out["exposed_ns"] / pd.to_numeric(
        out["gpu_busy_ns"]).where(lambda s: s > 0)
    return out[_COLUMNS].sort_values(["run_id", "rank", "step"]).reset_index(drop=True)
