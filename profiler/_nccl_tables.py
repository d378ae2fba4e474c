"""Assemble the NCCL log tables from the scanner's columns and the record parser's rows.

Everything here is columnar (Arrow/numpy/pandas): the collectives of both paths are put in one
table in log order, tuning lines are attached by sorted-array joins, and ranks/group sizes come
from a join with the communicators' init lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
_ROOTED = pa.array(["broadcast", "reduce", "gather", "scatter"])
_P2P = pa.array(["send", "recv"])
_INT_MAP = {pa.int64(): pd.Int64Dtype()}.get
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
        if name in _STR:
            out[name] = pa.concat_arrays([p[name].cast(pa.large_string()) for p in fast] +
                                         [pa.array(py, pa.large_string())])
        else:
            out[name] = np.concatenate([np.asarray(p[name], np.int64) for p in fast] +
                                       [np.asarray(py, np.int64).reshape(-1)])
    return out


def _hosts(col: pa.Array, at_start: np.ndarray, known: set[str]) -> tuple[pa.Array, np.ndarray]:
    """Host names cleaned of glued junk (see `clean_host`), and a small-int code per row."""
    enc = pc.dictionary_encode(col, null_encoding="encode")
    vals = enc.dictionary.to_pylist()
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    known |= {vals[i] for i in np.unique(idx[at_start])} - {None}
    cleaned = [clean_host(v, known) for v in vals]
    codes = {h: i for i, h in enumerate(dict.fromkeys(cleaned))}
    lut = np.array([codes[h] for h in cleaned], np.int64)
    return pa.array(cleaned, pa.large_string()).take(enc.indices), lut[idx]


def _ints(v: list) -> list:
    return [-1 if x is None else int(x) for x in v]


def _thread(host: np.ndarray, pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """One int64 per thread; the process (host, pid) is everything above bit 22."""
    mask = (1 << 22) - 1
    return (host << 44) | ((pid & mask) << 22) | (tid & mask)


def collectives_table(fast_c: list[dict], fast_t: list[dict], parser: Any,
                      files: list[str]) -> pd.DataFrame:
    """The `collectives` table (without rank/pg_size/bytes/nccl_seq), in log order."""
    c_names = ["op_code", "op_count", "sendbuff", "recvbuff", "count", "dtype_code", "redop",
               "root", "comm", "nranks", "stream", "host", "pid", "tid", "device", "file_idx",
               "line", "sub"]
    op_codes = lambda v: _op_codes(v).tolist()  # noqa: E731
    c = _columns(fast_c, parser.coll_rows(), c_names, {
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
    hosts, host_code = _hosts(pa.concat_arrays([c["host"], t["host"]]), at_start, parser.hosts)
    c["host"], t["host"] = hosts[:n_c], hosts[n_c:]
    # Log order: file, line, record within the line.
    c_order = (c["file_idx"] << 40) | (c["line"] << 8) | c["sub"]
    perm = np.argsort(c_order, kind="stable")
    c = {k: (v.take(pa.array(perm)) if isinstance(v, pa.Array) else v[perm]) for k, v in c.items()}
    c_code = host_code[:n_c][perm]
    c_order = c_order[perm]
    t_order = (t["file_idx"] << 40) | (t["line"] << 8) | t["sub"]

    dt = c["dtype_code"]
    esize_lut = np.full(max(int(dt.max(initial=0)) + 1, len(DTYPES)), -1, np.int64)
    for code, (_, size) in DTYPES.items():
        esize_lut[code] = size
    esize = esize_lut[dt]
    b1 = np.where(esize > 0, c["count"] * esize, -1)
    # Gathers' tuning lines count every rank's part (count x elem x nranks), sometimes.
    gather = np.isin(c["op_code"], _GATHER_CODES)
    b2 = np.where((esize > 0) & (c["nranks"] > 1) & gather, b1 * c["nranks"], -1)
    comm = pc.dictionary_encode(c["comm"], null_encoding="encode").indices
    tix = attach_tuning(_thread(c_code, c["pid"], c["tid"]), c_order, c["op_code"], b1, b2,
                        comm.to_numpy(zero_copy_only=False).astype(np.int64),
                        _thread(host_code[n_c:], t["pid"], t["tid"]), t_order, t["op_code"],
                        t["nbytes"])
    tuned = tix >= 0
    take = pa.array(np.where(tuned, tix, 0), mask=~tuned)
    if n_t == 0:  # nothing to take from: all null
        t = {"algo": pa.nulls(1, pa.large_string()), "proto": pa.nulls(1, pa.large_string()),
             "channels": np.full(1, -1)}
    chans = t["channels"][np.where(tuned, tix, 0)]

    op = _TORCH_OPS.take(pa.array(c["op_code"]))
    p2p = pc.is_in(op, value_set=_P2P).to_numpy(zero_copy_only=False)
    rooted = pc.is_in(op, value_set=_ROOTED).to_numpy(zero_copy_only=False)
    dnames = pa.array([DTYPES.get(i, (f"nccl_type_{i}", None))[0] for i in range(len(esize_lut))])
    n_redops = max(int(c["redop"].max(initial=0)) + 1, 5)
    rnames = pa.array([REDOPS.get(i, f"premul_{i}") for i in range(n_redops)])
    redop = pc.if_else(pa.array(p2p), pa.scalar(None, pa.string()),
                       rnames.take(pa.array(c["redop"])))
    cols = {
        "op": op, "nccl_op": NCCL_OPS.take(pa.array(c["op_code"])), "op_count": c["op_count"],
        "count": c["count"], "dtype": dnames.take(pa.array(dt)),
        "elem_bytes": pa.array(esize, mask=esize < 0), "redop": redop,
        "root": pa.array(c["root"], mask=~rooted), "peer": pa.array(c["root"], mask=~p2p),
        "comm": c["comm"], "nranks": pa.array(c["nranks"], mask=c["nranks"] < 0),
        "stream": c["stream"], "sendbuff": c["sendbuff"], "recvbuff": c["recvbuff"],
        "host": c["host"], "pid": pa.array(c["pid"], mask=c["pid"] < 0),
        "tid": pa.array(c["tid"], mask=c["tid"] < 0),
        "device": pa.array(c["device"], mask=c["device"] < 0),
        "algo": t["algo"].take(take), "proto": t["proto"].take(take),
        "channels": pa.array(chans, mask=~tuned | (chans < 0)),
        "source": pa.array(files, pa.large_string()).take(pa.array(c["file_idx"])),
        "line": c["line"],
    }
    table = pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v, pa.int64()))
                      for k, v in cols.items()})
    return table.to_pandas(types_mapper=_INT_MAP)


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


def join_ranks(colls: pd.DataFrame, comms: pd.DataFrame) -> pd.DataFrame:
    """Add rank, pg_size, bytes (nccl-tests S) and a per-communicator sequence number."""
    if colls.empty:
        for c in ("rank", "pg_size", "bytes", "nccl_seq"):
            colls[c] = pd.Series(dtype="Int64")
        return colls
    key = comms[["host", "pid", "comm", "rank", "nranks"]].rename(columns={"nranks": "_n"})
    key = key.astype({"pid": "Int64", "rank": "Int64", "_n": "Int64"})
    key["host"] = key["host"].astype(colls["host"].dtype)
    key["comm"] = key["comm"].astype(colls["comm"].dtype)
    colls = colls.merge(key, on=["host", "pid", "comm"], how="left", sort=False)
    colls["pg_size"] = colls["nranks"].fillna(colls.pop("_n")).astype("Int64")
    mult = colls["pg_size"].where(colls["op"].isin(GATHER_LIKE), 1).astype("Int64")
    colls["bytes"] = colls["count"] * colls["elem_bytes"] * mult
    colls["nccl_seq"] = colls.groupby(["host", "pid", "comm"], dropna=False,
                                      sort=False).cumcount().astype("int64")
    return colls
