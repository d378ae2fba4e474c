"""Cross-rank matching: one row per logical collective, transfer time vs waiting, stragglers.

Times are clock-aligned by `load_events` (each rank's offset to rank 0 subtracted). For one
collective instance (pg_name, pg_seq) on n ranks:
  start_skew_ns = latest start - earliest start (how late the last rank arrived),
  transfer_ns   = earliest end - latest start, clipped at 0: no rank can finish before the last
                  one arrived, so this is the time data was moving once everyone was there,
  wait_ns (per rank) = latest start - this rank's start: time spent waiting for late ranks.
Point-to-point: the k-th send A->B on a group pairs with the k-th recv on B from A (pg_seq).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ._bandwidth import _gbps, bus_factor

__all__ = ["match_collectives", "collective_waits", "stragglers", "row_waits"]

_P2P = ("send", "recv")


def _collectives(events: pd.DataFrame) -> pd.DataFrame:
    ev = events[~events["op"].isin(_P2P)]
    keys = [c for c in ("run_id", "pg_name", "pg_seq") if c in ev]
    return ev, keys


def collective_waits(events: pd.DataFrame) -> pd.DataFrame:
    """Per (collective instance, rank): start, end, and wait_ns (latest start - own start)."""
    ev, keys = _collectives(events)
    cols = keys + ["rank", "op", "bytes", "t_start_ns", "t_end_ns"]
    w = ev[cols].copy()
    latest = w.groupby(keys)["t_start_ns"].transform("max")
    w["wait_ns"] = (latest - w["t_start_ns"]).astype("Int64")
    return w.reset_index(drop=True)


def row_waits(events: pd.DataFrame) -> pd.Series:
    """Per event (aligned to `events.index`): time it waited for the last participant to
    arrive (latest start of its collective instance or send/recv pair - its own start)."""
    keys = [c for c in ("run_id", "pg_name", "pg_seq") if c in events]
    coll = ~events["op"].isin(_P2P)
    wait = pd.Series(0, index=events.index, dtype="Int64")
    latest = events[coll].groupby(keys)["t_start_ns"].transform("max")
    wait[coll] = latest - events.loc[coll, "t_start_ns"]
    base = [c for c in ("run_id", "pg_name") if c in events]
    send = events[events["op"] == "send"]
    recv = events[events["op"] == "recv"]
    src = pd.concat([send["rank"], recv["peer"]]).astype("Int64")
    dst = pd.concat([send["peer"], recv["rank"]]).astype("Int64")
    p2p = pd.concat([send, recv])
    if len(p2p):
        pair = pd.DataFrame({**{c: p2p[c] for c in base}, "src": src, "dst": dst,
                             "pg_seq": p2p["pg_seq"], "t": p2p["t_start_ns"]})
        pl = pair.groupby(base + ["src", "dst", "pg_seq"])["t"].transform("max")
        wait[p2p.index] = pl - p2p["t_start_ns"]
    return wait


def match_collectives(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """One row per logical collective (pg_name, pg_seq) and per matched send/recv pair.

    `events` may be a trace path: then DuckDB computes it out of core (for huge traces).

    Columns: run_id, pg_name, pg_seq, op, bytes, pg_size, ranks_seen, t_first_start_ns,
    t_last_start_ns, start_skew_ns, last_rank, transfer_ns, algbw_GBps, busbw_GBps (from
    transfer_ns), phase, step. For send/recv pairs, `op` is 'send', ranks_seen 2, `last_rank`
    the side that arrived last, `pg_seq` the pair ordinal, plus `src` and `dst`.
    """
    if isinstance(events, (str, os.PathLike)):
        from ._engine import match_collectives_sql

        return match_collectives_sql(events)
    ev, keys = _collectives(events)
    g = ev.sort_values("t_start_ns").groupby(keys, sort=False)
    out = g.agg(op=("op", "first"), bytes=("bytes", "max"), pg_size=("pg_size", "first"),
                ranks_seen=("rank", "nunique"), t_first_start_ns=("t_start_ns", "min"),
                t_last_start_ns=("t_start_ns", "max"), t_first_end_ns=("t_end_ns", "min"),
                last_rank=("rank", "last"), phase=("phase", "first"), step=("step", "first"))
    out = out.reset_index()
    out["src"] = pd.array([None] * len(out), dtype="Int64")
    out["dst"] = pd.array([None] * len(out), dtype="Int64")
    pairs = _match_p2p(events)
    if len(pairs):
        out = pd.concat([out, pairs], ignore_index=True)
    out["start_skew_ns"] = (out["t_last_start_ns"] - out["t_first_start_ns"]).astype("Int64")
    transfer = (out["t_first_end_ns"] - out["t_last_start_ns"]).astype("float64")
    out["transfer_ns"] = pd.array(np.clip(transfer.to_numpy(), 0, None), dtype="Int64")
    out["algbw_GBps"] = _gbps(out["bytes"], out["transfer_ns"])
    out["busbw_GBps"] = out["algbw_GBps"] * bus_factor(out["op"], out["pg_size"])
    cols = keys + ["op", "bytes", "pg_size", "ranks_seen", "t_first_start_ns", "t_last_start_ns",
                   "start_skew_ns", "last_rank", "transfer_ns", "algbw_GBps", "busbw_GBps",
                   "phase", "step", "src", "dst"]
    return out[cols].sort_values(keys).reset_index(drop=True)


def _match_p2p(events: pd.DataFrame) -> pd.DataFrame:
    base = [c for c in ("run_id", "pg_name") if c in events]
    s = events[events["op"] == "send"].rename(columns={"rank": "src", "peer": "dst"})
    r = events[events["op"] == "recv"].rename(columns={"rank": "dst", "peer": "src"})
    if s.empty or r.empty:
        return pd.DataFrame()
    m = s.merge(r, on=base + ["src", "dst", "pg_seq"], suffixes=("_s", "_r"))
    if m.empty:
        return pd.DataFrame()
    send_late = m["t_start_ns_s"] >= m["t_start_ns_r"]
    return pd.DataFrame({
        **{c: m[c] for c in base}, "pg_seq": m["pg_seq"], "op": "send", "bytes": m["bytes_s"],
        "pg_size": 2, "ranks_seen": 2,
        "t_first_start_ns": np.minimum(m["t_start_ns_s"], m["t_start_ns_r"]),
        "t_last_start_ns": np.maximum(m["t_start_ns_s"], m["t_start_ns_r"]),
        "t_first_end_ns": np.minimum(m["t_end_ns_s"], m["t_end_ns_r"]),
        "last_rank": np.where(send_late, m["src"], m["dst"]),
        "phase": m["phase_s"], "step": m["step_s"],
        "src": m["src"].astype("Int64"), "dst": m["dst"].astype("Int64"),
    })


def stragglers(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Per rank: how often it arrived last at a collective, the total wait it imposed on the
    other ranks (sum of their wait_ns at those instances) and the total time it waited itself.

    Columns: rank, collectives, times_last, wait_imposed_ns, wait_total_ns, share_last; sorted
    with the worst straggler first. Instances with a start skew of 0 have no straggler.
    `events` may be a trace path (DuckDB, out of core).
    """
    if isinstance(events, (str, os.PathLike)):
        from ._engine import stragglers_sql

        return stragglers_sql(events)
    w = collective_waits(events)
    _, keys = _collectives(events)
    if w.empty:
        return pd.DataFrame(columns=["rank", "collectives", "times_last", "wait_imposed_ns",
                                     "wait_total_ns", "share_last"])
    inst = w.groupby(keys).agg(total_wait=("wait_ns", "sum"), ranks=("rank", "nunique"))
    last_idx = w.loc[w.groupby(keys)["t_start_ns"].idxmax()]
    last = last_idx.set_index(keys)[["rank"]].join(inst)
    last = last[(last["ranks"] > 1) & (last["total_wait"] > 0)]
    imposed = last.groupby("rank").agg(times_last=("total_wait", "size"),
                                       wait_imposed_ns=("total_wait", "sum"))
    per = w.groupby("rank").agg(collectives=("wait_ns", "size"), wait_total_ns=("wait_ns", "sum"))
    out = per.join(imposed).fillna({"times_last": 0, "wait_imposed_ns": 0}).reset_index()
    out["times_last"] = out["times_last"].astype("int64")
    out["wait_imposed_ns"] = out["wait_imposed_ns"].astype("int64")
    out["wait_total_ns"] = out["wait_total_ns"].astype("int64")
    out["share_last"] = out["times_last"] / out["collectives"]
    cols = ["rank", "collectives", "times_last", "wait_imposed_ns", "wait_total_ns", "share_last"]
    return out[cols].sort_values(["wait_imposed_ns", "rank"], ascending=[False, True]) \
        .reset_index(drop=True)
