"""Raw rows or packed records -> Arrow table -> Parquet part file, written atomically."""

from __future__ import annotations

import functools
import gc
import os
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import _columns as C
from ._cuda_events import resolve_gpu_times  # noqa: F401  (re-exported)
from ._groups import GroupInfo
from ._ops import GATHER_LIKE
from ._phases import _LABELS
from ._rows import API_TABLE, R, X
from ._schema import RANK_KEY, RECORDED_REQUIRED, RUN_ID_KEY, arrow_schema

__all__ = ["Identity", "rows_to_table", "columns_to_table", "write_part", "resolve_gpu_times"]


class Identity(NamedTuple):
    run_id: str
    rank: int
    world_size: int
    host: str
    pid: int
    world_pg: str | None   # name of the default group, labelled 'world'


def _factorize(values: tuple) -> tuple[np.ndarray, list]:  # values: non-empty
    """Codes and uniques of objects, by identity: the rows hold few distinct objects (groups,
    dtypes, phase frames), all alive, so ids are unique and no object is hashed."""
    n = len(values)
    if values.count(values[0]) == n:  # the usual case, one value: C-speed check, no ids
        return np.zeros(n, np.int32), [values[0]]
    ids = np.fromiter(map(id, values), dtype=np.int64, count=n)
    uniq, first, codes = np.unique(ids, return_index=True, return_inverse=True)
    return codes.astype(np.int32).reshape(-1), [values[i] for i in first]


def _decode(codes: np.ndarray, dictionary: list, typ: pa.DataType) -> pa.Array:
    """Per-unique values on rows: strings stay dictionary-encoded (int32 codes, the Parquet
    writer stores them as they are, no hashing per row); other types are decoded (C++)."""
    if typ != pa.string():
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()),
                                              pa.array(dictionary, typ)).cast(typ)
    remap, values, valid = _string_dictionary(tuple(dictionary))
    if remap is not None:
        codes = remap[codes]
    if valid is not None:
        # Null rows as masked codes (Arrow cannot merge dictionaries holding nulls). With nulls
        # present the Parquet writer takes min/max over the whole dictionary, so it keeps only
        # the values some row has.
        valid = valid[codes]
        used = np.flatnonzero(np.bincount(codes[valid], minlength=len(values)))
        if not len(used):
            return pa.nulls(len(codes), pa.dictionary(pa.int32(), typ))
        lut = np.zeros(len(values), np.int32)
        lut[used] = np.arange(len(used), dtype=np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(lut[codes], pa.int32(), mask=~valid),
                                              values.take(pa.array(used)))
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), values)


# Parts of one program use the same few dictionaries (APIs, ops, groups, phases) part after part:
# each is built once (with the schema, cached likewise, building the table of a ~1,000-event part,
# as a timed flush writes, took 1.17 -> 0.99 ms).
@functools.lru_cache(maxsize=256)
def _string_dictionary(dictionary: tuple) -> tuple[np.ndarray | None, pa.Array,
                                                   np.ndarray | None]:
    """(codes -> entries remap or None, the string dictionary array, per-entry validity or None
    when no entry is null) for a dictionary given per code."""
    remap = None
    if len(set(dictionary)) < len(dictionary):
        # One entry per value: the Parquet writer stores a dictionary holding a value twice
        # (several APIs of one op, one capture kind for all) as plain strings, ~2x the cost.
        first: dict = {}
        remap = np.array([first.setdefault(v, len(first)) for v in dictionary], np.int32)
        dictionary = tuple(first)
    valid = None
    if None in dictionary:
        valid = np.array([v is not None for v in dictionary])
    for a in (remap, valid):  # shared by every part: never written
        if a is not None:
            a.flags.writeable = False
    return remap, pa.array(dictionary, pa.string()), valid


