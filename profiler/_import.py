"""`import_trace`: foreign GPU artefacts -> a normal commscope dataset.

Reads torch.profiler (Kineto) Chrome traces, PyTorch Flight Recorder dumps and NCCL Inspector
JSON-lines (plain, .gz, folders, .tar/.tar.gz of per-rank files; the rank is read from each
file's content) and writes `<out_dir>/<run_id>/rank_<NNNNN>/part-*.parquet` + `metadata.json`
with the trace schema, so every analysis, the report and calibration work unchanged.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from typing import IO, Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from ._rundir import write_metadata_file
from ._schema import RANK_KEY, RUN_ID_KEY, SCHEMA_VERSION, arrow_schema
from ._writer import write_part

__all__ = ["import_trace", "TraceImportError", "FORMATS", "RankData", "read_members"]

FORMATS = ("kineto", "flight-recorder", "nccl-inspector")


class TraceImportError(ValueError):
    """An input cannot be imported; the message names the file and the reason."""


class Member(NamedTuple):
    name: str                               # path, or archive path + '!' + member name
    open: Callable[[], IO[bytes]]           # decompressed binary stream


class RankData(NamedTuple):
    """One rank's rows, as a format reader produces them (schema column names)."""
    rank: int
    world_size: int | None
    rows: pd.DataFrame
    meta: dict[str, Any]                    # extra metadata.json keys
    source: str                             # value of the `source` column
    files: list[str]


def _gz(open_raw: Callable[[], IO[bytes]]) -> Callable[[], IO[bytes]]:
    return lambda: gzip.GzipFile(fileobj=open_raw())


def _file_members(path: str) -> list[Member]:
    low = path.lower()
    if low.endswith((".tar", ".tar.gz", ".tgz")):
        out = []
        try:
            with tarfile.open(path, "r:*") as tf:
                names = [m.name for m in tf.getmembers() if m.isfile()]
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise TraceImportError(f"{path}: unreadable tar archive ({exc})") from None
        for n in sorted(names):
            def opener(n: str = n) -> IO[bytes]:
                # The archive must stay open while the caller reads the member stream.
                tf = tarfile.open(path, "r:*")  # noqa: SIM115
                fh = tf.extractfile(n)
                assert fh is not None
                return fh
            out.append(Member(f"{path}!{n}", _gz(opener) if n.lower().endswith(".gz")
                              else opener))
        return out
    if low.endswith(".gz"):
        return [Member(path, _gz(lambda: open(path, "rb")))]
    return [Member(path, lambda: open(path, "rb"))]


def read_members(paths: Iterable[str | os.PathLike]) -> list[Member]:
    """Every file under `paths` (folders walked, archives expanded), sorted by name."""
    out: list[Member] = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            raise TraceImportError(f"{p}: no such file or folder")
        if os.path.isdir(p):
            for dirpath, _dirs, files in sorted(os.walk(p)):
                for f in sorted(files):
                    if not f.startswith("."):
                        out.extend(_file_members(os.path.join(dirpath, f)))
        else:
            out.extend(_file_members(p))
    return out


def _head(m: Member, n: int = 65536) -> bytes:
    try:
        with m.open() as fh:
            return fh.read(n)
    except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile) as exc:
        raise TraceImportError(f"{m.name}: unreadable ({exc})") from None


_INSPECTOR_RE = re.compile(rb'^\s*\{\s*"header"\s*:')


def detect_format(m: Member) -> str | None:
    """'kineto', 'commscope-export', 'flight-recorder', 'nccl-inspector' or None."""
    head = _head(m)
    if head[:1] == b"\x80":                        # pickle protocol >= 2: Flight Recorder
        return "flight-recorder"
    text = head.lstrip()
    if _INSPECTOR_RE.match(text) and (b'"coll_perf"' in head or b'"p2p_perf"' in head):
        return "nccl-inspector"
    if text[:1] in (b"{", b"["):
        if b'"commscope_export"' in head:
            return "commscope-export"
        if any(k in head for k in (b'"traceEvents"', b'"schemaVersion"', b'"distributedInfo"',
                                   b'"deviceProperties"')):
            return "kineto"
        if b'"pg_config"' in head or (b'"entries"' in head and b'"version"' in head):
            return "flight-recorder"
    return None


