"""Overlap of communication with computation.

Host basis (async calls recorded by the hooks): issue window = t_wait_ns - t_return_ns (time
the program did other work between issuing and waiting: where the transfer could hide),
exposed = t_end_ns - t_wait_ns (time blocked in wait), hidden = total - exposed with total =
t_end_ns - t_start_ns. Calls never waited on (`completion == 'unobserved'`) are counted but
not timed.

Device basis (rows with gpu_hidden_ns, e.g. imported Kineto traces, async or not): total = the
kernel's device duration, hidden = gpu_hidden_ns (compute kernels ran on other streams
meanwhile), exposed = total - hidden; there is no host issue window. Hook rows with device
times but no gpu_hidden_ns stay on the host basis: their device interval alone does not say
what ran concurrently.
"""

from __future__ import annotations

import os

import pandas as pd

__all__ = ["overlap"]


def _overlap(src) -> pd.DataFrame:
    """`overlap`: per (phase, op), hidden and exposed communication."""
    sql = """
    WITH a AS (
      SELECT coalesce(phase, '(none)') AS phase, op, gpu_hidden_ns IS NOT NULL AS dev,
             gpu_hidden_ns IS NOT NULL OR t_wait_ns IS NOT NULL AS waited,
             CASE WHEN gpu_hidden_ns IS NOT NULL THEN dur_ns
                  WHEN t_wait_ns IS NOT NULL THEN t_end_ns - t_start_ns END AS total_ns,
             CASE WHEN gpu_hidden_ns IS NULL THEN greatest(t_wait_ns - t_return_ns, 0) END
               AS window_ns,
             CASE WHEN gpu_hidden_ns IS NOT NULL THEN greatest(dur_ns - gpu_hidden_ns, 0)
                  ELSE greatest(t_end_ns - t_wait_ns, 0) END AS exposed_ns
      FROM events WHERE coalesce(async_op, false) OR gpu_hidden_ns IS NOT NULL)
    SELECT phase, op, count(*) AS count, CAST(sum(waited::INTEGER) AS BIGINT) AS waited,
           CAST(coalesce(sum(total_ns), 0) AS BIGINT) AS total_ns,
           CAST(coalesce(sum(window_ns), 0) AS BIGINT) AS window_ns,
           CAST(coalesce(sum(exposed_ns), 0) AS BIGINT) AS exposed_ns,
           CASE WHEN dev THEN 'device' ELSE 'host' END AS time_basis
    FROM a GROUP BY phase, op, dev ORDER BY phase, op, time_basis"""
    out = src.sql(sql)
    for c in ("count", "waited", "total_ns", "window_ns", "exposed_ns"):
        out[c] = out[c].astype("int64")
    out["hidden_ns"] = (out["total_ns"] - out["exposed_ns"]).clip(lower=0)
    out["hidden_fraction"] = (out["hidden_ns"] / out["total_ns"]).where(out["total_ns"] > 0)
    return out[["phase", "op", "count", "waited", "total_ns", "window_ns", "exposed_ns",
                "hidden_ns", "hidden_fraction", "time_basis"]]


def overlap(events: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Per (phase, op, time basis): count, waited, total_ns (issue to completion, or device
    duration), window_ns (issue returned to wait began), exposed_ns, hidden_ns,
    hidden_fraction, time_basis ('host': async calls timed by the hooks; 'device': rows with
    gpu_hidden_ns). `events`: DataFrame, trace path (out of core) or `Trace`."""
    from ._trace import opened

    with opened(events) as src:
        return src.overlap()
