"""Where the members of a process group disagreed: the usual cause of hangs.

For each group, walk pg_seq upward; at each position every member should have issued the same
op with the same bytes and dtype. DuckDB screens every instance (fewer callers than members, or
several signatures) and returns only the rows of the first suspicious instance per group; the
explanation below runs on those few rows.

Who is to blame: ranks that never issued the call ('missing'), or the minority whose call
differs from the majority's. When no signature has a majority (two ranks of a 2-rank group
disagreeing, or an even split) nobody is invented as the culprit: the row says which ranks saw
what and, where the calls were timed, who arrived last and how long the others waited for it.
"""

from __future__ import annotations

import os
from collections import Counter

import pandas as pd

__all__ = ["find_mismatches"]

_COLUMNS = ["run_id", "pg_name", "pg_seq", "kind", "ranks", "expected", "observed", "pg_ranks",
            "detail", "observed_by", "suspect_ranks"]

_CANDIDATES = """
WITH c AS (SELECT * FROM events WHERE op NOT IN ('send', 'recv')),
grp AS (SELECT run_id, pg_name, list(DISTINCT rank ORDER BY rank) AS seen_ranks,
               max(len(pg_ranks)) AS members
        FROM c GROUP BY ALL),
inst AS (
  SELECT run_id, pg_name, pg_seq, count(DISTINCT rank) AS n,
         count(DISTINCT op || ' ' || coalesce(bytes::VARCHAR, '') || ' ' ||
               coalesce(dtype, '')) AS sigs
  FROM c GROUP BY ALL),
first_bad AS (
  SELECT i.run_id, i.pg_name, min(i.pg_seq) AS pg_seq
  FROM inst i JOIN grp g ON i.run_id IS NOT DISTINCT FROM g.run_id
                        AND i.pg_name IS NOT DISTINCT FROM g.pg_name
  WHERE i.n < coalesce(g.members, len(g.seen_ranks)) OR i.sigs > 1 GROUP BY ALL)
SELECT c.run_id, c.pg_name, c.pg_seq, c.rank, c.op, c.bytes, c.dtype, c.pg_ranks,
       c.t0_ns AS t_arrive_ns, c.has_device, c.error, c.completion, g.seen_ranks
FROM c JOIN first_bad f ON c.run_id IS NOT DISTINCT FROM f.run_id
                       AND c.pg_name IS NOT DISTINCT FROM f.pg_name AND c.pg_seq = f.pg_seq
JOIN grp g ON c.run_id IS NOT DISTINCT FROM g.run_id AND c.pg_name IS NOT DISTINCT FROM g.pg_name
ORDER BY c.run_id, c.pg_name, c.rank"""


def _sig(row: dict | pd.Series, call: str = "op") -> str:
    """A call as text: `call` (the op, or e.g. the api), bytes and dtype."""
    nbytes = row["bytes"]
    nbytes = "<NA>" if nbytes is None or pd.isna(nbytes) else int(nbytes)
    return f"{row[call]} {nbytes} B {row['dtype']}"


def _ranks_text(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks}"


def _timing(seen: dict[int, dict]) -> tuple[list[int], str]:
    """Who arrived last at the instance (the others waited for it), if the calls were timed
    on one basis and arrivals differ."""
    t = {r: row["t_arrive_ns"] for r, row in seen.items() if not pd.isna(row["t_arrive_ns"])}
    if len(t) < 2 or len(t) < len(seen) or len({bool(row["has_device"]) for row in seen.values()}) > 1:
        return [], ""
    latest = max(t.values())
    if latest == min(t.values()):
        return [], ""
    last = sorted(r for r, v in t.items() if v == latest)
    waited = {r: latest - v for r, v in t.items() if v < latest}
    first = max(waited, key=lambda r: waited[r])
    basis = "device" if next(iter(seen.values()))["has_device"] else "host"
    return last, (f"; {_ranks_text(last)} arrived last ({basis} time): rank {first} waited "
                  f"{waited[first] / 1e6:.3f} ms for it, so {_ranks_text(last)} is the likelier "
                  f"one to have diverged")