# Columns that hold one value on every row (run id, host, rank, all-null extras, the ranks of a
# part's one group) are the same from one part to the next (parts are mostly flush_events long):
# built once, shared (Arrow arrays are immutable). A few parts' worth at most (~10 columns of
# 64 Ki rows each; `_ranks` caches lists only while small).
@functools.lru_cache(maxsize=32)
def _const(value: Any, n: int, typ: pa.DataType) -> pa.Array:
    if value is None:  # strings as the dictionary type their columns have (_table_schema)
        return pa.nulls(n, pa.dictionary(pa.int32(), typ) if typ == pa.string() else typ)
    if typ == pa.string():
        return _decode(np.zeros(n, np.int32), [value], typ)
    if pa.types.is_list(typ):  # a tuple on every row: offsets and tiled values
        k = len(value)
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * np.int32(k)),
                                        pa.array(np.tile(np.array(value, np.int32), n)), typ)
    return pa.array(np.full(n, value), typ)


def _ranks(infos: list, codes: np.ndarray) -> pa.Array:
    """The pg_ranks column from the groups' infos (None = unknown; a group whose ranks could not
    be resolved has none: empty lists) and per-row codes."""
    typ = pa.list_(pa.int32())
    if len(infos) == 1:  # a part on one group, the usual case: no list take per row (~0.8 ms)
        ranks, n = (tuple(infos[0].ranks) if infos[0] else None), len(codes)
        small = n * max(1, len(ranks or ())) <= 1 << 20  # 64 Ki events on <= 16 ranks: cached
        return (_const if small else _const.__wrapped__)(ranks, n, typ)
    return pa.array([list(i.ranks) if i else None for i in infos], typ).take(pa.array(codes))


def _num(values: tuple, typ: pa.DataType = pa.int64()) -> pa.Array:
    """Integers (None = null) as an Arrow array; without nulls through numpy (~3x faster)."""
    if typ == pa.int64():
        try:
            return pa.array(np.fromiter(values, np.int64, len(values)))
        except TypeError:  # a None among them
            pass
    return pa.array(values, typ)


def _float(values: tuple) -> np.ndarray:
    """Integers with None as float64 with NaN (for vectorised arithmetic)."""
    return pa.array(values, pa.float64()).to_numpy(zero_copy_only=False)


def rows_to_table(rows: list, ident: Identity, groups: dict[str, GroupInfo]) -> pa.Table:
    """Materialise raw rows (`_rows.R`) into a table with the trace schema (strings
    dictionary-encoded: `_table_schema`).

    One C-level transpose, then per-unique-value lookups (groups, dtypes, phases, APIs)
    expanded with Arrow dictionary decodes, and numpy arithmetic for sizes (see `_assemble`).
    """
    n = len(rows)
    if n == 0:
        return _table_schema(_meta(ident)).empty_table()
    # Transposing allocates one iterator per row; with the collector on, that allocation burst
    # triggers collections that traverse every buffered row (2-3x slower).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        cols = list(zip(*rows))
    finally:
        if gc_was_enabled:
            gc.enable()
    ph_codes, ph_uniq = _factorize(cols[R.PHASE])
    phase = (_decode(ph_codes, [p and p.name for p in ph_uniq], pa.string()),
             _decode(ph_codes, [p and p.path for p in ph_uniq], pa.string()),
             _decode(ph_codes, [p and p.step for p in ph_uniq], pa.int64()))
    return _assemble(
        ident, groups, np.array(cols[R.API], dtype=np.int32), _factorize(cols[R.PG]),
        _factorize(cols[R.DTYPE]), phase,
        _float(cols[R.COUNT]), _float(cols[R.IN]), _float(cols[R.OUT]),
        {"tid": _num(cols[R.TID]), "seq": _num(cols[R.SEQ]), "pg_seq": _num(cols[R.PGSEQ]),
         "t_start_ns": _num(cols[R.T0]), "t_end_ns": _num(cols[R.TEND]),
         "t_return_ns": _num(cols[R.TRET])},
        _extras(cols[R.X], n))


