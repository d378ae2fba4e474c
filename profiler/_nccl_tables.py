"""Assemble the NCCL log tables from the scanner's columns and the record parser's rows.

Everything here is columnar (Arrow/numpy/pandas): the collectives of both paths are put in one
table in log order, tuning lines are attached by sorted-array joins, and ranks/group sizes come
from a join with the communicators' init lines.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import _nccl_scan
from ._nccl_formats import DTYPES, GATHER_LIKE, OP_NAMES, REDOPS
from ._nccl_records import clean_host
from ._nccl_scan import NCCL_OPS
from ._nccl_tuning import attach_tuning

__all__ = ["collectives_table", "communicators_table", "COLL_COLUMNS", "INIT_COLUMNS",
           "TOPO_COLUMNS"]

COLL_COLUMNS = ["op", "nccl_op", "op_count", "count", "dtype", "elem_bytes", "redop", "root",
                "peer", "comm", "nranks", "stream", "sendbuff", "recvbuff", "host", "pid", "tid",
                "device", "algo", "proto", "channels", "source", "line"]
INIT_COLUMNS = ["host", "pid", "tid", "device", "comm", "rank", "nranks", "cuda_dev", "nvml_dev",
                "bus_id", "comm_id", "init_fn", "phase", "source", "line"]
TOPO_COLUMNS = ["host", "pid", "tid", "device", "comm", "kind", "channel", "transport", "value",
                "source", "line"]
_TORCH_OPS = pa.array([OP_NAMES[n] for n in NCCL_OPS.to_pylist()])
# Per `nccl_op` code: rooted ops (their root is `root`) and point-to-point ops (it is `peer`).
_ROOTED = np.isin(_TORCH_OPS.to_numpy(zero_copy_only=False), ["broadcast", "reduce", "gather",
                                                              "scatter"])
_P2P = np.isin(_TORCH_OPS.to_numpy(zero_copy_only=False), ["send", "recv"])
_STR_DTYPE = pa.table({"s": pa.array([], pa.large_string())}).to_pandas()["s"].dtype  # pandas' str
# `nccl_op` codes of the gather-like ops (see GATHER_LIKE).
_GATHER_CODES = np.flatnonzero(np.isin(_TORCH_OPS.to_numpy(zero_copy_only=False),
                                       list(GATHER_LIKE)))


def _op_codes(names: list) -> np.ndarray:
    return pc.fill_null(pc.index_in(pa.array(names, pa.string()), value_set=NCCL_OPS),
                        -1).to_numpy(zero_copy_only=False).astype(np.int64)


_STR = {"host", "sendbuff", "recvbuff", "comm", "stream", "algo", "proto"}


def _columns(fast: list[dict], rows: list[tuple], names: list[str], convert: dict) -> dict:
    """One dict of columns from the scanner's per-block dicts and the parser's tuples."""
    out = {}
    for i, name in enumerate(names):
        py = [r[i] for r in rows]
        if name in convert:
            py = convert[name](py)
        if name == "host":  # per-block dictionaries (the scanner's) + the parser's values
            out[name] = [p[name] for p in fast] + [py]
        elif name in _STR:
            out[name] = pa.concat_arrays([_large(p[name]) for p in fast] +
                                         [pa.array(py, pa.large_string())])
        elif fast and np.isscalar(fast[0][name]):  # one value per block (file_idx, sub)
            out[name] = np.concatenate([np.repeat(np.array([p[name] for p in fast], np.int64),
                                                  [len(p["line"]) for p in fast]),
                                        np.asarray(py, np.int64).reshape(-1)])
        else:
            out[name] = np.concatenate([np.asarray(p[name], np.int64) for p in fast] +
                                       [np.asarray(py, np.int64).reshape(-1)])
    return out


def _large(a: pa.Array) -> pa.Array:
    return a if a.type == pa.large_string() else a.cast(pa.large_string())


def _dict_codes(pieces: list) -> tuple[np.ndarray, list]:
    """One code per row, into one list of distinct values, for pieces that are each a
    dictionary array (a block's, from the scanner) or a Python list: only the few dictionary
    values go through Python, never the rows."""
    index: dict = {}
    codes = []
    for p in pieces:
        if isinstance(p, pa.DictionaryArray):
            lut = np.array([index.setdefault(v, len(index)) for v in p.dictionary.to_pylist()] +
                           [0], np.int64)
            codes.append(lut[p.indices.to_numpy(zero_copy_only=False)])
        else:
            codes.append(np.array([index.setdefault(v, len(index)) for v in p], np.int64))
    return np.concatenate(codes + [np.zeros(0, np.int64)]), list(index)


def _hosts(idx: np.ndarray, vals: list, at_start: np.ndarray,
           known: set[str]) -> tuple[pa.Array, np.ndarray]:
    """Host names cleaned of glued junk (see `clean_host`): the distinct cleaned names, and
    per row (codes `idx` into `vals`) a small-int code into them."""
    seen_at_start = np.bincount(idx[at_start], minlength=len(vals))
    known |= {vals[i] for i in np.flatnonzero(seen_at_start).tolist()} - {None}
    cleaned = [clean_host(v, known) for v in vals]
    codes = {h: i for i, h in enumerate(dict.fromkeys(cleaned))}
    lut = np.array([codes[h] for h in cleaned] + [0], np.int64)
    return pa.array(list(codes), pa.large_string()), lut[idx]


def _ints(v: list) -> list:
    return [-1 if x is None else int(x) for x in v]


def _thread(host: np.ndarray, pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """One int64 per thread; the process (host, pid) is everything above bit 22."""
    mask = (1 << 22) - 1
    return (host << 44) | ((pid & mask) << 22) | (tid & mask)


def collectives_table(fast_c: list[dict], fast_t: list[dict], parser: Any, files: list[str],
                      comms_of: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `collectives` table in log order, and the communicators (`comms_of()`, called once
    the host names are cleaned) whose ranks it was joined with (see `join_ranks`)."""
    c_names = ["op_code", "op_count", "sendbuff", "recvbuff", "count", "dtype_code", "redop",
               "root", "comm", "nranks", "stream", "host", "pid", "tid", "device", "file_idx",
               "line", "sub"]
    op_codes = lambda v: _op_codes(v).tolist()  # noqa: E731
    c_rows = parser.coll_rows()
    c = _columns(fast_c, c_rows, c_names, {
        "op_code": op_codes, "op_count": lambda v: [int(x, 16) for x in v], "count": _ints,
        "dtype_code": _ints, "redop": _ints, "root": _ints, "nranks": _ints, "pid": _ints,
        "tid": _ints, "device": _ints})
    t_names = ["op_code", "nbytes", "algo", "proto", "channels", "host", "pid", "tid", "device",
               "file_idx", "line", "sub"]
    t = _columns(fast_t, parser.tuning_rows(), t_names,
                 {"op_code": op_codes, "pid": _ints, "tid": _ints, "device": _ints})
    n_c, n_t = len(c["line"]), len(t["line"])
    at_start = np.zeros(n_c + n_t, bool)
    at_start[:sum(len(p["line"]) for p in fast_c)] = np.concatenate(
        [p["host_at_start"] for p in fast_c] + [np.zeros(0, bool)])
    n_ft = sum(len(p["line"]) for p in fast_t)
    at_start[n_c:n_c + n_ft] = np.concatenate([p["host_at_start"] for p in fast_t] +
                                              [np.zeros(0, bool)])
    host_names, host_code = _hosts(*_dict_codes(c.pop("host") + t.pop("host")), at_start,
                                   parser.hosts)
    # Log order: file, line, record within the line.
    c_order = (c["file_idx"] << 40) | (c["line"] << 8) | c["sub"]
    t_order = (t["file_idx"] << 40) | (t["line"] << 8) | t["sub"]
    c_code = host_code[:n_c]
    if (np.diff(c_order) < 0).any():  # records of the Python path come last: merge them in
        c, c_code, c_order = _log_order(c, c_code, c_order, n_c - len(c_rows))
    dt = c["dtype_code"]
    esize_lut = np.full(max(int(dt.max(initial=0)) + 1, len(DTYPES)), -1, np.int64)
    for code, (_, size) in DTYPES.items():
        esize_lut[code] = size
    esize = esize_lut[dt]
    b1 = np.where(esize > 0, c["count"] * esize, -1)
    # Gathers' tuning lines count every rank's part (count x elem x nranks), sometimes.
    gather = np.isin(c["op_code"], _GATHER_CODES)
    b2 = np.where((esize > 0) & (c["nranks"] > 1) & gather, b1 * c["nranks"], -1)
    comm = pc.dictionary_encode(c["comm"], null_encoding="encode")
    comm_codes = comm.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    with ThreadPoolExecutor(1) as pool:
        # The tuning join (compiled or numpy: no GIL) runs beside the other columns and the
        # ranks.
        fut = pool.submit(attach_tuning, _thread(c_code, c["pid"], c["tid"]), c_order,
                          c["op_code"], b1, b2, comm_codes,
                          _thread(host_code[n_c:], t["pid"], t["tid"]), t_order, t["op_code"],
                          t["nbytes"])
        c["host"] = _take(host_names, c_code)
        op = _take(_TORCH_OPS, c["op_code"])
        p2p, rooted = _P2P[c["op_code"]], _ROOTED[c["op_code"]]
        dnames = pa.array([DTYPES.get(i, (f"nccl_type_{i}", None))[0]
                           for i in range(len(esize_lut))])
        n_redops = max(int(c["redop"].max(initial=0)) + 1, 5)
        rnames = pa.array([REDOPS.get(i, f"premul_{i}") for i in range(n_redops)])
        redop = _take(rnames, c["redop"], ~p2p)
        cols = {
            "op": op, "nccl_op": _take(NCCL_OPS, c["op_code"]),
            "op_count": c["op_count"], "count": c["count"], "dtype": _take(dnames, dt),
            "elem_bytes": _masked(esize, esize < 0), "redop": redop,
            "root": _masked(c["root"], ~rooted), "peer": _masked(c["root"].copy(), ~p2p),
            "comm": c["comm"], "nranks": _masked(c["nranks"], c["nranks"] < 0),
            "stream": c["stream"], "sendbuff": c["sendbuff"], "recvbuff": c["recvbuff"],
            "host": c["host"], "pid": _masked(c["pid"], c["pid"] < 0),
            "tid": _masked(c["tid"], c["tid"] < 0),
            "device": _masked(c["device"], c["device"] < 0),
            "source": _take(pa.array(files, pa.large_string()), c["file_idx"]),
            "line": c["line"],
        }
        comms = comms_of()
        df = join_ranks(_pandas(cols), comms, {
            "host": (c_code, host_names.to_pylist()),
            "comm": (comm_codes, comm.dictionary.to_pylist()), "gather": gather,
            "count_elem": (c["count"], esize, esize < 0)})
        tix = fut.result()
    tuned = tix >= 0
    at_t = np.where(tuned, tix, 0)
    if n_t == 0:  # nothing to take from: all null
        t = {"algo": pa.nulls(1, pa.large_string()), "proto": pa.nulls(1, pa.large_string()),
             "channels": np.full(1, -1)}
    chans = t["channels"][at_t]
    tuning = _pandas({"algo": _take(t["algo"], at_t, tuned),
                      "proto": _take(t["proto"], at_t, tuned),
                      "channels": _masked(chans, ~tuned | (chans < 0))})
    at = COLL_COLUMNS.index("algo")
    for i, name in enumerate(tuning.columns):
        df.insert(at + i, name, tuning[name])
    return df, comms


def _log_order(c: dict, code: np.ndarray, order: np.ndarray, n_fast: int) -> tuple:
    """The collectives (`c`, host codes, orders) in log order: the Python path's records (the
    last rows) merged in among the scanner's. Both runs are in log order (blocks and lines are
    read in order), so the compiled kernel merges the number columns in place (no new arrays,
    whose fresh pages cost more than the copy); else, and for strings, one take per column."""
    perm = np.argsort(order, kind="stable")
    cscan, fast, py = _nccl_scan._CSCAN, order[:n_fast], order[n_fast:]
    ins = None
    if cscan is not None and bool((np.diff(fast) > 0).all()) and bool((np.diff(py) > 0).all()):
        ins = np.searchsorted(fast, py, side="right")  # ties after, as the stable sort does

    def merged(v):
        if isinstance(v, pa.Array):
            return _take(v, perm)
        if ins is None:
            return v[perm]
        cscan.merge_tail(v, n_fast, ins)
        return v

    return {k: merged(v) for k, v in c.items()}, merged(code), merged(order)


def _take(arr: pa.Array, idx: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """arr.take(idx), null where `valid` is False. Strings without nulls are copied by the
    compiled kernel when it is built (Arrow's take costs more per row here)."""
    cscan = _nccl_scan._CSCAN
    if cscan is None or arr.null_count or not len(arr) or not (
            pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return arr.take(pa.array(idx, mask=None if valid is None else ~valid))
    arr = arr.cast(pa.large_string())
    offs = np.frombuffer(arr.buffers()[1], np.int64, len(arr) + 1, 8 * arr.offset)
    rows = np.ascontiguousarray(idx if valid is None else np.where(valid, idx, -1), np.int64)
    buffers = cscan.take(offs, arr.buffers()[2] or b"", rows, pa.allocate_buffer)
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.LargeStringArray.from_buffers(len(rows), *buffers, bitmap)


def _pandas(cols: dict) -> pd.DataFrame:
    """Columns as a DataFrame without copies: Arrow strings as pandas strings, int64 arrays
    as nullable Int64 (what `pa.Table.to_pandas` with an Int64 mapping gives)."""
    out = {}
    for k, v in cols.items():
        if isinstance(v, pa.Array):
            v = pd.array(v, dtype=_STR_DTYPE)
        elif isinstance(v, np.ndarray):
            v = pd.arrays.IntegerArray(v.astype(np.int64, copy=False), np.zeros(len(v), bool))
        out[k] = v
    return pd.DataFrame(out, copy=False)


def communicators_table(inits: pd.DataFrame, topo: pd.DataFrame) -> pd.DataFrame:
    """One row per (host, pid, comm) from the init lines, with per-communicator setup."""
    cols = ["host", "pid", "comm", "rank", "nranks", "cuda_dev", "nvml_dev", "bus_id", "comm_id",
            "init_fn", "complete", "nccl_version", "coll_channels", "collnet_channels",
            "nvls_channels", "p2p_channels", "p2p_channels_per_peer", "transports", "network",
            "source", "line"]
    if inits.empty:
        return pd.DataFrame(columns=cols)
    inits = inits.assign(complete=inits["phase"] == "COMPLETE")
    # Prefer the COMPLETE line; keep START-only communicators (an init that hung is a finding).
    inits = inits.sort_values(["complete", "line"]).drop_duplicates(["host", "pid", "comm"],
                                                                      keep="last")
    out = inits[["host", "pid", "comm", "rank", "nranks", "cuda_dev", "nvml_dev", "bus_id",
                 "comm_id", "init_fn", "complete", "source", "line"]].copy()
    versions = topo[topo["kind"] == "version"].groupby(["host", "pid"])["value"].first()
    out["nccl_version"] = [versions.get((h, p), "").removeprefix("version=") or None
                           for h, p in zip(out["host"], out["pid"])]
    chans = topo[topo["kind"] == "channels"].dropna(subset=["comm"])
    parsed = {(h, p, c): dict(kv.split("=") for kv in v.split())
              for h, p, c, v in zip(chans["host"], chans["pid"], chans["comm"], chans["value"])}
    for col, key in (("coll_channels", "coll"), ("collnet_channels", "collnet"),
                     ("nvls_channels", "nvls"), ("p2p_channels", "p2p"),
                     ("p2p_channels_per_peer", "p2p_peer")):
        out[col] = [_int(parsed.get((h, p, c), {}).get(key))
                    for h, p, c in zip(out["host"], out["pid"], out["comm"])]
    # Connection lines come from proxy threads that name no communicator: per process then.
    conn = topo[topo["kind"] == "connection"]
    joined = lambda s: ",".join(sorted(set(s)))  # noqa: E731
    by_comm = conn.dropna(subset=["comm"]).groupby(["host", "pid", "comm"])["transport"].agg(joined)
    by_proc = conn.groupby(["host", "pid"])["transport"].agg(joined)
    net = topo[topo["kind"] == "network"].groupby(["host", "pid"])["transport"].last()
    out["transports"] = [by_comm.get((h, p, c), by_proc.get((h, p))) for h, p, c in
                         zip(out["host"], out["pid"], out["comm"])]
    out["network"] = [net.get((h, p)) for h, p in zip(out["host"], out["pid"])]
    return out[cols].reset_index(drop=True)


def _int(v: Any) -> int | None:
    return None if v is None or v != v else int(v)


def _na(v: Any) -> Any:
    return None if v is None or v is pd.NA or v != v else v


def _codes_of(col: pd.Series, other: pd.Series, as_int: bool,
              given: tuple | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense codes of `col` (NA is a value of its own, as in a pandas merge or a groupby with
    dropna=False) and the same codes for `other` (-1 for values `col` lacks). `given`: the
    column's (codes, distinct values) when the caller has them already."""
    codes, uniq = given if given is not None else pd.factorize(col, use_na_sentinel=False)
    norm = (lambda v: None if _na(v) is None else int(v)) if as_int else _na  # noqa: E731
    lut = {norm(v): i for i, v in enumerate(uniq)}
    return (codes.astype(np.int64, copy=False),
            np.array([lut.get(norm(v), -1) for v in other], np.int64), len(uniq))


def _cumcount(group: np.ndarray, n_groups: int) -> np.ndarray:
    """Position of each row within its group, in row order (one counting loop when the
    compiled kernel is built, else a stable sort by group)."""
    if _nccl_scan._CSCAN is not None:
        out = _nccl_scan._CSCAN.cumcount(np.ascontiguousarray(group, np.int64), n_groups)
        return np.frombuffer(out, np.int64)
    g = group.astype(np.uint16) if n_groups <= (1 << 16) else group
    perm = np.argsort(g, kind="stable")
    sg = group[perm]
    start = np.ones(len(sg), bool)
    start[1:] = sg[1:] != sg[:-1]
    pos = np.arange(len(sg))
    first = np.maximum.accumulate(np.where(start, pos, 0))
    out = np.empty(len(sg), np.int64)
    out[perm] = pos - first
    return out


def _small_ints(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A (short) column as int64 values and an NA mask, plus one NA slot at the end."""
    v = col.to_numpy(dtype=object)
    na = np.append(pd.isna(v), True)
    return np.append(np.where(na[:-1], 0, v), 0).astype(np.int64), na


def _masked(values: np.ndarray, mask: np.ndarray) -> pd.arrays.IntegerArray:
    """Nullable Int64 over `values` (no copy; what lies under the mask is never read)."""
    return pd.arrays.IntegerArray(values.astype(np.int64, copy=False), mask)


def join_ranks(colls: pd.DataFrame, comms: pd.DataFrame, codes: dict) -> pd.DataFrame:
    """Add rank, pg_size, bytes (nccl-tests S) and a per-communicator sequence number.

    Joins on (host, pid, comm) with hashed int codes instead of a pandas merge (the
    communicators are few, one row per key as `communicators_table` makes them; the
    collectives are millions). `codes` holds what the caller knows already (may be empty):
    "host"/"comm" as (codes, distinct values), "gather" (a bool per row) and "count_elem"
    (count and elem_bytes as numpy arrays, and where either is NA)."""
    if colls.empty:
        for c in ("rank", "pg_size", "bytes", "nccl_seq"):
            colls[c] = pd.Series(dtype="Int64")
        return colls
    key = comms[["host", "pid", "comm"]]
    assert not key.duplicated().any(), "one communicator row per (host, pid, comm)"
    h, kh, n_h = _codes_of(colls["host"], key["host"], False, codes.get("host"))
    p, kp, n_p = _codes_of(colls["pid"], key["pid"], True)
    m, km, n_m = _codes_of(colls["comm"], key["comm"], False, codes.get("comm"))
    # Distinct hosts x pids x communicators of one log: far below 2**62.
    assert n_h * n_p * n_m < (1 << 62), "join key codes would overflow int64"
    g = (h * n_p + p) * n_m + m
    known = np.flatnonzero((kh >= 0) & (kp >= 0) & (km >= 0))  # keys some collective has
    row = pd.Index((kh * n_p + kp) * n_m + km)[known].get_indexer(g)
    # The extra last slot of each comms column below stands for "no communicator".
    rc = np.where(row >= 0, np.append(known, 0)[row], len(comms))
    rank, rank_na = _small_ints(comms["rank"])
    n_k, n_na = _small_ints(comms["nranks"])
    rank, rank_na, n_k, n_na = rank[rc], rank_na[rc], n_k[rc], n_na[rc]
    colls["rank"] = _masked(rank, rank_na)
    nr = colls["nranks"]
    nr_na = nr.isna().to_numpy()
    pg_na = nr_na & n_na
    pg = np.where(nr_na, n_k, nr.to_numpy(dtype=np.int64, na_value=0))
    colls["pg_size"] = _masked(pg, pg_na)
    gather = codes.get("gather")
    if gather is None:
        gather = colls["op"].isin(GATHER_LIKE).to_numpy()
    count_elem = codes.get("count_elem")
    if count_elem is None:
        count, elem = colls["count"], colls["elem_bytes"]
        count_elem = (count.to_numpy(np.int64, na_value=0), elem.to_numpy(np.int64, na_value=0),
                      (count.isna() | elem.isna()).to_numpy())
    count, elem, count_elem_na = count_elem
    colls["bytes"] = _masked(count * elem * np.where(gather, pg, 1),
                             count_elem_na | gather & pg_na)
    code, uniq = pd.factorize(g)
    colls["nccl_seq"] = _cumcount(code.astype(np.int64, copy=False), len(uniq))
    return colls
