"""Kineto files of a run -> one RankData per rank.

Ranks parse independently, so several files are read by forked workers (one per core, as HTA
does); each worker streams one file at a time, so memory stays bounded per worker. A CUDA-graph
capture trace of a rank that also has a replay trace is kept as context, not as a second rank.
"""

from __future__ import annotations

import multiprocessing as mp
import os

import pandas as pd

from ._kineto import KinetoRank, read_kineto

__all__ = ["read_kineto_members"]

_MEMBERS: list = []
# Starting worker processes costs a few hundred ms: below this much input, parse in-process.
_POOL_MIN_BYTES = 32 << 20


def _total_bytes(members: list) -> int:
    """Input size, from the files on disk (compressed files count 8x: typical JSON ratio)."""
    total = 0
    for path in {m.name.split("!", 1)[0] for m in members}:    # an archive counts once
        try:
            size = os.path.getsize(path)
        except OSError:
            continue
        total += size * (8 if path.endswith((".gz", ".tgz")) else 1)
    return total


def _read_one(i: int) -> KinetoRank | str:
    """Parse member i (in a worker); the error text instead of raising across processes."""
    from ._import import text_stream
    from ._trace_json import TraceJsonError

    try:
        with text_stream(_MEMBERS[i]) as fh:
            return read_kineto(fh)
    except TraceJsonError as exc:
        return str(exc)
    except (OSError, EOFError) as exc:
        return f"unreadable ({exc})"


def read_kineto_members(members: list) -> list:
    """Kineto files -> RankData per rank (graph-capture companions set aside with a note)."""
    from ._import import RankData, TraceImportError

    global _MEMBERS
    _MEMBERS = members
    try:
        if len(members) > 1 and (os.cpu_count() or 1) > 1 and "fork" in \
                mp.get_all_start_methods() and _total_bytes(members) > _POOL_MIN_BYTES:
            # Ranks parse independently: one forked worker per core (as HTA does). Each worker
            # streams one file at a time, so memory stays bounded per worker.
            with mp.get_context("fork").Pool(min(len(members), os.cpu_count() or 1)) as pool:
                results = pool.map(_read_one, range(len(members)), chunksize=1)
        else:
            results = [_read_one(i) for i in range(len(members))]
    finally:
        _MEMBERS = []
    got = []
    for m, res in zip(members, results):
        if isinstance(res, str):
            raise TraceImportError(f"{m.name}: {res}")
        got.append((m, res))
    ranks_seen: dict[int, int] = {}
    for _m, kr in got:
        if kr.rank is not None:
            ranks_seen[kr.rank] = ranks_seen.get(kr.rank, 0) + 1
    out, companions = [], []
    for m, kr in got:
        rank = kr.rank
        if rank is None:
            if len(got) > 1:
                raise TraceImportError(f"{m.name}: no distributedInfo.rank in the trace, so its "
                                       "rank is unknown (import it on its own)")
            rank = 0
            kr.notes.append("no distributedInfo.rank: assumed rank 0")
        # A CUDA-graph capture trace (TraceLens' capture_traces) shares its rank with the replay
        # trace; its kernels ran at capture time only, so it is context, not a second rank.
        if ranks_seen.get(rank, 0) > 1 and kr.capture_calls and not kr.graph_launches:
            companions.append(m.name)
            continue
        info = kr.top.get("distributedInfo") or {}
        meta = {"versions": {"nccl": info.get("nccl_version"), "torch": None,
                             "cuda": kr.top.get("cuda_runtime_version")},
                "gpu_busy": kr.busy,
                "kineto": {"kernels": kr.kernels, "comm_kernels": len(kr.rows),
                           "graph_launches": kr.graph_launches,
                           "pg_config": info.get("pg_config"),
                           "base_time_ns": kr.top.get("baseTimeNanoseconds")},
                "import_notes": list(kr.notes)}
        out.append(RankData(rank, kr.world_size or 1, pd.DataFrame(kr.rows), meta, "kineto",
                            [m.name]))
    for r in out:
        for c in companions:
            r.meta["import_notes"].append(f"{c}: CUDA-graph capture trace of the same rank, "
                                          "used as context only (its kernels ran at capture)")
    return out