def columns_to_table(data: np.ndarray, keys: list[tuple], ident: Identity,
                     groups: dict[str, GroupInfo]) -> pa.Table:
    """Materialise packed records (`_columns.FIELDS`, an (n, K) int64 array) whose `key`
    fields index `keys` (a `KeyTable` snapshot). No Python work per record."""
    n = len(data)
    if n == 0:
        return _table_schema(_meta(ident)).empty_table()
    key = data[:, C.KEY]
    used = np.flatnonzero(np.bincount(key))  # codes are small ints: no sort
    lut = np.zeros(int(used[-1]) + 1, np.int32)
    lut[used] = np.arange(len(used), dtype=np.int32)
    kinv = lut[key]
    ks = [keys[i] for i in used.tolist()]  # the few keys these records use

    def per_key(j: int) -> tuple[np.ndarray, list]:
        codes, uniq = _factorize(tuple(k[j] for k in ks))
        return codes[kinv], uniq

    step = data[:, C.STEP]
    no_step = step == C.NO_STEP
    phase = (_decode(kinv, [k[3] for k in ks], pa.string()),
             _decode(kinv, [k[4] for k in ks], pa.string()),
             pa.array(np.where(no_step, 0, step), mask=no_step))
    t_end = pa.array(data[:, C.TEND])
    return _assemble(
        ident, groups, np.array([k[0] for k in ks], np.int32)[kinv], per_key(2), per_key(1),
        phase, data[:, C.COUNT], data[:, C.IN], data[:, C.OUT],
        {"tid": pa.array(data[:, C.TID]), "seq": pa.array(data[:, C.SEQ]),
         "pg_seq": pa.array(data[:, C.PGSEQ]), "t_start_ns": pa.array(data[:, C.T0]),
         "t_end_ns": t_end, "t_return_ns": t_end},
        _extras(None, n))


def _meta(ident: Identity) -> tuple:
    return ((RUN_ID_KEY, ident.run_id.encode()), (RANK_KEY, str(ident.rank).encode()))


