"""Calibration input: one table of measured collective times from traces, nccl-tests and tables.

Every row says where it came from (`source`: 'sweep' | 'trace' | 'nccl-tests' | 'table' |
'aiconfigurator'; a table's own `source` column is kept), which run (`run`: the trace's run_id,
else the file), which library/backend, and what clock timed it (`time_basis`: 'device' for CUDA
events or GPU kernels, 'host' for host clocks), so callers can fit on some runs and predict
another, and a cost model can keep its curves apart and say where each came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["load_measurements", "MEASUREMENT_COLUMNS", "trace_measurements"]

MEASUREMENT_COLUMNS = ["collective", "nranks", "nodes", "dtype", "bytes", "time_us", "gpu",
                       "library", "source", "time_basis", "run", "phase", "calls", "path"]

_ELEM = {"half": 2, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "float": 4,
         "float32": 4, "int32": 4, "double": 8, "float64": 8, "fp8": 1}
_OPS = {"alltoall": "all_to_all", "all_to_all": "all_to_all", "all_reduce": "all_reduce",
        "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
        "broadcast": "broadcast", "reduce": "reduce", "sendrecv": "send", "send": "send",
        "recv": "recv", "gather": "gather", "scatter": "scatter"}
_TRACE_COLUMNS = ["run_id", "rank", "host", "pg_name", "pg_seq", "pg_size", "op", "bytes",
                  "dtype", "backend", "peer", "t_start_ns", "t_end_ns", "gpu_start_ns",
                  "gpu_end_ns", "gpu_duration_ns", "phase", "step"]
_P2P = ("send", "recv")


def _instance_keys(ev: pd.DataFrame) -> pd.DataFrame:
    """Per event: the key of its logical instance, (run_id, pg_name, src, dst, pg_seq) with
    src = dst = -1 for collectives (a send/recv pair is keyed by its two ends, as in
    match_collectives)."""
    p2p = ev["op"].isin(_P2P)
    send = ev["op"] == "send"
    src = np.where(send, ev["rank"], ev["peer"].fillna(-1))
    dst = np.where(send, ev["peer"].fillna(-1), ev["rank"])
    return pd.DataFrame({"run_id": ev["run_id"], "pg_name": ev["pg_name"],
                         "src": np.where(p2p, src, -1).astype("int64"),
                         "dst": np.where(p2p, dst, -1).astype("int64"),
                         "pg_seq": ev["pg_seq"].astype("int64")}, index=ev.index)


def trace_measurements(events: pd.DataFrame, *, source: str = "trace",
                       path: str | None = None) -> pd.DataFrame:
    """Measurements from trace events (as `load_events` returns them): one row per (run,
    phase, op, group size, bytes, dtype, library, time basis) with the median per-call
    TRANSFER time over its instances (waiting for late ranks excluded) and `calls`, the number
    of instances.

    Time per instance: `match_collectives`' transfer_ns (on the device when every member has
    gpu_start_ns/gpu_end_ns, its `time_basis`); else, when every member has gpu_duration_ns
    only (e.g. `commscope bench --backend nccl`: block-timed CUDA events), the smallest of
    them (the last rank to arrive waited least); else the host transfer time."""
    from ._matching import match_collectives

    ev = events[(events["op"] != "barrier") & (events["bytes"] > 0)]
    if ev.empty:
        return pd.DataFrame(columns=MEASUREMENT_COLUMNS)
    m = match_collectives(ev)
    m = m[(m["ranks_seen"] == m["pg_size"]) & (m["bytes"] > 0)]
    if m.empty:
        return pd.DataFrame(columns=MEASUREMENT_COLUMNS)
    keys = ["run_id", "pg_name", "src", "dst", "pg_seq"]
    k = _instance_keys(ev)
    dur = ev["gpu_duration_ns"] if "gpu_duration_ns" in ev else pd.Series(pd.NA, index=ev.index)
    per = k.assign(gdur=pd.to_numeric(dur, errors="coerce").astype("float64"),
                   has=dur.notna(), dtype=ev["dtype"], backend=ev["backend"],
                   host=ev.get("host"))
    inst = per.groupby(keys, dropna=False).agg(
        gdur=("gdur", "min"), all_dev=("has", "all"), dtype=("dtype", "first"),
        library=("backend", "first"), nodes=("host", "nunique")).reset_index()
    m = m.assign(src=m["src"].fillna(-1).astype("int64"), dst=m["dst"].fillna(-1).astype("int64"),
                 pg_seq=m["pg_seq"].astype("int64"))
    m = m.merge(inst, on=keys, how="left")
    basis = m["time_basis"] if "time_basis" in m else pd.Series("host", index=m.index)
    use_dur = (basis != "device") & m["all_dev"].fillna(False).astype(bool)
    m["time_basis"] = np.where(use_dur, "device", basis.fillna("host"))
    m["time_ns"] = np.where(use_dur, m["gdur"],
                            pd.to_numeric(m["transfer_ns"], errors="coerce").astype("float64"))
    m = m[m["time_ns"] > 0]
    group = ["run_id", "phase", "op", "pg_size", "bytes", "dtype", "library", "time_basis",
             "nodes"]
    out = m.groupby(group, dropna=False).agg(time_ns=("time_ns", "median"),
                                             calls=("time_ns", "size")).reset_index()
    return pd.DataFrame({
        "collective": out["op"], "nranks": out["pg_size"].astype("int64"),
        "nodes": out["nodes"].fillna(1).clip(lower=1).astype("int64"), "dtype": out["dtype"],
        "bytes": out["bytes"].astype("int64"), "time_us": out["time_ns"] / 1e3, "gpu": None,
        "library": out["library"], "source": source, "time_basis": out["time_basis"],
        "run": out["run_id"], "phase": out["phase"], "calls": out["calls"].astype("int64"),
        "path": path})


def _from_trace(path: str) -> pd.DataFrame:
    from ._trace import Trace

    with Trace(path) as t:
        ev = t.events(columns=_TRACE_COLUMNS)
        metadata = t.metadata
    # `commscope bench` sweeps (tagged "bench"): only their timed iterations (phase "bench")
    # count, not the warm-up. A folder may hold sweeps and other runs side by side.
    sweeps = {md.get("run_id") for md in metadata if (md.get("tags") or {}).get("bench")}
    is_sweep = ev["run_id"].isin(sweeps)
    parts = [trace_measurements(ev[is_sweep & (ev["phase"] == "bench")], source="sweep",
                                path=path),
             trace_measurements(ev[~is_sweep], source="trace", path=path)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else \
        pd.DataFrame(columns=MEASUREMENT_COLUMNS)


def _from_table(df: pd.DataFrame, path: str) -> pd.DataFrame:
    if {"op_name", "num_gpus", "message_size", "latency"} <= set(df.columns):
        # AIConfigurator's nccl_perf tables: nccl-tests out-of-place times, message_size in
        # elements, latency in ms.
        elem = df["nccl_dtype"].map(_ELEM).fillna(1)
        return pd.DataFrame({
            "collective": df["op_name"].map(_OPS).fillna(df["op_name"]),
            "nranks": df["num_gpus"].astype("int64"), "nodes": 1, "dtype": df["nccl_dtype"],
            "bytes": (df["message_size"] * elem).astype("int64"),
            "time_us": df["latency"].astype("float64") * 1e3,
            "gpu": df.get("device"),
            "library": df.get("kernel_source", pd.Series("NCCL", index=df.index)).str.lower(),
            "source": "aiconfigurator", "time_basis": "device", "run": path, "phase": None,
            "calls": 1, "path": path})
    kind = "table"
    if "placement" in df.columns:  # parse_nccl_tests output: out-of-place is the reference
        df = df[df["placement"] == "out_of_place"]
        df = df.assign(library=df.get("library", "nccl"), source="nccl-tests",
                       time_basis="device", run=path)
        kind = "nccl-tests"
    missing = {"collective", "nranks", "bytes", "time_us"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a measurements table (missing columns {sorted(missing)}; "
                         f"expected {MEASUREMENT_COLUMNS})")
    out = df.copy()
    for c in MEASUREMENT_COLUMNS:
        if c not in out:
            out[c] = 1 if c in ("nodes", "calls") else None
    out["collective"] = out["collective"].map(lambda o: _OPS.get(o, o))
    for c, default in (("source", kind), ("run", path), ("path", path)):
        out[c] = out[c].astype(object).where(out[c].notna(), default)
    return out[MEASUREMENT_COLUMNS]


def _is_trace(path: str) -> bool:
    """A commscope trace folder: it holds rank_<N> folders (at any depth)."""
    return os.path.isdir(path) and any(d.startswith("rank_") for _, ds, _ in os.walk(path)
                                       for d in ds)


def load_measurements(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> pd.DataFrame:
    """Measured collective times from commscope traces (`trace_measurements`: per-call
    transfer time, device time where the rows have it), nccl-tests outputs, measurement tables
    (`commscope nccl-tests` Parquet, CSV or Parquet with these columns) and AIConfigurator
    `nccl_perf.parquet` files.

    Columns: collective, nranks, nodes, dtype, bytes, time_us, gpu, library (lower case),
    source ('sweep' | 'trace' | 'nccl-tests' | 'table' | 'aiconfigurator'), time_basis
    ('device' | 'host'), run (run_id for traces, else the file), phase (traces), calls, path.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = []
    for p in map(os.fspath, paths):
        if not os.path.exists(p):
            raise FileNotFoundError(f"measurements not found: {p}")
        if _is_trace(p):
            frames.append(_from_trace(p))
        elif p.endswith(".csv"):
            frames.append(_from_table(pd.read_csv(p), p))
        elif p.endswith(".parquet"):
            frames.append(_from_table(pd.read_parquet(p), p))
        else:
            from ..profiler import parse_nccl_tests

            df = parse_nccl_tests(p)
            if df.empty:
                raise ValueError(f"{p}: no nccl-tests results found")
            frames.append(_from_table(df, p))
    frames = [f for f in frames if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=MEASUREMENT_COLUMNS)
    out["nranks"] = out["nranks"].astype("int64")
    out["nodes"] = out["nodes"].fillna(1).astype("int64")
    out["bytes"] = out["bytes"].astype("int64")
    out["calls"] = out["calls"].fillna(1).astype("int64")
    out["library"] = out["library"].fillna("unknown").astype(str).str.lower()
    return out[out["time_us"] > 0].reset_index(drop=True)