def text_stream(m: Member) -> IO[str]:
    return io.TextIOWrapper(m.open(), encoding="utf-8", errors="replace")


_SANITIZE = re.compile(r"[^A-Za-z0-9_.-]+")


def _default_run_id(paths: list[str]) -> str:
    base = os.path.basename(os.path.normpath(paths[0])) if paths else "import"
    for ext in (".gz", ".tgz", ".tar", ".json", ".jsonl", ".log"):
        base = base.removesuffix(ext)
    return _SANITIZE.sub("_", base).strip("_.") or "import"


def _align(df: pd.DataFrame) -> dict[int, tuple[int, int | None, int]]:
    """Per rank (offset to the lowest rank, spread, matched instances), from the device end
    times of matched collectives: a collective finishes on all members at nearly the same time,
    so the median difference is the clock offset and the range bounds its error."""
    out: dict[int, tuple[int, int | None, int]] = {}
    if df.empty or "gpu_end_ns" not in df:
        return out
    sel = df[df["gpu_end_ns"].notna() & ~df["op"].isin(["send", "recv"])]
    if sel["rank"].nunique() < 2:
        return out
    allr = pd.DataFrame({"rank": sel["rank"], "pg_name": sel["pg_name"].astype(str),
                         "pg_seq": sel["pg_seq"].astype("int64"), "op": sel["op"].astype(str),
                         "end": sel["gpu_end_ns"]})
    ref = int(allr["rank"].min())
    base = allr[allr["rank"] == ref].drop(columns="rank")
    m = allr.merge(base, on=["pg_name", "pg_seq", "op"], suffixes=("", "_ref"))
    m["d"] = m["end"].astype("int64") - m["end_ref"].astype("int64")
    stats = m.groupby("rank")["d"].agg(["median", "min", "max", "size"])
    for rank in allr["rank"].unique():
        if rank == ref:
            out[int(rank)] = (0, 0, int((allr["rank"] == ref).sum()))
        elif rank in stats.index:
            st = stats.loc[rank]
            out[int(rank)] = (int(st["median"]), int(st["max"] - st["min"]), int(st["size"]))
        else:
            out[int(rank)] = (0, None, 0)
    return out


def _column(df: pd.DataFrame, name: str, typ: pa.DataType, n: int) -> pa.Array:
    if name not in df:
        return pa.nulls(n, typ)
    s = df[name]
    if pa.types.is_list(typ):
        return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v))
                         else [int(x) for x in v] for v in s], typ)
    if pa.types.is_integer(typ):
        vals = pd.array(s, dtype="Float64") if s.dtype == object else s
        return pa.array(pd.array(vals, dtype="Int64"), typ) if typ == pa.int64() else \
            pa.array(pd.array(vals, dtype="Int64")).cast(typ)
    if pa.types.is_boolean(typ):
        return pa.array(pd.array(s, dtype="boolean"), typ)
    return pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                     for v in s], typ)


def _combine(ranks: list[RankData], run_id: str) -> pd.DataFrame:
    """All ranks' rows in one frame, by rank and device (else host) start time, with `seq` and
    `pg_seq` where the source had none (per rank and group, in that order)."""
    frames = [r.rows.assign(run_id=run_id, rank=r.rank, world_size=r.world_size,
                            source=r.source)
              for r in sorted(ranks, key=lambda x: x.rank) if len(r.rows)]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    t = pd.to_numeric(df["t_start_ns"])
    if "gpu_start_ns" in df:
        t = pd.to_numeric(df["gpu_start_ns"]).fillna(t)
    df = df.assign(_t=t).sort_values(["rank", "_t"], kind="stable")
    df = df.drop(columns="_t").reset_index(drop=True)
    df["seq"] = df.groupby("rank").cumcount()
    if "pg_seq" not in df or df["pg_seq"].isna().any():
        order = df.groupby([df["rank"], df["pg_name"].astype(str)], sort=False).cumcount()
        df["pg_seq"] = df["pg_seq"].fillna(order) if "pg_seq" in df else order
    return df