def _assemble(ident: Identity, groups: dict[str, GroupInfo], api_idx: np.ndarray,
              pg: tuple[np.ndarray, list], dt: tuple[np.ndarray, list],
              phase: tuple[pa.Array, pa.Array, pa.Array], count: np.ndarray,
              in_numel: np.ndarray, out_numel: np.ndarray, ints: dict[str, pa.Array],
              extra: dict[str, pa.Array]) -> pa.Table:
    """The schema's columns from per-row codes (API index; group and dtype as (codes, unique
    objects)), phase columns, element counts as float64 (NaN = derive here), integer columns
    and the extra-field columns."""
    n = len(api_idx)
    schema = _table_schema(_meta(ident))
    api_names = [a[0] for a in API_TABLE]
    op_names = [a[1] for a in API_TABLE]
    captures = [a[2] for a in API_TABLE]
    # Per-API facts looked up by the API index (a few entries, not one string per row).
    api_op = np.array(op_names, dtype=object)
    gather_like = np.isin(api_op, list(GATHER_LIKE))[api_idx]
    is_rs = (api_op == "reduce_scatter")[api_idx]
    is_ag = (api_op == "all_gather")[api_idx]

    # The group field holds the GroupInfo captured when the call was made (hooks), or a group
    # name looked up in `groups` (rows built elsewhere).
    pg_codes, pg_objs = pg
    infos = [g if isinstance(g, GroupInfo) else groups.get(g) for g in pg_objs]
    pg_uniq = [g.name if isinstance(g, GroupInfo) else g for g in pg_objs]
    pg_size = np.array([i.size if i else -1 for i in infos], np.int64)[pg_codes]

    def dim_of(name: str) -> str | None:
        label = _LABELS.get(name)
        if label is None and name == ident.world_pg:
            return "world"
        return label

    dt_codes, dt_uniq = dt
    esize = np.array([d.itemsize if d is not None else 0 for d in dt_uniq], np.int64)[dt_codes]
    dt_names = [None if d is None else str(d).removeprefix("torch.") for d in dt_uniq]

    safe_size = np.where(pg_size > 0, pg_size, 1)
    if count.dtype.kind == "f":  # rows (packed records hold int64 counts, all known)
        # Functional collectives leave what needs the group size to here.
        count = np.where(np.isnan(count) & is_rs, np.floor(in_numel / safe_size), count)
        out_numel = np.where(np.isnan(out_numel) & is_rs, count, out_numel)
        out_numel = np.where(np.isnan(out_numel) & is_ag, count * safe_size, out_numel)
    nbytes = count * esize * np.where(gather_like, safe_size, 1)

    arrays = {
        "run_id": _const(ident.run_id, n, pa.string()),
        "rank": _const(ident.rank, n, pa.int32()),
        "world_size": _const(ident.world_size, n, pa.int32()),
        "host": _const(ident.host, n, pa.string()),
        "pid": _const(ident.pid, n, pa.int32()),
        **ints,
        "pg_name": _decode(pg_codes, pg_uniq, pa.string()),
        "pg_dim": _decode(pg_codes, [dim_of(g) for g in pg_uniq], pa.string()),
        "pg_size": pa.array(pg_size.astype(np.int32)),
        "pg_ranks": _ranks(infos, pg_codes),
        "op": _decode(api_idx, op_names, pa.string()),
        "api": _decode(api_idx, api_names, pa.string()),
        "dtype": _decode(dt_codes, dt_names, pa.string()),
        "count": _nullable_int(count),
        "bytes": _nullable_int(nbytes),
        "in_bytes": _nullable_int(in_numel * esize),
        "out_bytes": _nullable_int(out_numel * esize),
        "backend": _decode(pg_codes, [i.backend if i else None for i in infos], pa.string()),
        **extra,
        "gpu_hidden_ns": _const(None, n, pa.int64()),
        "phase": phase[0],
        "phase_path": phase[1],
        "step": phase[2],
        "capture": _decode(api_idx, captures, pa.string()),
    }
    for name in _DICTIONARY_COLUMNS:  # extras built as plain strings, all-null columns
        if not pa.types.is_dictionary(arrays[name].type):
            arrays[name] = pc.dictionary_encode(arrays[name])
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


@functools.lru_cache(maxsize=8)
def _table_schema(metadata: tuple) -> pa.Schema:
    """The trace schema as the writer's tables hold it, with key-value `metadata` (pairs): string
    columns dictionary-encoded (`write_part` stores them as plain Parquet strings: readers see
    `arrow_schema`'s types), the columns filled on every row required (no definition levels:
    -9 % write time; the Parquet writer refuses a null there). One per run and rank."""
    base = arrow_schema(dict(metadata))
    return pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type) if f.name in
                               _DICTIONARY_COLUMNS else f.type, f.name not in RECORDED_REQUIRED)
                      for f in base], metadata=base.metadata)


_EXTRA_COLUMNS = (("t_wait_ns", X.TWAIT, pa.int64(), None),
                  ("completion", X.COMPLETION, pa.string(), "return"),
                  ("peer", X.PEER, pa.int32(), None),
                  ("root", X.ROOT, pa.int32(), None),
                  ("async_op", X.ASYNC, pa.bool_(), False),
                  ("error", X.ERROR, pa.string(), None),
                  ("device", X.DEVICE, pa.string(), "cpu"),
                  ("source", X.SOURCE, pa.string(), "hooks"),
                  ("cuda_graph", X.CUDA_GRAPH, pa.string(), None))


