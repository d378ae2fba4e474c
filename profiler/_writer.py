"""Raw rows -> Arrow table -> Parquet part file, written atomically (temp file, then rename)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._groups import GroupInfo
from ._ops import GATHER_LIKE
from ._phases import _LABELS
from ._recorder import API_TABLE, R
from ._schema import RANK_KEY, RUN_ID_KEY, arrow_schema

__all__ = ["Identity", "rows_to_table", "write_part", "resolve_gpu_times"]


class Identity(NamedTuple):
    run_id: str
    rank: int
    world_size: int
    host: str
    pid: int
    world_pg: str | None   # name of the default group, labelled 'world'


def resolve_gpu_times(rows: list, final: bool) -> list:
    """Replace CUDA event pairs by durations where resolvable; return rows still waiting on the GPU.

    Never synchronises the device: an unfinished event pair is carried to the next flush, except
    at the final flush, where each remaining end event is waited for once.
    """
    waiting = []
    for row in rows:
        gpu = row[R.GPU]
        if gpu is None or isinstance(gpu, int):
            continue
        start, end = gpu
        if end is None:  # async call never waited: no end event on the stream
            row[R.GPU] = None
            continue
        if not end.query():
            if not final:
                waiting.append(row)
                continue
            end.synchronize()
        row[R.GPU] = int(round(start.elapsed_time(end) * 1e6))
    return waiting


def _dict_col(values: list, mapping: dict) -> pa.Array:
    """Strings from a per-unique-value mapping, built as an Arrow dictionary and decoded in C++."""
    uniq: dict[Any, int] = {}
    idx = np.fromiter((uniq.setdefault(v, len(uniq)) for v in values), dtype=np.int32,
                      count=len(values))
    dictionary = pa.array([mapping(v) if callable(mapping) else mapping.get(v) for v in uniq],
                          pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(idx), dictionary).cast(pa.string())


def rows_to_table(rows: list, ident: Identity, groups: dict[str, GroupInfo]) -> pa.Table:
    """Materialise raw rows into a table with the trace schema."""
    n = len(rows)
    cols = list(zip(*rows)) if n else [()] * 21

    api_idx = np.fromiter(cols[R.API], dtype=np.int32, count=n)
    api_names = np.array([a[0] for a in API_TABLE] or [""], dtype=object)
    ops = np.array([a[1] for a in API_TABLE] or [""], dtype=object)
    captures = np.array([a[2] for a in API_TABLE] or [""], dtype=object)
    op_col = ops[api_idx] if n else np.array([], dtype=object)

    # Group-derived columns, per unique group name.
    pg_names = cols[R.PG]
    sizes = {name: (groups[name].size if name in groups else -1) for name in set(pg_names)}
    pg_size = np.fromiter((sizes[g] for g in pg_names), dtype=np.int64, count=n)

    def dim_of(name: str) -> str | None:
        label = _LABELS.get(name)
        if label is None and name == ident.world_pg:
            return "world"
        return label

    # Element sizes and dtype names, per unique dtype.
    dtypes = cols[R.DTYPE]
    esize_map = {d: (d.itemsize if d is not None else 0) for d in set(dtypes)}
    esize = np.fromiter((esize_map[d] for d in dtypes), dtype=np.int64, count=n)

    gather_like = np.isin(op_col, list(GATHER_LIKE)) if n else np.zeros(0, bool)
    is_rs = op_col == "reduce_scatter"
    count = _int_or_nan(cols[R.COUNT], n)
    in_numel = _int_or_nan(cols[R.IN], n)
    out_numel = _int_or_nan(cols[R.OUT], n)
    safe_size = np.where(pg_size > 0, pg_size, 1)
    # Functional collectives leave what needs the group size to here.
    count = np.where(np.isnan(count) & is_rs, np.floor(in_numel / safe_size), count)
    out_numel = np.where(np.isnan(out_numel) & is_rs, count, out_numel)
    out_numel = np.where(np.isnan(out_numel) & (op_col == "all_gather"), count * safe_size, out_numel)
    nbytes = count * esize * np.where(gather_like, safe_size, 1)

    phases = cols[R.PHASE]
    steps = [None if p is None else p.step for p in phases]

    meta = {RUN_ID_KEY: ident.run_id.encode(), RANK_KEY: str(ident.rank).encode()}
    schema = arrow_schema(meta)
    ranks_map = {name: list(groups[name].ranks) if name in groups else None for name in set(pg_names)}
    backend_map = {name: groups[name].backend if name in groups else None for name in set(pg_names)}

    arrays = {
        "run_id": pa.array([ident.run_id] * n, pa.string()),
        "rank": pa.array(np.full(n, ident.rank, np.int32)),
        "world_size": pa.array(np.full(n, ident.world_size, np.int32)),
        "host": pa.array([ident.host] * n, pa.string()),
        "pid": pa.array(np.full(n, ident.pid, np.int32)),
        "tid": pa.array(np.fromiter(cols[R.TID], np.int64, count=n)),
        "seq": pa.array(np.fromiter(cols[R.SEQ], np.int64, count=n)),
        "pg_name": pa.array(list(pg_names), pa.string()),
        "pg_dim": _dict_col(pg_names, dim_of),
        "pg_size": pa.array(pg_size.astype(np.int32)),
        "pg_ranks": pa.array([ranks_map[g] for g in pg_names], pa.list_(pa.int32())),
        "pg_seq": pa.array(np.fromiter(cols[R.PGSEQ], np.int64, count=n)),
        "op": pa.array(op_col.tolist(), pa.string()),
        "api": pa.array(api_names[api_idx].tolist() if n else [], pa.string()),
        "dtype": _dict_col(dtypes, lambda d: None if d is None else str(d).removeprefix("torch.")),
        "count": _nullable_int(count),
        "bytes": _nullable_int(nbytes),
        "in_bytes": _nullable_int(in_numel * esize),
        "out_bytes": _nullable_int(out_numel * esize),
        "peer": pa.array(list(cols[R.PEER]), pa.int32()),
        "root": pa.array(list(cols[R.ROOT]), pa.int32()),
        "async_op": pa.array(list(cols[R.ASYNC]), pa.bool_()),
        "backend": _dict_col(pg_names, backend_map),
        "device": pa.array([d or "cpu" for d in cols[R.DEVICE]], pa.string()),
        "t_start_ns": pa.array(list(cols[R.T0]), pa.int64()),
        "t_end_ns": pa.array(list(cols[R.TEND]), pa.int64()),
        "t_return_ns": pa.array(list(cols[R.TRET]), pa.int64()),
        "t_wait_ns": pa.array(list(cols[R.TWAIT]), pa.int64()),
        "completion": pa.array(list(cols[R.COMPLETION]), pa.string()),
        "gpu_duration_ns": pa.array(list(cols[R.GPU]), pa.int64()),
        "phase": _dict_col(phases, lambda p: None if p is None else p.name),
        "phase_path": _dict_col(phases, lambda p: None if p is None else p.path),
        "step": pa.array(steps, pa.int64()),
        "capture": pa.array(captures[api_idx].tolist() if n else [], pa.string()),
        "error": pa.array(list(cols[R.ERROR]), pa.string()),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _int_or_nan(values, n: int) -> np.ndarray:
    return np.fromiter((np.nan if v is None else v for v in values), dtype=np.float64, count=n)


def _nullable_int(values: np.ndarray) -> pa.Array:
    mask = np.isnan(values)
    return pa.array(np.where(mask, 0, values).astype(np.int64), mask=mask)


def write_part(table: pa.Table, directory: str, name: str) -> str:
    """Write `table` to directory/name atomically: readers never see a partial file."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=1)
    os.replace(tmp, final)
    return final
