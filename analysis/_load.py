"""Reading commscope traces: find part files, validate them, apply clock offsets."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..profiler._schema import SCHEMA_VERSION, SCHEMA_VERSION_KEY

__all__ = ["load_events", "load_metadata", "find_part_files", "TraceFormatError"]

_TIME_COLUMNS = ("t_start_ns", "t_end_ns", "t_return_ns", "t_wait_ns")
_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(),
                 pa.bool_(): pd.BooleanDtype()}


class TraceFormatError(ValueError):
    """A path is not a readable commscope trace; the message names the file and the reason."""


def find_part_files(path: str | os.PathLike) -> list[str]:
    """Every Parquet part file of the trace(s) under `path` (a file, rank, run or runs folder)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"trace path does not exist: {p}")
    if os.path.isfile(p):
        return [p]
    files = sorted(f for f in glob.glob(os.path.join(p, "**", "*.parquet"), recursive=True)
                   if not os.path.basename(f).startswith("."))
    if not files:
        raise TraceFormatError(f"no commscope trace files (*.parquet) under {p}")
    return files


def _check_file(path: str) -> pa.Schema:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise TraceFormatError(f"{path}: unreadable Parquet file ({exc})") from exc
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is None:
        raise TraceFormatError(
            f"{path}: not a commscope trace (no '{SCHEMA_VERSION_KEY.decode()}' in its metadata)")
    major = version.decode().split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise TraceFormatError(
            f"{path}: trace schema {version.decode()} is not readable by this commscope "
            f"(schema {SCHEMA_VERSION})")
    return schema


def _metadata_files(files: list[str]) -> list[str]:
    dirs = sorted({os.path.dirname(f) for f in files})
    return [os.path.join(d, "metadata.json") for d in dirs
            if os.path.exists(os.path.join(d, "metadata.json"))]


def load_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The run metadata of every rank under `path` (one dict per rank folder)."""
    out = []
    for m in _metadata_files(find_part_files(path)):
        try:
            with open(m) as fh:
                out.append(json.load(fh))
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"{m}: unreadable run metadata ({exc})") from exc
    return out


def load_events(path: str | os.PathLike, *, columns: list[str] | None = None,
                filters: Any = None) -> pd.DataFrame:
    """Every rank's events of a run (or of all runs under a folder) as one DataFrame.

    Reads only the `columns` asked for and the rows matching `filters` (a pyarrow expression or
    DNF tuples such as ``[("op", "==", "all_reduce")]``), subtracts each rank's clock offset from
    the time columns, and sorts by run, rank and seq. A corrupt or foreign file raises
    `TraceFormatError` naming it.
    """
    files = find_part_files(path)
    schema = None
    for f in files:
        s = _check_file(f)
        schema = s if schema is None else schema
    offsets = {(m["run_id"], m["rank"]): int(m.get("clock_offset_ns") or 0)
               for m in load_metadata(path)}
    want = list(columns) if columns is not None else None
    read_cols = want
    if want is not None:
        # Offsets and sorting need these; they are dropped again below if not asked for.
        read_cols = list(dict.fromkeys(want + [c for c in ("run_id", "rank", "seq")
                                               if c in schema.names]))
        unknown = [c for c in read_cols if c not in schema.names]
        if unknown:
            raise KeyError(f"unknown trace columns {unknown}; see docs/schema.md")
    expr = pq.filters_to_expression(filters) if isinstance(filters, list) else filters
    try:
        dataset = ds.dataset(files, format="parquet", schema=schema)
        table = dataset.to_table(columns=read_cols, filter=expr)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceFormatError(f"cannot read trace under {os.fspath(path)}: {exc}") from exc
    df = table.to_pandas(types_mapper=_PANDAS_TYPES.get)
    if offsets and "run_id" in df and "rank" in df:
        shift = pd.Series([offsets.get(k, 0) for k in zip(df["run_id"], df["rank"])],
                          index=df.index, dtype="Int64")
        if (shift != 0).any():
            for c in _TIME_COLUMNS:
                if c in df:
                    df[c] = df[c] - shift
    sort = [c for c in ("run_id", "rank", "seq") if c in df]
    if sort:
        df = df.sort_values(sort, kind="stable").reset_index(drop=True)
    if want is not None:
        df = df[want]
    return df