def _extras(xs: tuple | None, n: int) -> dict[str, pa.Array]:
    """Columns kept in a row's extra list; rows of ordinary blocking calls have none (and
    packed records never do: `xs` None)."""
    idx = [] if xs is None or xs.count(None) == n else [i for i, x in enumerate(xs)
                                                         if x is not None]
    out = {}
    for name, k, typ, default in _EXTRA_COLUMNS:
        if not idx:
            out[name] = _const(default, n, typ)
            continue
        values = [default] * n
        for i in idx:
            x = xs[i]
            v = x[k] if k < len(x) else None
            values[i] = default if (v is None and default is not None) else v
        out[name] = pa.array(values, typ)
    # Device times: X.GPU holds (start_ns, end_ns, duration_ns) once resolved (_cuda_events),
    # or a bare duration from older producers.
    gpu = [None] * n
    for i in idx:
        gpu[i] = xs[i][X.GPU]
    for name, k in (("gpu_start_ns", 0), ("gpu_end_ns", 1), ("gpu_duration_ns", 2)):
        if not idx:
            out[name] = _const(None, n, pa.int64())
            continue
        out[name] = pa.array([g[k] if isinstance(g, tuple) else
                              (g if k == 2 and isinstance(g, int) else None) for g in gpu],
                             pa.int64())
    return out


def _nullable_int(values: np.ndarray) -> pa.Array:
    if values.dtype.kind == "i":  # packed records: every value known
        return pa.array(values)
    mask = np.isnan(values)
    return pa.array(np.where(mask, 0, values).astype(np.int64), mask=mask)


# Dictionary-encode the low-cardinality columns only, and keep min/max statistics where readers
# filter (rank, op, group, phase, sizes, times): this doubles the write rate.
_DICTIONARY_COLUMNS = ["run_id", "host", "pg_name", "pg_dim", "op", "api", "dtype", "backend",
                       "device", "completion", "phase", "phase_path", "capture", "error", "source",
                       "cuda_graph"]
# Message sizes repeat (a handful per program): Parquet dictionary pages make parts ~3x smaller
# and the write ~25 % faster than plain int64 (a column of all-distinct sizes falls back to plain).
_PARQUET_DICTIONARY = _DICTIONARY_COLUMNS + ["count", "bytes", "in_bytes", "out_bytes"]
_STATISTICS_COLUMNS = ["rank", "seq", "pg_name", "pg_dim", "pg_seq", "op", "bytes", "phase",
                       "step", "t_start_ns"]
# Counters and clocks rise call by call: delta encoding stores them in a few bits per value
# (parts ~4x smaller than plain + compression, and no slower to write).
_DELTA_COLUMNS = {c: "DELTA_BINARY_PACKED" for c in
                  ("seq", "pg_seq", "t_start_ns", "t_end_ns", "t_return_ns", "step")}


# LZ4 (Parquet's LZ4_RAW): parts as small as zstd level 1 gave (dictionary and delta encoding do
# most of the work), without zstd's fixed cost per column chunk, which was ~0.5-0.8 ms of a
# timed flush's ~1,000-event part (40 columns).
_COMPRESSION = "lz4"
# Values handed to the column encoders per batch (pyarrow's default 1,024): a whole part of
# flush_events (64 Ki) rows in one batch per column makes write_table ~10 % cheaper. A page is
# closed after the batch that fills it: a page may exceed 1 MiB by one batch of values (512 KiB
# of int64; more for long strings, bounded by the table already in memory).
_WRITE_BATCH = 65536


def write_part(table: pa.Table, directory: str, name: str) -> str:
    """Write `table` to directory/name atomically: readers never see a partial file."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp")
    meta = table.schema.metadata
    table = table.replace_schema_metadata(None)
    # No Arrow schema in the file: dictionary-encoded strings read back as plain strings (the
    # Parquet types are the same either way); the trace's own keys go in as key-value metadata.
    with pq.ParquetWriter(tmp, table.schema, store_schema=False, compression=_COMPRESSION,
                          use_dictionary=_PARQUET_DICTIONARY,
                          write_statistics=_STATISTICS_COLUMNS,
                          column_encoding=_DELTA_COLUMNS,
                          write_batch_size=_WRITE_BATCH) as writer:
        writer.write_table(table)
        if meta:
            writer.add_key_value_metadata(meta)
    os.replace(tmp, final)
    return final
