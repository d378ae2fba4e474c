"""PyTorch Flight Recorder dumps (pickle or JSON, format 2.x) -> one row per entry.

The dump holds the last N entries of the ring (often only in-flight ones) plus, per process
group, the last enqueued/started/completed collective (`pg_status`). The rows say what each rank
issued; `pg_status` (kept in metadata.json as `flight_recorder.pg_status`, keyed by group name)
says how far each rank got, which is what `analysis.attribute_hang` needs.
"""

from __future__ import annotations

import json
import pickle
import re
from typing import Any

import numpy as np
import pandas as pd

from ._kineto import C10_DTYPES, cpu_op_name_to_op
from ._nccl_formats import GATHER_LIKE

__all__ = ["read_flight_recorder", "parse_dump", "PG_DIMS"]

#: Megatron-Core / c10d group descriptions -> commscope pg_dim.
PG_DIMS = [("default_pg", "world"), ("EXPERT_TENSOR", "etp"), ("EXPERT_MODEL", "ep"),
           ("EXPERT_DATA", "edp"), ("TENSOR_AND_DATA", "tp_dp"), ("TENSOR_AND_CONTEXT", "tp_cp"),
           ("TENSOR_MODEL", "tp"), ("PIPELINE", "pp"), ("EMBEDDING", "pp"),
           ("DATA_PARALLEL", "dp"), ("CONTEXT", "cp")]
_P2P_RE = re.compile(r"(send|recv) (\d+)\s*(?:->|<-)\s*(\d+)")


class _SafeUnpickler(pickle.Unpickler):
    """Dumps are plain containers: refuse any class, so a hostile file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dump")


def _ranks(text: Any) -> list[int]:
    if isinstance(text, list):
        return [int(x) for x in text]
    return [int(x) for x in str(text).strip("[] ").split(",") if x.strip()]


def _dim(desc: str | None) -> str | None:
    d = desc or ""
    return next((v for k, v in PG_DIMS if k in d), None)


def _numel(shapes: Any) -> list[int]:
    return [int(np.prod(s, dtype=np.int64)) if s else 1 for s in (shapes or [])]


def parse_dump(raw: bytes, name: str) -> dict[str, Any]:
    """Decode a dump (pickle or JSON) into a dict; ValueError naming the file otherwise."""
    try:
        if raw[:1] == b"\x80":
            import io

            d = _SafeUnpickler(io.BytesIO(raw)).load()
        else:
            d = json.loads(raw.decode("utf-8", errors="replace"))
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{name}: not a readable Flight Recorder dump ({exc})") from None
    if not isinstance(d, dict) or "version" not in d or "pg_config" not in d:
        raise ValueError(f"{name}: not a Flight Recorder dump (no 'version'/'pg_config')")
    if not str(d["version"]).startswith("2."):
        raise ValueError(f"{name}: Flight Recorder format {d['version']} is not supported (2.x)")
    return d


def _own_rank(cfg: dict[str, Any]) -> int | None:
    """This process's global rank: the one rank every group it belongs to contains."""
    common: set[int] | None = None
    for g in cfg.values():
        rs = set(_ranks(g.get("ranks", [])))
        if rs:
            common = rs if common is None else common & rs
    return next(iter(common)) if common and len(common) == 1 else None