def _tables(df: pd.DataFrame, ranks: list[RankData], run_id: str) -> dict[int, pa.Table]:
    """Every rank's part table. All rows are converted to Arrow together (one conversion per
    column, not one per column and rank), then sliced per rank."""
    out = {r.rank: arrow_schema({RUN_ID_KEY: run_id.encode(),
                                 RANK_KEY: str(r.rank).encode()}).empty_table() for r in ranks}
    if df.empty:
        return out
    n = len(df)
    if "t_return_ns" not in df:
        df["t_return_ns"] = df["t_end_ns"]
    if "backend" not in df:
        df["backend"] = "nccl"
    schema = arrow_schema()
    table = pa.Table.from_arrays([_column(df, f.name, f.type, n) for f in schema], schema=schema)
    counts = df["rank"].value_counts(sort=False)
    start = 0
    for rank in df["rank"].drop_duplicates():        # frames are in rank order
        k = int(counts[rank])
        meta = {**(schema.metadata or {}), RUN_ID_KEY: run_id.encode(),
                RANK_KEY: str(int(rank)).encode()}
        out[int(rank)] = table.slice(start, k).replace_schema_metadata(meta)
        start += k
    return out


def read_commscope_export(members: list[Member]) -> list[RankData]:
    """`commscope export` files -> the rows and run metadata they were made from."""
    from ._trace_json import TraceJsonError, read_chrome_trace

    out: list[RankData] = []
    for m in members:
        rows: list[dict[str, Any]] = []

        def keep(batch: list, rows: list = rows) -> None:
            rows.extend(e["args"]["row"] for e in batch
                        if e.get("cat") == "comm" and "row" in (e.get("args") or {}))
        try:
            with text_stream(m) as fh:
                top = read_chrome_trace(fh, keep)
        except TraceJsonError as exc:
            raise TraceImportError(f"{m.name}: {exc}") from None
        info = top.get("commscope_export") or {}
        runs = info.get("runs") or []
        if len(runs) > 1:
            raise TraceImportError(f"{m.name}: holds {len(runs)} runs ({runs}); export one run "
                                   "per file to import it")
        metas = {int(x.get("rank", 0)): x for x in info.get("metadata") or []}
        df = pd.DataFrame(rows)
        for rank in sorted(set(metas) | (set(df["rank"].astype(int)) if len(df) else set())):
            sel = df[df["rank"].astype(int) == rank] if len(df) else df
            meta = dict(metas.get(rank, {}))
            sources = sel["source"].dropna().unique().tolist() if len(sel) else []
            keep_meta = {k: meta[k] for k in ("gpu_busy", "import_notes", "flight_recorder",
                                              "kineto", "nccl_inspector", "versions",
                                              "clock_offset_ns", "clock_offset_spread_ns",
                                              "clock_sync", "tags", "host") if k in meta}
            out.append(RankData(rank, meta.get("world_size") or (
                int(sel["world_size"].iloc[0]) if len(sel) else None),
                sel.drop(columns=["run_id", "rank", "world_size", "source"], errors="ignore"),
                keep_meta, sources[0] if len(sources) == 1 else "hooks", [m.name]))
    return out


def _readers() -> dict[str, Callable[[list[Member]], list[RankData]]]:
    from ._flight_recorder import read_flight_recorder
    from ._inspector import read_inspector
    from ._kineto_files import read_kineto_members
    return {"kineto": read_kineto_members, "commscope-export": read_commscope_export,
            "flight-recorder": read_flight_recorder, "nccl-inspector": read_inspector}


