"""Export a commscope trace as Chrome trace-event JSON (Perfetto UI, chrome://tracing).

One process per rank, one track per process group (host calls) and one per process group on the
device (device-time slices where rows have them); each slice's args hold op, bytes, group and
bus bandwidth. The full row is kept in `args.row` and the runs' metadata at the top under
`commscope_export`, so `commscope import` reads the file back into the same calls.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from ..analysis._bandwidth import bus_factor
from ..analysis._load import find_part_files, load_metadata

__all__ = ["export_perfetto", "EXPORT_VERSION"]

EXPORT_VERSION = 1
_TIME = ("t_start_ns", "t_end_ns", "t_return_ns", "t_wait_ns", "gpu_start_ns", "gpu_end_ns")


def _jsonable(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    return v


def _raw_events(trace: str | os.PathLike) -> pd.DataFrame:
    """Rows as stored (no clock offsets applied): the export keeps them exact for re-import."""
    files = find_part_files(trace)
    return ds.dataset(files, format="parquet").to_table().to_pandas()


def export_perfetto(trace: str | os.PathLike, out_json: str | os.PathLike) -> str:
    """Write `trace` (a run folder or folder of runs) as Chrome trace-event JSON; returns the path.

    Slices are placed on each rank's clock corrected by its `clock_offset_ns`. Host slices
    (`cat` 'comm') span the call; device slices (`cat` 'comm_gpu') span the kernel or CUDA-event
    interval. args: op, bytes, dtype, pg_name, pg_seq, busbw_GBps (from device time where
    present), time_basis.
    """
    ev = _raw_events(trace)
    metas = load_metadata(trace)
    offsets = {(m.get("run_id"), int(m.get("rank", 0))): int(m.get("clock_offset_ns") or 0)
               for m in metas}
    events: list[dict[str, Any]] = []
    runs = sorted(ev["run_id"].dropna().unique()) if len(ev) else []
    pid_of = {}
    for i, run in enumerate(runs):
        for rank in sorted(ev.loc[ev["run_id"] == run, "rank"].unique()):
            pid = int(rank) + 100000 * i
            pid_of[(run, int(rank))] = pid
            label = f"rank {int(rank)}" + (f" ({run})" if len(runs) > 1 else "")
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                           "args": {"name": label}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                           "args": {"sort_index": pid}})
    if len(ev):
        dev = ev["gpu_duration_ns"].notna() & ev["gpu_start_ns"].notna()
        dur = np.where(dev, ev["gpu_duration_ns"].astype("float64"),
                       (ev["t_end_ns"] - ev["t_start_ns"]).astype("float64"))
        factor = bus_factor(ev["op"], ev["pg_size"])
        algbw = ev["bytes"].astype("float64") / np.where(dur > 0, dur, np.nan)
        busbw = algbw * factor
        tracks: dict[tuple, int] = {}
        per_pid: dict[int, int] = {}

        def track(pid: int, kind: str, pg: str, label: str) -> int:
            """The tid of (pid, kind, pg), numbered per process in order of first use."""
            key = (pid, kind, pg)
            if key not in tracks:
                tracks[key] = per_pid[pid] = per_pid.get(pid, 0) + 1
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tracks[key],
                               "args": {"name": label}})
            return tracks[key]

        names = ev.columns.tolist()
        for idx, rec in enumerate(ev.itertuples(index=False)):
            row = dict(zip(names, rec))
            key = (row["run_id"], int(row["rank"]))
            pid = pid_of[key]
            off = offsets.get(key, 0)
            pg = str(row["pg_name"])
            host_tid = track(pid, "host", pg, f"group {pg} ({row['pg_dim'] or '-'}) calls")
            args = {"op": row["op"], "bytes": _jsonable(row["bytes"]), "dtype": row["dtype"],
                    "pg_name": pg, "pg_size": _jsonable(row["pg_size"]),
                    "pg_seq": _jsonable(row["pg_seq"]), "source": row["source"],
                    "busbw_GBps": _jsonable(busbw[idx]), "algbw_GBps": _jsonable(algbw[idx]),
                    "time_basis": "device" if dev.iloc[idx] else "host",
                    "row": {k: _jsonable(v) for k, v in row.items()}}
            t0, t1 = row["t_start_ns"], row["t_end_ns"]
            events.append({"ph": "X", "cat": "comm", "name": str(row["op"]), "pid": pid,
                           "tid": host_tid, "ts": (int(t0) - off) / 1000,
                           "dur": max(int(t1) - int(t0), 0) / 1000, "args": args})
            if dev.iloc[idx]:
                gpu_tid = track(pid, "gpu", pg, f"group {pg} on {row['device'] or 'GPU'}")
                events.append({"ph": "X", "cat": "comm_gpu", "name": f"{row['op']} (device)",
                               "pid": pid, "tid": gpu_tid,
                               "ts": (int(row["gpu_start_ns"]) - off) / 1000,
                               "dur": int(row["gpu_duration_ns"]) / 1000,
                               "args": {k: v for k, v in args.items() if k != "row"}})
    doc = {"commscope_export": {"version": EXPORT_VERSION, "runs": runs, "metadata": metas},
           "displayTimeUnit": "ns", "traceEvents": events}
    out = os.fspath(out_json)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, default=str)
    os.replace(tmp, out)
    return out