def _rows(d: dict[str, Any], cfg: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for e in d.get("entries") or []:
        prof = str(e.get("profiling_name", ""))
        short = prof.split(":", 1)[-1]
        op = cpu_op_name_to_op(short)
        pg, desc = (list(e.get("process_group") or ["", ""]) + ["", ""])[:2]
        g = cfg.get(str(pg), {})
        members = _ranks(g.get("ranks", [])) if g else None
        dts = e.get("input_dtypes") or e.get("output_dtypes") or []
        dt = C10_DTYPES.get(str(dts[0])) if dts else None
        n_in, n_out = _numel(e.get("input_sizes")), _numel(e.get("output_sizes"))
        count = (sum(n_out) if op in ("reduce_scatter", "scatter", "recv") else sum(n_in)) \
            if (n_in or n_out) else None
        size = len(members) if members else None
        peer = None
        m = _P2P_RE.search(short)
        if m and members:
            local = int(m.group(3))
            peer = members[local] if local < len(members) else None
        p2p = bool(e.get("is_p2p"))
        state = e.get("state")
        t0 = e.get("time_created_ns")
        t_done = e.get("time_discovered_completed_ns") or None
        dur = e.get("duration_ms")
        rows.append({
            "pg_name": str(pg), "pg_dim": _dim(desc or g.get("desc")), "pg_size": size,
            "pg_ranks": members, "pg_seq": e.get("p2p_seq_id") if p2p else
            e.get("collective_seq_id"), "op": op, "api": prof,
            "dtype": dt[0] if dt else None, "count": count,
            "bytes": count * dt[1] * (size if op in GATHER_LIKE and size else 1)
            if dt and count is not None else None,
            "in_bytes": sum(n_in) * dt[1] if dt else None,
            "out_bytes": sum(n_out) * dt[1] if dt else None, "peer": peer,
            "async_op": True, "t_start_ns": t0, "t_end_ns": t_done or t0, "t_return_ns": t0,
            "completion": "is_completed" if state == "completed" else "unobserved",
            "gpu_duration_ns": int(dur * 1e6) if isinstance(dur, (int, float)) else None,
            "tid": int(e["thread_id"]) if str(e.get("thread_id", "")).isdigit() else None,
            "fr_state": state, "fr_record_id": e.get("record_id"), "fr_pg_id": e.get("pg_id"),
        })
    return pd.DataFrame(rows)


def _status_by_name(d: dict[str, Any]) -> dict[str, dict[str, int]]:
    """pg_status is keyed by the rank-local pg_id; name it through the entries' (pg_id, pg)."""
    names = {}
    for e in d.get("entries") or []:
        names[str(e.get("pg_id"))] = str((e.get("process_group") or [""])[0])
    out = {}
    for pid, st in (d.get("pg_status") or {}).items():
        key = names.get(str(pid), f"pg_id:{pid}")
        out[key] = {k: int(v) for k, v in st.items()}
    return out


def read_flight_recorder(members: list) -> list:
    """Flight Recorder dumps -> RankData per rank."""
    from ._import import RankData, TraceImportError

    out = []
    for m in members:
        with m.open() as fh:
            raw = fh.read()
        try:
            d = parse_dump(raw, m.name)
        except ValueError as exc:
            raise TraceImportError(str(exc)) from None
        cfg = {str(k): v for k, v in (d.get("pg_config") or {}).items()}
        rank = _own_rank(cfg)
        notes = []
        if rank is None:
            digits = re.findall(r"(\d+)$", m.name)
            if not digits:
                raise TraceImportError(f"{m.name}: the dump's groups do not identify its rank "
                                       "and the file name ends in no rank number")
            rank = int(digits[0])
            notes.append("rank taken from the file name: the dump's groups do not identify it")
        world = len(_ranks(cfg["0"]["ranks"])) if "0" in cfg else None
        rows = _rows(d, cfg)
        if rows.empty:
            notes.append("the dump holds no entries: this rank recorded no collective in "
                         "flight (it never reached them, or its ring was empty)")
        states = rows["fr_state"].value_counts().to_dict() if len(rows) else {}
        meta = {"versions": {"nccl": d.get("nccl_version") or d.get("comm_lib_version")},
                "flight_recorder": {
                    "version": str(d["version"]), "entries": len(rows), "states": states,
                    "pg_status": _status_by_name(d),
                    "pg_config": {k: {"desc": v.get("desc"), "ranks": _ranks(v.get("ranks"))}
                                  for k, v in cfg.items()}},
                "import_notes": notes}
        keep = rows.drop(columns=[c for c in rows.columns if c.startswith("fr_")]) \
            if len(rows) else rows
        out.append(RankData(rank, world, keep, meta, "flight_recorder", [m.name]))
    return out
