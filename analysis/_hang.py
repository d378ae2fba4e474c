"""Which ranks caused a hang, from imported Flight Recorder dumps.

A dump's ring holds only recent (often only in-flight) entries, so `find_mismatches` (which
expects every call from the start) would call the ranks that already *completed* a collective
"missing". Here each group is judged on how far each member got:

- not issued: a member's last enqueued collective is behind the others' (or its dump holds no
  entry of the group while the others wait in one) - it never reached the collective
  (NVIDIA's attribution tool reports only this);
- not completed: a member issued as far as the others but its last *completed* collective
  (`pg_status`, kept in metadata.json) is behind theirs - its GPU stopped making progress.
  A GPU fault shows this way: the CPU keeps enqueueing, nothing completes.
"""

from __future__ import annotations

import os

import pandas as pd

from ._mismatch import _sig
from ._trace import Trace

__all__ = ["attribute_hang"]

_COLUMNS = ["pg_name", "pg_desc", "kind", "ranks", "pg_seq", "expected", "pg_ranks", "detail"]


def attribute_hang(trace: str | os.PathLike) -> pd.DataFrame:
    """Per process group, the ranks that never issued or never completed the collective the
    other members are waiting in. `trace`: a run imported from Flight Recorder dumps.

    Columns: pg_name, pg_desc, kind ('not_issued' | 'not_completed' | 'no_dump'), ranks,
    pg_seq (the first collective concerned), expected (op, bytes, dtype the others issued),
    pg_ranks, detail (why, in words). `df.attrs['faulted_ranks']` is the union of the ranks.
    """
    with Trace(trace) as t:
        ev = t.events(columns=["rank", "op", "pg_name", "pg_seq", "api", "bytes", "dtype"])
        metas = {int(m["rank"]): m for m in t.metadata}
    coll = ev[~ev["op"].isin(["send", "recv"]) & ev["op"].notna()]
    p2p_groups = set(ev.loc[ev["op"].isin(["send", "recv"]), "pg_name"])
    cfg: dict[str, dict] = {}
    for m in metas.values():
        cfg.update((m.get("flight_recorder") or {}).get("pg_config") or {})
    out = []
    for g, info in sorted(cfg.items(), key=lambda kv: kv[0]):
        members = [int(r) for r in info.get("ranks") or []]
        rows = coll[coll["pg_name"] == g]
        if len(members) < 2 or rows.empty:
            continue
        enq = rows.groupby("rank")["pg_seq"].max().to_dict()
        top = max(enq.values())
        desc = info.get("desc")
        absent = [r for r in members if r not in metas]
        if absent:
            out.append(dict(pg_name=g, pg_desc=desc, kind="no_dump", ranks=absent, pg_seq=None,
                            expected=None, pg_ranks=members,
                            detail=f"no dump for ranks {absent}: nothing can be said about them"))
        behind = [r for r in members if r in metas and enq.get(r, -1) < top]
        if behind:
            first = min(enq.get(r, -1) for r in behind) + 1
            want = rows[rows["pg_seq"] >= first].sort_values("pg_seq")
            seq = int(want["pg_seq"].iloc[0])
            empty = [r for r in behind if r not in enq]
            why = (f"; the dumps of {empty} hold no entry of this group at all" if empty else "")
            out.append(dict(pg_name=g, pg_desc=desc, kind="not_issued", ranks=behind,
                            pg_seq=seq, expected=_sig(want.iloc[0], "api"), pg_ranks=members,
                            detail=f"ranks {behind} never issued collective #{seq} of group "
                                   f"{g} ({desc}) that the others issued{why}"))
        if g in p2p_groups:
            continue   # pg_status collective counters are not comparable where p2p runs
        done = {r: (metas[r].get("flight_recorder") or {}).get("pg_status", {}).get(g, {})
                .get("last_completed_collective") for r in members if r in metas}
        done = {r: int(v) for r, v in done.items() if v is not None}
        if len(done) < 2:
            continue
        best = max(done.values())
        slow = [r for r, v in done.items() if v < best and r not in behind]
        if slow:
            seq = min(done[r] for r in slow) + 1
            ahead = sorted(r for r, v in done.items() if v == best)
            want = rows[rows["pg_seq"] == seq]
            out.append(dict(pg_name=g, pg_desc=desc, kind="not_completed", ranks=sorted(slow),
                            pg_seq=seq, expected=_sig(want.iloc[0], "api") if len(want) else None,
                            pg_ranks=members,
                            detail=f"ranks {sorted(slow)} issued as far as their peers but their "
                                   f"last completed collective of group {g} ({desc}) is "
                                   f"{min(done[r] for r in slow)} while ranks {ahead} completed "
                                   f"up to {best}: their GPU stopped making progress (an "
                                   f"enqueue-only attribution cannot see this)"))
    df = pd.DataFrame(out, columns=_COLUMNS)
    faulted = sorted({int(r) for rs, k in zip(df["ranks"], df["kind"]) if k != "no_dump"
                      for r in rs})
    df.attrs["faulted_ranks"] = faulted
    empty = sorted(r for r, m in metas.items()
                   if (m.get("flight_recorder") or {}).get("entries") == 0)
    df.attrs["empty_dumps"] = empty
    return df