def import_trace(paths: str | os.PathLike | Iterable[str | os.PathLike],
                 out_dir: str | os.PathLike, *, format: str = "auto",
                 run_name: str | None = None) -> str:
    """Convert Kineto traces, Flight Recorder dumps or NCCL Inspector logs into a dataset.

    `paths`: files, folders, .gz and .tar(.gz) of per-rank files. `format`: 'auto' (detected
    from content), 'kineto', 'flight-recorder' or 'nccl-inspector'. Returns the run folder
    `<out_dir>/<run_id>`; its `metadata.json` files carry the import notes (what could not be
    known and why), clock alignment and, for Kineto, the GPU busy time per step. Raises
    `TraceImportError` naming the file on unusable input.
    """
    plist = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else \
        [os.fspath(p) for p in paths]
    if not plist:
        raise TraceImportError("no input paths given")
    if format not in ("auto", *FORMATS):
        raise TraceImportError(f"unknown format {format!r}: use auto, {', '.join(FORMATS)}")
    members = read_members(plist)
    if not members:
        raise TraceImportError(f"{', '.join(plist)}: no files to import")
    found: dict[str, list[Member]] = {}
    skipped = []
    for m in members:
        f = detect_format(m)
        if format != "auto" and f not in (format, "commscope-export" if format == "kineto"
                                          else None):
            f = None if len(members) > 1 else format   # a single file: let its reader say why
        if f is None:
            skipped.append(m.name)
        else:
            found.setdefault(f, []).append(m)
    if not found:
        what = "a Kineto trace, Flight Recorder dump or NCCL Inspector log" if format == "auto" \
            else f"a {format} file"
        raise TraceImportError(f"{skipped[0]}: not {what}" if len(skipped) == 1 else
                               f"none of the {len(skipped)} files under {', '.join(plist)} "
                               f"is {what} (first: {skipped[0]})")
    if len(found) > 1:
        kinds = {k: v[0].name for k, v in found.items()}
        raise TraceImportError(f"inputs mix formats ({kinds}); import each format separately")
    fmt, ms = next(iter(found.items()))
    ranks = _readers()[fmt](ms)
    seen: dict[int, RankData] = {}
    for r in ranks:
        if r.rank in seen:
            raise TraceImportError(f"rank {r.rank} appears twice: {seen[r.rank].files[0]} and "
                                   f"{r.files[0]} (import one run at a time)")
        seen[r.rank] = r
    run_id = _SANITIZE.sub("_", run_name) if run_name else _default_run_id(plist)
    run_dir = os.path.join(os.fspath(out_dir), run_id)
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        # Never mix ranks of two imports (or of a traced run) in one run folder.
        raise TraceImportError(f"{run_dir} already exists: choose another run name "
                               "(--run-name) or remove it")
    rows = _combine(ranks, run_id)
    # Only kernel times end together across ranks; Inspector/FR times are dump or enqueue times.
    offsets = _align(rows) if fmt == "kineto" else {}
    tables = _tables(rows, ranks, run_id)
    for r in sorted(ranks, key=lambda x: x.rank):
        rank_dir = os.path.join(run_dir, f"rank_{r.rank:05d}")
        table = tables[r.rank]
        write_part(table, rank_dir, "part-0-00000.parquet")
        off, spread, matched = offsets.get(r.rank, (0, None, 0))
        meta = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "run_name": run_name,
                "rank": r.rank, "world_size": r.world_size, "host": None, "pid": None,
                "tags": {}, "source": r.source, "capture": "import", "cuda_timing": None,
                "clock_offset_ns": off, "clock_offset_spread_ns": spread,
                "clock_sync": (f"import: median difference of device end times over {matched} "
                               f"collectives matched with the lowest rank"
                               if matched and r.rank not in (min(offsets),) else
                               "import: reference rank" if matched else "none"),
                "events_written": table.num_rows, "parts": 1,
                "import": {"format": fmt, "files": r.files, "skipped": skipped},
                **r.meta}
        write_metadata_file(rank_dir, 0, meta)
    return run_dir
