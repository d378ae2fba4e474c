"""Cross-rank matching: one row per logical collective, transfer time vs waiting, stragglers.

Times are clock-aligned (each rank's offset to rank 0 subtracted, see `_sql`). For one
collective instance (pg_name, pg_seq) on n ranks:
  start_skew_ns = latest start - earliest start (how late the last rank arrived),
  transfer_ns   = earliest end - latest start, clipped at 0: no rank can finish before the last
                  one arrived, so this is the time data was moving once everyone was there,
  wait_ns (per rank) = latest start - this rank's start: time spent waiting for late ranks.
Point-to-point: the k-th send A->B on a group pairs with the k-th recv on B from A (pg_seq).

Time basis: an instance is timed on the device (gpu_start_ns / gpu_end_ns) when every member
has device times, on the host otherwise (`time_basis`). On NCCL a host call returns at
enqueue, so only device times separate skew from transfer there. A rank issues a collective
instance once, so members are counted with count(*) (no DISTINCT: at 1e8 rows that would
build a hash table of every (instance, rank)).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ._sql import BUS_FACTOR_SQL

__all__ = ["match_collectives", "collective_waits", "stragglers", "row_waits", "rank_stats"]

_ON = ("a.run_id IS NOT DISTINCT FROM b.run_id AND a.pg_name IS NOT DISTINCT FROM b.pg_name "
       "AND a.pg_seq = b.pg_seq")

# Per event row `a` of a collective instance `b` ({inst}): its wait for the last rank, on the
# instance's time basis.
_WAIT = "b.last_start - CASE WHEN b.all_device THEN a.gpu_start_ns ELSE a.t_start_ns END"
_ROW_JOIN = f"FROM events a JOIN {{inst}} b ON {_ON} WHERE a.op NOT IN ('send', 'recv')"

# Per collective instance, host and device aggregates side by side; `all_device` picks one.
# The latest start and who it was come from one max over start * 2^32 + rank (HUGEINT): an
# exact tie goes to the highest rank, deterministically, at less cost than arg_max on a
# (start, rank) pair. op, phase and step are any member's (members agree; find_mismatches
# reports the instances where they do not).
_HOST_AGGS = """
       any_value(op) AS op, max(bytes) AS bytes, any_value(pg_size) AS pg_size,
       count(*) AS ranks_seen,
       min(t_start_ns) AS h_first_start, max(t_start_ns::HUGEINT * 4294967296 + rank) AS h_key,
       min(t_end_ns) AS h_first_end,
       sum(t_start_ns) AS h_sum_start, any_value(phase) AS phase, any_value(step) AS step"""
_DEVICE_AGGS = """
       bool_and(has_device) AS all_device,
       min(gpu_start_ns) AS g_first_start,
       max(gpu_start_ns::HUGEINT * 4294967296 + rank) AS g_key, min(gpu_end_ns) AS g_first_end,
       sum(gpu_start_ns) AS g_sum_start"""
_NO_DEVICE = """
       FALSE AS all_device, NULL::BIGINT AS g_first_start, NULL::HUGEINT AS g_key,
       NULL::BIGINT AS g_first_end, NULL::HUGEINT AS g_sum_start"""


def _instances_sql(device: bool) -> str:
    return f"""
