"""`Trace`: a trace opened once for repeated questions, and the same questions on a DataFrame.

``Trace(path)`` finds the part files, checks each one's schema (reading each footer once),
reads the run metadata and clock offsets and opens one DuckDB connection whose view `events`
scans the Parquet files out of core. Every analysis is a method; the free functions
(`match_collectives(events)`, ...) are thin wrappers that open a `Trace` for a path, or a
`FrameEvents` for a DataFrame, and call the same method: one implementation for both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ._load import TraceFormatError, _read_footer, _read_metadata, find_part_files
from ._matching import _match, _stragglers, _waits
from ._mismatch import _mismatches
from ._overlap import _overlap
from ._sql import (
    COLUMN_TYPES,
    any_device_times,
    connect,
    create_events_view,
    create_trace_view,
    run_sql,
    select_events,
)
from ._summary import _summary

__all__ = ["Trace", "FrameEvents", "opened"]


class _Events:
    """A DuckDB connection with view `events`; every analysis as a method."""

    con: Any
    _device: bool | None = None

    def __init__(self) -> None:
        self._tables: set[str] = set()

    def _find_device(self) -> bool:
        raise NotImplementedError

    @property
    def device(self) -> bool:
        """Whether any row may have device times (False: queries use host times directly).
        Found out, and view `events` created, on the first analysis (not for `events()`)."""
        if self._device is None:
            self._device = self._find_device()
            create_events_view(self.con, self._device)
        return self._device

    match = _match
    waits = _waits
    stragglers = _stragglers
    overlap = _overlap
    mismatches = _mismatches
    summary = _summary

    def sql(self, query: str) -> pd.DataFrame:
        """Run any DuckDB query on view `events` (schema columns, clock-aligned, plus has_device,
        t0_ns, t1_ns, dur_ns, time_basis) and return a DataFrame."""
        _ = self.device
        return run_sql(self.con, query)

    def temp_table(self, name: str, query: str) -> str:
        """Create temp table `name` from `query` once per connection (shared intermediate
        results, e.g. the collective instances used by match, waits and stragglers)."""
        _ = self.device
        if name not in self._tables:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {query}")
            self._tables.add(name)
        return name

    def close(self) -> None:
        """Close the DuckDB connection."""
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> _Events:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameEvents(_Events):
    """The analyses on an in-memory DataFrame or Arrow table (DuckDB scans it in place).

    The frame's times are taken as already clock-aligned (as `load_events` returns them);
    columns it lacks read as NULL."""

    def __init__(self, frame: pd.DataFrame | pa.Table, *, extra: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.frame = frame
        self.con = connect(progress=False)
        self.con.register("frame_events", frame)
        names = frame.column_names if isinstance(frame, pa.Table) else [str(c) for c in frame]
        self._names = names
        create_trace_view(self.con, "frame_events", names, offsets=False,
                          extra=[c for c in extra if c in names])

    def _find_device(self) -> bool:
        return any_device_times(self.con, "frame_events", self._names)


class Trace(_Events):
    """A commscope trace (a run folder, a folder of runs, a rank folder or a part file),
    opened once: schema checks, metadata, clock offsets and one DuckDB connection.

    >>> t = Trace("traces/sample_tp2")
    >>> t.summary(); t.stragglers(); t.match(); t.waits(); t.overlap(); t.mismatches()
    >>> t.events(columns=["rank", "op", "t_start_ns"], filters=[("op", "==", "all_reduce")])

    Traces written with schema 1.0 load and analyse too (the columns they lack read as NULL).
    """

    def __init__(self, path: str | os.PathLike, *, progress: bool | None = None) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.files = find_part_files(path)
        footers = [_read_footer(f) for f in self.files]
        schemas = [s for s, _ in footers]
        try:
            self.schema = pa.unify_schemas([s.remove_metadata() for s in schemas])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TraceFormatError(f"{self.path}: part files with conflicting column types "
                                   f"({exc})") from exc
        self.metadata = _read_metadata(self.files)
        self._dataset = ds.dataset(self.files, format="parquet", schema=self.schema)
        self.offsets = pd.DataFrame(
            [(m.get("run_id"), int(m.get("rank", 0)), int(m.get("clock_offset_ns") or 0))
             for m in self.metadata], columns=["run_id", "rank", "clock_offset_ns"]
        ).drop_duplicates(["run_id", "rank"])
        # Without any non-zero offset the join is skipped (every shift would be 0).
        self._shift = bool((self.offsets["clock_offset_ns"] != 0).any())
        self.con = connect(progress)
        if self._shift:
            self.con.register("clock_offsets_df", self.offsets)
            self.con.execute("CREATE OR REPLACE TEMP TABLE clock_offsets AS SELECT "
                             "CAST(run_id AS VARCHAR) AS run_id, CAST(rank AS INTEGER) AS rank, "
                             "CAST(clock_offset_ns AS BIGINT) AS clock_offset_ns "
                             "FROM clock_offsets_df")
        # Names and types decide; nullability may differ (recorded parts store the columns the
        # writer always fills as required, imported parts do not).
        shapes = {tuple((f.name, f.type) for f in s) for s in schemas}
        same = len(shapes) == 1
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in self.files)
        self._source = (f"read_parquet([{files}], hive_partitioning = false"
                        f"{'' if same else ', union_by_name = true'})")
        self._maybe_device = any(dev for _, dev in footers)
        create_trace_view(self.con, self._source, self.schema.names, offsets=self._shift)

    def _find_device(self) -> bool:
        # Footer statistics rule device times out for free; otherwise one scan of the (mostly
        # null, so cheap) device columns decides.
        return self._maybe_device and any_device_times(self.con, self._source,
                                                       self.schema.names)

    def __repr__(self) -> str:
        return f"Trace({self.path!r}, {len(self.files)} files)"

    def events(self, columns: list[str] | None = None, filters: Any = None) -> pd.DataFrame:
        """The events as one DataFrame (`load_events`): only `columns`, only rows matching
        `filters` (pyarrow expression or DNF tuples, on the times as recorded), every time
        column clock-aligned, sorted by run, rank and seq."""
        extra = [n for n in self.schema.names if n not in COLUMN_TYPES]
        known = list(COLUMN_TYPES) + extra
        want = list(columns) if columns is not None else known
        unknown = [c for c in want if c not in known]
        if unknown:
            raise KeyError(f"unknown trace columns {unknown}; see docs/schema.md")
        sort = [c for c in ("run_id", "rank", "seq") if c in known]
        out_cols = list(dict.fromkeys(want + sort))
        read = [c for c in out_cols if c in self.schema.names]
        expr = pq.filters_to_expression(filters) if isinstance(filters, list) else filters
        try:
            table = self._dataset.to_table(columns=read, filter=expr)
        except (pa.ArrowInvalid, OSError) as exc:
            raise TraceFormatError(f"cannot read trace under {self.path}: {exc}") from exc
        self.con.register("loaded_events", table)
        try:
            sql = select_events("loaded_events", read, offsets=self._shift,
                                columns=[c for c in out_cols if c in COLUMN_TYPES],
                                extra=[c for c in out_cols if c not in COLUMN_TYPES])
            order = ", ".join(f'"{c}"' for c in sort)
            df = run_sql(self.con, f"SELECT * FROM ({sql}) {'ORDER BY ' + order if order else ''}")
        finally:
            self.con.unregister("loaded_events")
        return df[want]


@contextmanager
def opened(events: Any, *, extra: tuple[str, ...] = ()) -> Iterator[_Events]:
    """`events` as an `_Events`: a `Trace` or `FrameEvents` given as is, a path opened as a
    `Trace`, a DataFrame or Arrow table wrapped in `FrameEvents` (closed again on exit)."""
    if isinstance(events, _Events):
        yield events
        return
    src = Trace(events) if isinstance(events, (str, os.PathLike)) else \
        FrameEvents(events, extra=extra)
    try:
        yield src
    finally:
        src.close()
