"""Reading commscope traces: find part files, validate them, read run metadata and events."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..profiler._schema import SCHEMA_VERSION, SCHEMA_VERSION_KEY
from ._sql import DEVICE_COLUMNS

__all__ = ["load_events", "load_metadata", "find_part_files", "TraceFormatError"]


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


def _has_device_times(meta: pq.FileMetaData) -> bool:
    """From the footer's statistics alone: may any row of the file have device times?"""
    names = meta.schema.names
    for c in DEVICE_COLUMNS:
        if c not in names:
            continue
        i = names.index(c)
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            st = rg.column(i).statistics
            if st is None or not st.has_null_count or st.null_count < rg.num_rows:
                return True
    return False


def _read_footer(path: str) -> tuple[pa.Schema, bool]:
    """Read a part file's footer once: its checked schema, and whether it has device times."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
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
    return schema, _has_device_times(meta)


def _metadata_files(files: list[str]) -> list[str]:
    dirs = sorted({os.path.dirname(f) for f in files})
    return [os.path.join(d, "metadata.json") for d in dirs
            if os.path.exists(os.path.join(d, "metadata.json"))]


def _read_metadata(files: list[str]) -> list[dict[str, Any]]:
    out = []
    for m in _metadata_files(files):
        try:
            with open(m) as fh:
                out.append(json.load(fh))
        except (OSError, ValueError) as exc:
            raise TraceFormatError(f"{m}: unreadable run metadata ({exc})") from exc
    return out


def load_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The run metadata of every rank under `path` (one dict per rank folder)."""
    return _read_metadata(find_part_files(path))


def load_events(path: str | os.PathLike, *, columns: list[str] | None = None,
                filters: Any = None) -> pd.DataFrame:
    """Every rank's events of a run (or of all runs under a folder) as one DataFrame.

    Reads only the `columns` asked for and the rows matching `filters` (a pyarrow expression or
    DNF tuples such as ``[("op", "==", "all_reduce")]``, applied to the times as recorded),
    subtracts each rank's clock offset from every time column, and sorts by run, rank and seq.
    Columns a trace of an older schema lacks read as null (`source` as 'hooks'). A corrupt or
    foreign file raises `TraceFormatError` naming it. Same as ``Trace(path).events(...)``.
    """
    from ._trace import Trace

    with Trace(path) as t:
        return t.events(columns=columns, filters=filters)
