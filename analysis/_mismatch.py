"""Where the members of a process group disagreed: the usual cause of hangs.

For each group, walk pg_seq upward; at each position every member should have issued the same
op with the same bytes and dtype. The first position where they do not, or where a member has no
call at all while others do, is reported with the ranks involved and expected vs observed.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["find_mismatches"]

_COLUMNS = ["run_id", "pg_name", "pg_seq", "kind", "ranks", "expected", "observed", "pg_ranks",
            "detail"]


def _sig(row: pd.Series) -> str:
    return f"{row['op']} {row['bytes']} B {row['dtype']}"


def find_mismatches(events: pd.DataFrame) -> pd.DataFrame:
    """First disagreement per process group (collectives only; p2p is per pair).

    kind: 'missing' (ranks that never issued the call at pg_seq: hung or exited), 'op', 'bytes'
    or 'dtype'. `ranks` lists the odd ones out, `expected` the majority's call, `observed`
    theirs, `pg_ranks` the group's members.
    """
    ev = events[~events["op"].isin(["send", "recv"])]
    out = []
    by = [c for c in ("run_id", "pg_name") if c in ev]
    for key, g in ev.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        members = list(g["pg_ranks"].iloc[0]) if "pg_ranks" in g and \
            g["pg_ranks"].iloc[0] is not None else sorted(g["rank"].unique())
        members = [int(r) for r in members]
        # Ranks present in the trace at all: a member that recorded nothing is reported too.
        for seq, inst in g.groupby("pg_seq", sort=True):
            seen = {int(r): row for r, row in zip(inst["rank"], inst.to_dict("records"))}
            missing = [r for r in members if r not in seen]
            sigs = {r: _sig(row) for r, row in seen.items()}
            majority = pd.Series(list(sigs.values())).mode().iloc[0]
            odd = sorted(r for r, s in sigs.items() if s != majority)
            if not missing and not odd:
                continue
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
            break
    df = pd.DataFrame(out)
    for c in _COLUMNS:
        if c not in df:
            df[c] = None
    return df[_COLUMNS]
