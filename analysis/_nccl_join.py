"""Join a commscope trace with the NCCL logs of the same run.

Per process (host, pid), each NCCL communicator's collective sequence is aligned with each
process group's sequence of recorded calls (same op and bytes, in order). The group that aligns
best is the communicator's group. Calls seen by both get NCCL's algorithm and protocol; calls seen
only by NCCL bypassed torch.distributed (custom kernels, ctypes NCCL); calls seen only by the
hooks never reached this NCCL communicator (other backends, or NCCL lines not logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["NcclJoin", "join_nccl"]

_WINDOW = 1024


@dataclass
class NcclJoin:
    """Result of `join_nccl`.

    events: the trace events with `nccl_comm`, `nccl_seq`, `nccl_algo`, `nccl_proto` added
        (null where the call was not matched);
    coverage: per (host, pid, pg_name, nccl_comm): `both`, `nccl_only`, `hooks_only` counts;
    nccl_only: NCCL collectives no trace event matched (traffic that bypassed the hooks);
    hooks_only: trace events with no NCCL record.
    """

    events: pd.DataFrame
    coverage: pd.DataFrame
    nccl_only: pd.DataFrame
    hooks_only: pd.DataFrame


def _short_host(hosts: pd.Series) -> pd.Series:
    """Host names up to the first '.' (how NCCL prints them)."""
    return hosts.astype(object).where(hosts.isna(), hosts.astype(str).str.split(".", n=1).str[0])


def _keys(ops: Any, nbytes: Any, counts: Any) -> list[tuple]:
    """(op, bytes) per call; a barrier and any 1-element all_reduce share one key, since torch
    runs barrier on NCCL as a 1-element all_reduce (of a dtype the trace does not know)."""
    counts = [None] * len(ops) if counts is None else counts
    out = []
    for op, b, c in zip(ops, nbytes, counts):
        if op == "barrier" or (op == "all_reduce" and not pd.isna(c) and c == 1):
            out.append(("all_reduce", "1-element"))
        else:
            out.append((op, None if pd.isna(b) else int(b)))
    return out


def _lcs_pairs(a: list, b: list) -> list[tuple[int, int]]:
    """A longest common subsequence of a and b as index pairs (numpy DP, one row at a time:
    row[j] = max(prev[j], prev[j-1] + eq, row[j-1]), the last term a running maximum)."""
    codes: dict = {}
    ca = np.array([codes.setdefault(x, len(codes)) for x in a], dtype=np.int64)
    cb = np.array([codes.setdefault(x, len(codes)) for x in b], dtype=np.int64)
    n, m = len(ca), len(cb)
    table = np.zeros((n + 1, m + 1), dtype=np.int32)
    for i in range(1, n + 1):
        prev = table[i - 1]
        cand = np.maximum(prev[1:], prev[:-1] + (cb == ca[i - 1]))
        table[i, 1:] = np.maximum.accumulate(cand)
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        if ca[i - 1] == cb[j - 1] and table[i, j] == table[i - 1, j - 1] + 1:
            pairs.append((i - 1, j - 1))
            i -= 1
            j -= 1
        elif table[i - 1, j] >= table[i, j - 1]:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def _align(trace_keys: list[tuple], nccl_keys: list[tuple]) -> list[tuple[int, int]]:
    """Pairs (i, j) of equal keys in order, skipping calls present on one side only.

    A longest common subsequence, computed in windows of `_WINDOW` calls so memory and time stay
    linear in the run length; each window restarts after the previous window's last match
    within its first half, which keeps long runs aligned.
    """
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < len(trace_keys) and j < len(nccl_keys):
        a = trace_keys[i:i + _WINDOW]
        b = nccl_keys[j:j + _WINDOW]
        found = _lcs_pairs(a, b)
        last = len(a) < _WINDOW and len(b) < _WINDOW
        keep = found if last else [p for p in found if p[0] < _WINDOW // 2
                                   and p[1] < _WINDOW // 2] or found[:1]
        if not keep:
            i += len(a) // 2 or 1
            j += len(b) // 2 or 1
            continue
        pairs += [(i + x, j + y) for x, y in keep]
        if last:
            break
        i += keep[-1][0] + 1
        j += keep[-1][1] + 1
    return pairs


def join_nccl(events: pd.DataFrame, nccl_log: Any) -> NcclJoin:
    """Match trace events with NCCL log collectives of the same processes (see module doc)."""
    colls = nccl_log.collectives if hasattr(nccl_log, "collectives") else nccl_log
    ev = events.copy()
    for c in ("nccl_comm", "nccl_algo", "nccl_proto"):
        ev[c] = pd.Series([None] * len(ev), index=ev.index, dtype=object)
    ev["nccl_seq"] = pd.array([None] * len(ev), dtype="Int64")
    matched_nccl: set[int] = set()
    coverage = []
    # NCCL prints the host name cut at the first '.'; traces keep the full name.
    nccl_host = _short_host(colls["host"])
    ev_host = _short_host(ev["host"])
    for (short, pid), tr in ev.groupby([ev_host, "pid"], sort=False):
        host = tr["host"].iloc[0]
        nc = colls[(nccl_host == short) & (colls["pid"] == pid)]
        groups = {name: g.sort_values("seq") for name, g in tr.groupby("pg_name")}
        keys = {name: _keys(g["op"], g["bytes"], g.get("count", None))
                for name, g in groups.items()}
        taken: set[str] = set()
        for comm, cg in sorted(nc.groupby("comm"), key=lambda kv: -len(kv[1])):
            cg = cg.sort_values("nccl_seq")
            ck = _keys(cg["op"], cg["bytes"], cg["count"])
            best, best_pairs = None, []
            for name, tk in keys.items():
                if name in taken:
                    continue
                size = groups[name]["pg_size"].iloc[0]
                if pd.notna(cg["pg_size"].iloc[0]) and size != cg["pg_size"].iloc[0]:
                    continue
                pairs = _align(tk, ck)
                if len(pairs) > len(best_pairs):
                    best, best_pairs = name, pairs
            if best is None:
                coverage.append(dict(host=host, pid=pid, pg_name=None, nccl_comm=comm, both=0,
                                     nccl_only=len(cg), hooks_only=0))
                continue
            taken.add(best)
            g = groups[best]
            for i, j in best_pairs:
                idx = g.index[i]
                row = cg.iloc[j]
                ev.at[idx, "nccl_comm"] = comm
                ev.at[idx, "nccl_seq"] = int(row["nccl_seq"])
                ev.at[idx, "nccl_algo"] = row["algo"]
                ev.at[idx, "nccl_proto"] = row["proto"]
                matched_nccl.add(cg.index[j])
            coverage.append(dict(host=host, pid=pid, pg_name=best, nccl_comm=comm,
                                 both=len(best_pairs), nccl_only=len(cg) - len(best_pairs),
                                 hooks_only=len(g) - len(best_pairs)))
        for name in set(groups) - taken:
            coverage.append(dict(host=host, pid=pid, pg_name=name, nccl_comm=None, both=0,
                                 nccl_only=0, hooks_only=len(groups[name])))
    trace_procs = set(zip(ev_host, ev["pid"]))
    for (host, short, pid, comm), cg in colls.groupby([colls["host"], nccl_host.rename("short"),
                                                        "pid", "comm"]):
        if (short, pid) not in trace_procs:
            coverage.append(dict(host=host, pid=pid, pg_name=None, nccl_comm=comm, both=0,
                                 nccl_only=len(cg), hooks_only=0))
    cov = pd.DataFrame(coverage, columns=["host", "pid", "pg_name", "nccl_comm", "both",
                                          "nccl_only", "hooks_only"])
    return NcclJoin(ev, cov, colls[~colls.index.isin(matched_nccl)], ev[ev["nccl_comm"].isna()])
