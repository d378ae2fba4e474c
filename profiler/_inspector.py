"""NCCL Inspector JSON-lines (NCCL >= 2.28 profiler plugin, format v4.x) -> rows.

One record per completed operation per communicator (`coll_perf` or `p2p_perf`), all
communicators of a process in one file. Records carry the message size, the execution time
(`*_exec_time_us`, GPU kernel time when `*_timing_source` is 'kernel_gpu') and bandwidths, but no
dtype and only communicator-local ranks: the process's global rank is its rank in its largest
communicator (the world communicator in the usual setup), stated in the import notes.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ._nccl_formats import GATHER_LIKE, OP_NAMES

__all__ = ["read_inspector", "parse_inspector_lines"]



def _num(v: Any) -> float | None:
    if v is None or v == "nan":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _record(rec: dict[str, Any]) -> dict[str, Any] | None:
    hdr, md = rec.get("header") or {}, rec.get("metadata") or {}
    perf, kind = (rec["coll_perf"], "coll") if "coll_perf" in rec else \
        (rec.get("p2p_perf"), "p2p")
    if not isinstance(perf, dict):
        return None
    op = OP_NAMES.get(str(perf.get(kind)))
    n = int(hdr.get("n_ranks") or 1)
    msg = _num(perf.get(f"{kind}_msg_size_bytes"))
    exec_us = _num(perf.get(f"{kind}_exec_time_us"))
    source = perf.get(f"{kind}_timing_source")
    ts = (perf.get("event_trace_ts") or {})
    kev = ts.get("kernel_events") or []
    k0 = [e.get("kernel_start_ts") for e in kev if e.get("kernel_start_ts")]
    k1 = [e.get("kernel_stop_ts") for e in kev if e.get("kernel_stop_ts")]
    dump_ns = int(md.get("dump_timestamp_us", 0)) * 1000
    exec_ns = int(round(exec_us * 1000)) if exec_us is not None else None
    # The device time is NCCL's own exec time (what its bandwidths use); it ends at the last
    # kernel-channel stop in verbose output, else at the dump (the record's only timestamp).
    g1 = int(max(k1)) * 1000 if k0 and k1 else dump_ns
    g0 = g1 - (exec_ns or 0)
    c0 = ts.get(f"{kind}_start_ts")
    name = hdr.get("comm_name")
    pg = name if name and name != "unknown" else str(hdr.get("id"))
    # Older records have no timing source; Inspector keeps only kernel-timed records by default
    # (NCCL_INSPECTOR_REQUIRE_KERNEL_TIMING=1).
    on_gpu = source in (None, "kernel_gpu")
    return {"pg_name": pg, "pg_size": n, "pg_seq": perf.get(f"{kind}_sn"), "op": op,
            "api": f"nccl:{perf.get(kind)}", "dtype": None, "count": None,
            "bytes": int(msg * (n if op in GATHER_LIKE else 1)) if msg is not None else None,
            "in_bytes": int(msg) if msg is not None else None,
            "out_bytes": None, "peer": perf.get("p2p_peer") if kind == "p2p" else None,
            "t_start_ns": int(c0) * 1000 if c0 else g0, "t_end_ns": g1, "t_return_ns": g1,
            "gpu_start_ns": g0 if on_gpu else None, "gpu_end_ns": g1 if on_gpu else None,
            "gpu_duration_ns": exec_ns if on_gpu else None, "completion": "return",
            "_local_rank": hdr.get("rank"), "_comm_id": hdr.get("id"),
            "_host": md.get("hostname"), "_pid": md.get("pid")}


def parse_inspector_lines(text_lines: Any, name: str) -> pd.DataFrame:
    """Records of one Inspector file as rows; ValueError naming the file and line if broken."""
    rows = []
    for i, line in enumerate(text_lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}:{i}: not a JSON record ({exc.msg}; truncated?)") from None
        r = _record(rec) if isinstance(rec, dict) else None
        if r is None:
            raise ValueError(f"{name}:{i}: not an NCCL Inspector record (no coll_perf/p2p_perf)")
        rows.append(r)
    return pd.DataFrame(rows)


def read_inspector(members: list) -> list:
    """Inspector files (one per process) -> RankData per process."""
    from ._import import RankData, TraceImportError, text_stream

    out = []
    for m in members:
        try:
            with text_stream(m) as fh:
                df = parse_inspector_lines(fh, m.name)
        except ValueError as exc:
            raise TraceImportError(str(exc)) from None
        if df.empty:
            raise TraceImportError(f"{m.name}: no Inspector records (empty file)")
        big = df.loc[df["pg_size"].idxmax()]
        rank, world = int(big["_local_rank"]), int(big["pg_size"])
        notes = [f"global rank {rank} = this process's rank in its largest communicator "
                 f"({big['pg_name']}, {world} ranks); Inspector records carry no dtype, so "
                 "count and dtype are null and bytes is the message size"]
        comms = df.groupby("pg_name").agg(local_rank=("_local_rank", "first"),
                                          n_ranks=("pg_size", "first"),
                                          comm_id=("_comm_id", "first"),
                                          records=("op", "size"))
        meta = {"host": str(big["_host"]), "import_notes": notes,
                "nccl_inspector": {
                    "communicators": comms.reset_index().to_dict("records")}}
        rows = df.drop(columns=[c for c in df.columns if c.startswith("_")])
        out.append(RankData(rank, world, rows, meta, "nccl_inspector", [m.name]))
    return out