def _explain(g: pd.DataFrame) -> dict:
    rows = g.to_dict("records")
    first = rows[0]
    seq = int(first["pg_seq"])
    pg_ranks = first["pg_ranks"]
    members = sorted(int(r) for r in (pg_ranks if pg_ranks is not None and len(pg_ranks)
                                      else first["seen_ranks"]))
    seen = {int(r["rank"]): r for r in rows}
    sigs = {r: _sig(row) for r, row in seen.items()}
    counts = Counter(sigs.values())
    top = max(counts.values())
    leaders = sorted(s for s, n in counts.items() if n == top)
    by_sig = {s: sorted(r for r in sigs if sigs[r] == s) for s in counts}
    observed_by = "; ".join(f"{_ranks_text(rs)}: {s}" for s, rs in
                            sorted(by_sig.items(), key=lambda kv: kv[1]))
    rec = {"run_id": first["run_id"], "pg_name": first["pg_name"], "pg_seq": seq,
           "pg_ranks": members, "observed_by": observed_by}
    missing = [r for r in members if r not in seen]
    group = rec["pg_name"]
    if missing:
        rec.update(kind="missing", ranks=missing, expected=leaders[0], observed="no call",
                   suspect_ranks=missing,
                   detail=f"{_ranks_text(missing)} never issued call #{seq} ({leaders[0]}) of "
                          f"group {group}: they hung, exited or took another path")
        return rec
    if len(leaders) == 1:
        majority = leaders[0]
        odd = sorted(r for r, s in sigs.items() if s != majority)
        ref = seen[by_sig[majority][0]]
        kind = next(k for k in ("op", "bytes", "dtype") if str(seen[odd[0]][k]) != str(ref[k]))
        rec.update(kind=kind, ranks=odd, expected=majority, observed=sigs[odd[0]],
                   suspect_ranks=odd,
                   detail=f"{_ranks_text(odd)} issued {sigs[odd[0]]} where the others issued "
                          f"{majority}")
        return rec
    # No majority: say who saw what; blame only what timing supports.
    a, b = (seen[by_sig[s][0]] for s in leaders[:2])
    kind = next(k for k in ("op", "bytes", "dtype") if str(a[k]) != str(b[k]))
    involved = sorted(seen)
    last, why = _timing(seen)
    rec.update(kind=kind, ranks=involved, expected=None, observed=observed_by,
               suspect_ranks=last,
               detail=f"{_ranks_text(involved)} disagree at call #{seq} of group {group} with "
                      f"no majority ({observed_by}), so no rank is blamed by count" + why)
    return rec


def _mismatches(src) -> pd.DataFrame:
    """`find_mismatches`: the first disagreement per process group."""
    cand = src.sql(_CANDIDATES)
    out = [_explain(g) for _, g in cand.groupby(["run_id", "pg_name"], sort=True, dropna=False)]
    df = pd.DataFrame(out, columns=_COLUMNS)
    if len(df):
        df["pg_seq"] = df["pg_seq"].astype("int64")
    return df


def find_mismatches(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """First disagreement per process group (collectives only; p2p is per pair).

    kind: 'missing' (ranks that never issued the call at pg_seq: hung or exited), 'op', 'bytes'
    or 'dtype'. `ranks`: the odd ones out (every disagreeing rank when no signature has a
    majority); `expected`: the majority's call (None without a majority); `observed`: theirs;
    `pg_ranks`: the group's members; `observed_by`: which ranks issued which call;
    `suspect_ranks`: the ranks the evidence points at (missing ranks, the minority, or without
    a majority the rank that arrived last when the calls were timed; empty if nothing does).
    `events`: DataFrame, trace path (screened out of core) or `Trace`.
    """
    from ._trace import opened

    with opened(events) as src:
        return src.mismatches()