SELECT run_id, pg_name, pg_seq, {_HOST_AGGS}, {_DEVICE_AGGS if device else _NO_DEVICE}
FROM events WHERE op NOT IN ('send', 'recv')
GROUP BY run_id, pg_name, pg_seq"""


# The same instance on its time basis; the key splits back into latest start and its rank.
_CHOSEN = """
SELECT run_id, pg_name, pg_seq, op, bytes, pg_size, ranks_seen, all_device, phase, step,
       first_start, first_end, CAST((key - last_rank) // 4294967296 AS BIGINT) AS last_start,
       CAST(last_rank AS INTEGER) AS last_rank,
       CAST(ranks_seen * ((key - last_rank) // 4294967296) - sum_start AS BIGINT) AS total_wait
FROM (SELECT *, ((key % 4294967296) + 4294967296) % 4294967296 AS last_rank FROM (
  SELECT *, CASE WHEN all_device THEN g_first_start ELSE h_first_start END AS first_start,
         CASE WHEN all_device THEN g_first_end ELSE h_first_end END AS first_end,
         CASE WHEN all_device THEN g_key ELSE h_key END AS key,
         CASE WHEN all_device THEN g_sum_start ELSE h_sum_start END AS sum_start
  FROM {inst}))"""


def _instances(src) -> str:
    return src.temp_table("coll_instances",
                          _CHOSEN.format(inst=f"({_instances_sql(src.device)})"))


_PAIRS = """
SELECT a.run_id, a.pg_name, a.pg_seq, a.rank AS src, b.rank AS dst, a.bytes, a.phase, a.step,
       (a.has_device AND b.has_device) AS all_device,
       CASE WHEN a.has_device AND b.has_device THEN a.gpu_start_ns ELSE a.t_start_ns END AS s0,
       CASE WHEN a.has_device AND b.has_device THEN b.gpu_start_ns ELSE b.t_start_ns END AS r0,
       CASE WHEN a.has_device AND b.has_device THEN a.gpu_end_ns ELSE a.t_end_ns END AS s1,
       CASE WHEN a.has_device AND b.has_device THEN b.gpu_end_ns ELSE b.t_end_ns END AS r1,
       a._k AS s_k, b._k AS r_k
FROM (SELECT *, {k} AS _k FROM events WHERE op = 'send') a
JOIN (SELECT *, {k} AS _k FROM events WHERE op = 'recv') b
  ON a.run_id IS NOT DISTINCT FROM b.run_id AND a.pg_name IS NOT DISTINCT FROM b.pg_name
 AND a.rank = b.peer AND a.peer = b.rank AND a.pg_seq = b.pg_seq"""


def _pairs(k: str = "NULL") -> str:
    return _PAIRS.format(k=k)


def _basis(flag: str) -> str:
    return f"CASE WHEN {flag} THEN 'device' ELSE 'host' END"


def _match(src) -> pd.DataFrame:
    """`match_collectives`: one row per collective instance and per send/recv pair."""
    inst = _instances(src)
    sql = f"""
    WITH allm AS (
      SELECT run_id, pg_name, pg_seq, op, bytes, pg_size, ranks_seen, first_start, last_start,
             first_end, last_rank, phase, step, CAST(NULL AS INTEGER) AS src,
             CAST(NULL AS INTEGER) AS dst, all_device FROM {inst}
      UNION ALL
      SELECT run_id, pg_name, pg_seq, 'send', bytes, 2, 2, least(s0, r0), greatest(s0, r0),
             least(s1, r1), CASE WHEN s0 >= r0 THEN src ELSE dst END, phase, step, src, dst,
             all_device FROM ({_pairs()})),
    t AS (SELECT *, greatest(first_end - last_start, 0) AS transfer_ns FROM allm)
    SELECT run_id, pg_name, pg_seq, op, bytes, pg_size, ranks_seen,
           first_start AS t_first_start_ns, last_start AS t_last_start_ns,
           last_start - first_start AS start_skew_ns, last_rank, transfer_ns,
           CASE WHEN transfer_ns > 0 THEN bytes / transfer_ns END AS algbw_GBps,
           CASE WHEN transfer_ns > 0 THEN bytes / transfer_ns * {BUS_FACTOR_SQL} END
             AS busbw_GBps,
           phase, step, src, dst, {_basis('all_device')} AS time_basis
    FROM t ORDER BY run_id, pg_name, pg_seq, src NULLS FIRST, dst"""
    return src.sql(sql)


def match_collectives(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """One row per logical collective (pg_name, pg_seq) and per matched send/recv pair.

    `events`: a DataFrame, a trace path (computed out of core) or a `Trace`; one
    implementation (DuckDB) for all.

    Columns: run_id, pg_name, pg_seq, op, bytes, pg_size, ranks_seen, t_first_start_ns,
    t_last_start_ns, start_skew_ns, last_rank, transfer_ns, algbw_GBps, busbw_GBps (from
    transfer_ns), phase, step, src, dst, time_basis ('device' when every member has device
    times, else 'host'). For send/recv pairs, `op` is 'send', ranks_seen 2, `last_rank` the side
    that arrived last, `pg_seq` the pair ordinal, plus `src` and `dst`.
    """
    from ._trace import opened

    with opened(events) as src:
        return src.match()


def _waits(src) -> pd.DataFrame:
    """`collective_waits`: per (collective instance, rank), the wait for the last rank."""
    inst = _instances(src)
    sql = f"""
    SELECT a.run_id, a.pg_name, a.pg_seq, a.rank, a.op, a.bytes, a.t_start_ns, a.t_end_ns,
           {_WAIT} AS wait_ns, {_basis('b.all_device')} AS time_basis
    {_ROW_JOIN.format(inst=inst)}
    ORDER BY a.run_id, a.pg_name, a.pg_seq, a.rank"""
    return src.sql(sql)


def collective_waits(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Per (collective instance, rank): run_id, pg_name, pg_seq, rank, op, bytes, t_start_ns,
    t_end_ns, wait_ns (latest start - own start, on the instance's time basis), time_basis."""
    from ._trace import opened

    with opened(events) as src:
        return src.waits()


def row_waits(events: pd.DataFrame) -> pd.Series:
    """Per event (aligned to `events.index`): time it waited for the last participant to
    arrive (latest start of its collective instance or send/recv pair - its own start), on the
    instance's time basis; 0 where nothing is matched."""
    from ._trace import opened

    frame = events.assign(_row=np.arange(len(events), dtype="int64"))
    with opened(frame, extra=("_row",)) as src:
        inst = _instances(src)
        w = src.sql(f"""
        WITH p AS ({_pairs('_row')})
        SELECT a._row, {_WAIT} AS wait_ns {_ROW_JOIN.format(inst=inst)}
        UNION ALL
        SELECT s_k, greatest(s0, r0) - s0 FROM p
        UNION ALL
        SELECT r_k, greatest(s0, r0) - r0 FROM p""")
    out = np.zeros(len(events), dtype="int64")
    out[w["_row"].to_numpy(dtype="int64")] = w["wait_ns"].fillna(0).to_numpy(dtype="int64")
    return pd.Series(pd.array(out, dtype="Int64"), index=events.index)


_PER_RANK_JOIN = f"""
SELECT a.rank, count(*) AS collectives, sum({_WAIT}) AS wait_total_ns,
       bool_and(b.all_device) AS dev_all, bool_or(b.all_device) AS dev_any
{_ROW_JOIN} {{only}}
GROUP BY a.rank"""


def rank_stats(src) -> str:
    """Temp table `rank_group_stats`, one pass shared by stragglers and summarize: per (run,
    group, rank) the number of collectives n and the sum of their host starts s, and the
    first start a / last end b of any call (device times included: same clock)."""
    coll = "FILTER (WHERE op NOT IN ('send', 'recv'))"
    a, b = (("least(t_start_ns, gpu_start_ns)", "greatest(t_end_ns, gpu_end_ns)")
            if src.device else ("t_start_ns", "t_end_ns"))
    return src.temp_table("rank_group_stats", f"""
        SELECT run_id, pg_name, rank, count(*) {coll} AS n, sum(t_start_ns) {coll} AS s,
               min({a}) AS a, max({b}) AS b
        FROM events GROUP BY ALL""")


def _per_rank_host(src, inst: str) -> str:
    """Per rank: collectives and wait_total_ns without joining every row to its instance.

    Host basis only. A rank's total wait is the sum of its instances' latest starts minus the
    sum of its own starts; when a rank issued every instance of a group (the normal case: its
    row count there equals the group's instance count), the first sum is the group's, taken
    from the instance table. Only (group, rank) pairs with missing calls need the row join."""
    rank_stats(src)
    src.temp_table("rank_group_waits", f"""
        SELECT r.run_id, r.pg_name, r.rank, r.n, g.n_inst, g.s_last - r.s AS w
        FROM rank_group_stats r JOIN (
          SELECT run_id, pg_name, count(*) AS n_inst, sum(last_start) AS s_last FROM {inst}
          GROUP BY ALL) g
          ON r.run_id IS NOT DISTINCT FROM g.run_id AND r.pg_name IS NOT DISTINCT FROM g.pg_name
        WHERE r.n > 0""")
    incomplete = src.con.sql("SELECT count(*) FROM rank_group_waits WHERE n <> n_inst") \
        .fetchall()[0][0]
    exact = ("SELECT rank, sum(n) AS collectives, sum(w) AS wait_total_ns FROM rank_group_waits "
             "WHERE n = n_inst GROUP BY rank")
    if incomplete:
        only = ("AND (a.run_id, a.pg_name, a.rank) IN (SELECT (run_id, pg_name, rank) "
                "FROM rank_group_waits WHERE n <> n_inst)")
        exact = (f"SELECT rank, sum(collectives) AS collectives, "
                 f"sum(wait_total_ns) AS wait_total_ns FROM ({exact} UNION ALL "
                 f"SELECT rank, collectives, wait_total_ns FROM "
                 f"({_PER_RANK_JOIN.format(inst=inst, only=only)})) GROUP BY rank")
    return f"SELECT *, FALSE AS dev_all, FALSE AS dev_any FROM ({exact})"


def _stragglers(src) -> pd.DataFrame:
    """`stragglers`: per rank, times last, wait imposed on others, wait suffered."""
    inst = _instances(src)
    per = _PER_RANK_JOIN.format(inst=inst, only="") if src.device else \
        _per_rank_host(src, inst)
    sql = f"""
    WITH per AS ({per}),
    imposed AS (SELECT last_rank AS rank, count(*) AS times_last,
                       sum(total_wait) AS wait_imposed_ns
                FROM {inst} WHERE ranks_seen > 1 AND total_wait > 0 GROUP BY last_rank)
    SELECT per.rank, collectives, coalesce(times_last, 0) AS times_last,
           CAST(coalesce(wait_imposed_ns, 0) AS BIGINT) AS wait_imposed_ns,
           CAST(wait_total_ns AS BIGINT) AS wait_total_ns,
           coalesce(times_last, 0) / collectives AS share_last,
           CASE WHEN dev_all THEN 'device' WHEN dev_any THEN 'mixed' ELSE 'host' END
             AS time_basis
    FROM per LEFT JOIN imposed USING (rank)
    ORDER BY wait_imposed_ns DESC, rank"""
    out = src.sql(sql)
    for c in ("rank", "collectives", "times_last", "wait_imposed_ns", "wait_total_ns"):
        out[c] = out[c].astype("int64")
    return out


def stragglers(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Per rank: how often it arrived last at a collective, the total wait it imposed on the
    other ranks (sum of their wait_ns at those instances) and the total time it waited itself.

    Columns: rank, collectives, times_last, wait_imposed_ns, wait_total_ns, share_last,
    time_basis ('device', 'host' or 'mixed' over the rank's instances); the worst straggler
    first. Instances with a start skew of 0 have no straggler. `events`: DataFrame, trace path
    or `Trace`.
    """
    from ._trace import opened

    with opened(events) as src:
        return src.stragglers()
