"""Where the members of a process group disagreed: the usual cause of hangs.

For each group, walk pg_seq upward; at each position every member should have issued the same
op with the same bytes and dtype. The first position where they do not, or where a member has no
call at all while others do, is reported with the ranks involved and expected vs observed.
"""

from __future__ import annotations

import os

import pandas as pd

__all__ = ["find_mismatches"]

_COLUMNS = ["run_id", "pg_name", "pg_seq", "kind", "ranks", "expected", "observed", "pg_ranks",
            "detail"]


def _sig(row: pd.Series) -> str:
    return f"{row['op']} {row['bytes']} B {row['dtype']}"


def find_mismatches(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """First disagreement per process group (collectives only; p2p is per pair).

    kind: 'missing' (ranks that never issued the call at pg_seq: hung or exited), 'op', 'bytes'
    or 'dtype'. `ranks` lists the odd ones out, `expected` the majority's call, `observed`
    theirs, `pg_ranks` the group's members. `events` may be a trace path: DuckDB then screens
    every instance out of core and only the first suspicious one per group is loaded.
    """
    if isinstance(events, (str, os.PathLike)):
        from ._engine import mismatch_candidates_sql

        events = mismatch_candidates_sql(events)
    ev = events[~events["op"].isin(["send", "recv"])]
    out = []
    by = [c for c in ("run_id", "pg_name") if c in ev]
    for key, g in ev.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        first_ranks = g["pg_ranks"].iloc[0] if "pg_ranks" in g else None
        members = sorted(int(r) for r in (first_ranks if first_ranks is not None
                                          else g["rank"].unique()))
        # Vectorised screen: instances with fewer calls than members or several signatures.
        sig = g["op"].astype(str) + " " + g["bytes"].astype(str) + " B " + g["dtype"].astype(str)
        stats = pd.DataFrame({"pg_seq": g["pg_seq"], "sig": sig, "rank": g["rank"]}) \
            .groupby("pg_seq").agg(n=("rank", "nunique"), sigs=("sig", "nunique"))
        bad = stats[(stats["n"] < len(members)) | (stats["sigs"] > 1)]
        if bad.empty:
            continue
        seq = bad.index.min()
        inst = g[g["pg_seq"] == seq]
        seen = {int(r): row for r, row in zip(inst["rank"], inst.to_dict("records"))}
        missing = [r for r in members if r not in seen]
        sigs = {r: _sig(row) for r, row in seen.items()}
        majority = pd.Series(list(sigs.values())).mode().iloc[0]
        odd = sorted(r for r, s in sigs.items() if s != majority)
        rec = dict(zip(by, key))
        if missing:
            rec.update(pg_seq=int(seq), kind="missing", ranks=missing, expected=majority,
                       observed="no call", detail=f"ranks {missing} never issued call "
                       f"#{seq} ({majority}) of group {rec.get('pg_name')}: they hung, "
                       f"exited or took another path")
        else:
            first = seen[odd[0]]
            ref = next(row for r, row in seen.items() if sigs[r] == majority)
            kind = next(k for k in ("op", "bytes", "dtype") if first[k] != ref[k])
            rec.update(pg_seq=int(seq), kind=kind, ranks=odd, expected=majority,
                       observed=sigs[odd[0]], detail=f"ranks {odd} issued {sigs[odd[0]]} "
                       f"where the others issued {majority}")
        rec["pg_ranks"] = members
        out.append(rec)
    df = pd.DataFrame(out)
    for c in _COLUMNS:
        if c not in df:
            df[c] = None
    return df[_COLUMNS]
