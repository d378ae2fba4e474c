"""Calibration input: one table of measured collective times from traces, nccl-tests and CSV."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pandas as pd

__all__ = ["load_measurements", "MEASUREMENT_COLUMNS"]

MEASUREMENT_COLUMNS = ["collective", "nranks", "nodes", "dtype", "bytes", "time_us", "gpu",
                       "library", "source"]

_ELEM = {"half": 2, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "float": 4,
         "float32": 4, "int32": 4, "double": 8, "float64": 8, "fp8": 1}
_OPS = {"alltoall": "all_to_all", "all_to_all": "all_to_all", "all_reduce": "all_reduce",
        "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
        "broadcast": "broadcast", "reduce": "reduce", "sendrecv": "send", "send": "send",
        "recv": "recv", "gather": "gather", "scatter": "scatter"}


def _from_trace(path: str) -> pd.DataFrame:
    """Median transfer time per (op, group size, bytes) from a commscope trace."""
    from ._load import load_events
    from ._matching import match_collectives

    ev = load_events(path, columns=["run_id", "rank", "seq", "host", "pg_name", "pg_seq",
                                    "pg_size", "op", "bytes", "dtype", "backend", "peer",
                                    "t_start_ns", "t_end_ns", "phase", "step"])
    m = match_collectives(ev)
    m = m[(m["op"] != "barrier") & (m["bytes"] > 0) & (m["ranks_seen"] == m["pg_size"])]
    if m.empty:
        return pd.DataFrame(columns=MEASUREMENT_COLUMNS)
    meta = ev.dropna(subset=["dtype"]).drop_duplicates(["pg_name"]).set_index("pg_name")
    m = m.assign(dtype=m["pg_name"].map(meta["dtype"]), library=m["pg_name"].map(meta["backend"]))
    nodes = int(ev["host"].nunique())
    g = m.groupby(["op", "pg_size", "bytes", "dtype", "library"], dropna=False)
    out = g["transfer_ns"].median().reset_index()
    return pd.DataFrame({
        "collective": out["op"], "nranks": out["pg_size"].astype("int64"), "nodes": nodes,
        "dtype": out["dtype"], "bytes": out["bytes"].astype("int64"),
        "time_us": out["transfer_ns"].astype("float64") / 1e3, "gpu": None,
        "library": out["library"], "source": path})


def _from_table(df: pd.DataFrame, path: str) -> pd.DataFrame:
    if {"op_name", "num_gpus", "message_size", "latency"} <= set(df.columns):
        # AIConfigurator's nccl_perf tables: message_size in elements, latency in ms.
        elem = df["nccl_dtype"].map(_ELEM).fillna(1)
        return pd.DataFrame({
            "collective": df["op_name"].map(_OPS).fillna(df["op_name"]),
            "nranks": df["num_gpus"].astype("int64"), "nodes": 1, "dtype": df["nccl_dtype"],
            "bytes": (df["message_size"] * elem).astype("int64"),
            "time_us": df["latency"].astype("float64") * 1e3,
            "gpu": df.get("device"),
            "library": df.get("kernel_source", pd.Series("NCCL", index=df.index)).str.lower(),
            "source": path})
    if "placement" in df.columns:  # parse_nccl_tests output: out-of-place is the reference
        df = df[df["placement"] == "out_of_place"]
        df = df.assign(library=df.get("library", "nccl"))
    missing = {"collective", "nranks", "bytes", "time_us"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a measurements table (missing columns {sorted(missing)}; "
                         f"expected {MEASUREMENT_COLUMNS})")
    out = df.copy()
    for c in MEASUREMENT_COLUMNS:
        if c not in out:
            out[c] = 1 if c == "nodes" else None
    out["collective"] = out["collective"].map(lambda o: _OPS.get(o, o))
    out["source"] = out["source"].fillna(path) if out["source"].notna().any() else path
    return out[MEASUREMENT_COLUMNS]


def _is_trace(path: str) -> bool:
    """A commscope trace folder: it holds rank_<N> folders (at any depth)."""
    return os.path.isdir(path) and any(d.startswith("rank_") for _, ds, _ in os.walk(path)
                                       for d in ds)


def load_measurements(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> pd.DataFrame:
    """Measured collective times from commscope traces (median `transfer_ns` per op, group size
    and bytes), nccl-tests outputs, measurement tables (`commscope nccl-tests` Parquet, CSV or
    Parquet with these columns) and AIConfigurator `nccl_perf.parquet` files.

    Columns: collective, nranks, nodes, dtype, bytes, time_us, gpu, library, source.
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
    out = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=MEASUREMENT_COLUMNS)
    out["nranks"] = out["nranks"].astype("int64")
    out["nodes"] = out["nodes"].fillna(1).astype("int64")
    out["bytes"] = out["bytes"].astype("int64")
    out["library"] = out["library"].fillna("unknown").astype(str).str.lower()
    return out[out["time_us"] > 0].reset_index(drop=True)
