"""The one SQL layer every analysis runs on, for a DataFrame and a trace path alike.

Each analysis is one DuckDB query over a view named `events`. That view is built here, in one
place, from either a pandas DataFrame / Arrow table (scanned in place, no copy) or the Parquet
files of a trace (scanned out of core). Building it:

* selects every schema column, typed as `profiler/_schema.py` says; a column the source lacks
  (schema 1.0 traces have no gpu_start_ns, gpu_end_ns, gpu_hidden_ns, source, cuda_graph; a
  hand-built frame may have fewer) reads as NULL, and `source` as 'hooks' (the only source
  before schema 1.1);
* subtracts each rank's clock offset from every time column (`TIME_COLUMNS`) — the only place
  clock offsets are applied, for `load_events` and for analyses on a path;
* adds the time basis of each row (`basis_columns`): device times where the row has them,
  host times otherwise, and which one it used.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable

import duckdb
import pandas as pd
import pyarrow as pa

from ..profiler._schema import COLUMNS
from ._bandwidth import RING_OPS, UNIT_OPS

__all__ = ["connect", "select_events", "create_trace_view", "create_events_view",
           "any_device_times", "to_pandas", "TIME_COLUMNS",
           "COLUMN_TYPES", "BUS_FACTOR_SQL", "run_sql"]

#: Every time column on a rank's wall clock (shifted by that rank's clock offset).
TIME_COLUMNS = ("t_start_ns", "t_end_ns", "t_return_ns", "t_wait_ns", "gpu_start_ns",
                "gpu_end_ns")

_DUCK_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
               pa.bool_(): "BOOLEAN", pa.list_(pa.int32()): "INTEGER[]"}
#: DuckDB type of each schema column.
COLUMN_TYPES = {c.name: _DUCK_TYPES[c.type] for c in COLUMNS}
# What a column reads as when the source lacks it (NULL unless listed).
_MISSING = {"source": "'hooks'"}
_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(),
                 pa.bool_(): pd.BooleanDtype()}


def _sql_list(ops: Iterable[str]) -> str:
    return ", ".join(f"'{o}'" for o in ops)


#: The nccl-tests bus-bandwidth factor in SQL, built from `_bandwidth`'s op tables (the same
#: definitions as `_bandwidth.bus_factor`).
BUS_FACTOR_SQL = f"""(CASE
  WHEN op = 'all_reduce' THEN 2.0 * (pg_size - 1) / pg_size
  WHEN op IN ({_sql_list(RING_OPS)}) THEN 1.0 * (pg_size - 1) / pg_size
  WHEN op IN ({_sql_list(UNIT_OPS)}) THEN 1.0
  ELSE NULL END)"""


def _memory_limit_mb() -> int:
    env = os.environ.get("COMMSCOPE_DUCKDB_MEMORY_MB")
    if env:
        return int(env)
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = 8 << 30
    # A quarter of RAM, at most 4 GiB: past that DuckDB spills to disk, which keeps a 1e8-row
    # analysis well under 8 GiB of RSS on a 24 GiB machine at little cost in time.
    return max(256, min(mem // 4, 4 << 30) >> 20)


def connect(progress: bool | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection sized for this machine, spilling to a temporary folder.

    The memory limit is a quarter of RAM, at most 4 GiB (`COMMSCOPE_DUCKDB_MEMORY_MB`
    overrides it); a progress bar shows on long queries when stderr is a terminal."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{_memory_limit_mb()}MB'")
    con.execute(f"SET temp_directory='{tempfile.gettempdir()}/commscope-duckdb'")
    # Every query that returns rows orders them itself; unordered scans use less memory.
    con.execute("SET preserve_insertion_order=false")
    con.execute("SET enable_object_cache=true")
    show = sys.stderr.isatty() if progress is None else progress
    con.execute(f"SET enable_progress_bar={'true' if show else 'false'}")
    return con


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def select_events(source: str, present: Iterable[str], *, offsets: bool,
                  columns: Iterable[str] | None = None, extra: Iterable[str] = ()) -> str:
    """SQL selecting trace columns from relation `source` (which has the columns `present`).

    `columns` (default: every schema column) come out typed as the schema says; one missing
    from `source` reads as NULL ('hooks' for `source`). With `offsets`, every time column is
    shifted by the rank's offset from table `clock_offsets(run_id, rank, clock_offset_ns)`:
    the single place where clock alignment happens. `extra` columns (not in the schema, e.g.
    from a newer minor schema version) are passed through unchanged.
    """
    have = set(present)
    cols = list(columns) if columns is not None else list(COLUMN_TYPES)
    items = []
    for c in cols:
        if c not in COLUMN_TYPES:
            items.append(f"e.{_quote(c)}")
            continue
        typ = COLUMN_TYPES[c]
        val = f"CAST(e.{_quote(c)} AS {typ})" if c in have else \
            f"CAST({_MISSING.get(c, 'NULL')} AS {typ})"
        if c == "source" and c in have:
            val = f"coalesce({val}, 'hooks')"
        if offsets and c in TIME_COLUMNS and c in have:
            val = f"{val} - coalesce(o.clock_offset_ns, 0)"
        items.append(f"{val} AS {_quote(c)}")
    items += [f"e.{_quote(c)}" for c in extra if c not in cols]
    join = " LEFT JOIN clock_offsets o ON e.run_id = o.run_id AND e.rank = o.rank" \
        if offsets else ""
    return f"SELECT {', '.join(items)} FROM {source} e{join}"


def basis_columns(device: bool = True) -> str:
    """Per-row time basis, the one definition every analysis uses.

    has_device: the row has device start and end; t0_ns / t1_ns: device start/end where it
    has them, else host start/end; dur_ns: device duration (gpu_end - gpu_start, else
    gpu_duration_ns) where known, else host duration; time_basis: 'device' or 'host' for dur_ns.
    With `device` False (no row of the source has device times) the host columns are used
    directly, so queries skip the device columns altogether.
    """
    if not device:
        return """FALSE AS has_device, t_start_ns AS t0_ns, t_end_ns AS t1_ns,
      t_end_ns - t_start_ns AS dur_ns, FALSE AS dev_duration, 'host' AS time_basis"""
    dev = "(gpu_start_ns IS NOT NULL AND gpu_end_ns IS NOT NULL)"
    return f"""{dev} AS has_device,
      CASE WHEN {dev} THEN gpu_start_ns ELSE t_start_ns END AS t0_ns,
      CASE WHEN {dev} THEN gpu_end_ns ELSE t_end_ns END AS t1_ns,
      CASE WHEN {dev} THEN gpu_end_ns - gpu_start_ns
           WHEN gpu_duration_ns IS NOT NULL THEN gpu_duration_ns
           ELSE t_end_ns - t_start_ns END AS dur_ns,
      ({dev} OR gpu_duration_ns IS NOT NULL) AS dev_duration,
      CASE WHEN {dev} OR gpu_duration_ns IS NOT NULL THEN 'device' ELSE 'host' END
        AS time_basis"""


#: Columns whose non-null values put a row on the device time basis.
DEVICE_COLUMNS = ("gpu_start_ns", "gpu_end_ns", "gpu_duration_ns")


def any_device_times(con: duckdb.DuckDBPyConnection, source: str,
                     present: Iterable[str]) -> bool:
    """Whether any row of `source` has a device time (one scan of those, mostly null, columns)."""
    cols = [c for c in DEVICE_COLUMNS if c in set(present)]
    if not cols:
        return False
    cond = " OR ".join(f"{_quote(c)} IS NOT NULL" for c in cols)
    return bool(con.sql(f"SELECT count(*) FROM {source} WHERE {cond}").fetchall()[0][0])


def create_trace_view(con: duckdb.DuckDBPyConnection, source: str, present: Iterable[str],
                      *, offsets: bool, extra: Iterable[str] = ()) -> None:
    """Create view `trace_events` on `source`: every schema column, typed, clock-aligned."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW trace_events AS "
                f"{select_events(source, present, offsets=offsets, extra=extra)}")


def create_events_view(con: duckdb.DuckDBPyConnection, device: bool) -> None:
    """Create view `events`: `trace_events` plus the time basis of each row (`basis_columns`);
    `device`: whether any row may have device times."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS SELECT *, {basis_columns(device)} "
                f"FROM trace_events")


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas with nullable integer/boolean columns (as `load_events` returns)."""
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    """Run `sql` on `con` and return the result as pandas (nullable integer columns)."""
    return to_pandas(con.sql(sql).to_arrow_table())
