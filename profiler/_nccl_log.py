"""Parse NCCL debug logs (NCCL_DEBUG=INFO, any version 2.4 to current) into tables.

Real logs are damaged: launcher and logger prefixes, interleaved ranks and threads, torn and
glued lines, prose in between, gzip, huge files. The parser streams line by line, finds every
`NCCL INFO` / `NCCL WARN` record anywhere in a line (a torn line may carry several), recognises
what it can, never raises on content, and counts and samples what it skipped.
"""

from __future__ import annotations

import gzip
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ._nccl_formats import (
    ALGOS,
    CHANNEL_RING_RE,
    CHANNELS_RE,
    COLL_RE,
    CONNECTION_RE,
    DRIVER_RE,
    DTYPES,
    GATHER_LIKE,
    INIT_RE,
    LINE_START_RE,
    NET_PLUGIN_RE,
    NET_USING_RE,
    NETWORK_RE,
    NVLS_RE,
    OP_NAMES,
    PREFIX_RE,
    PROTOS,
    REDOPS,
    RING_RE,
    TREES_RE,
    TUNING_RE,
    VERSION_RE,
)

__all__ = ["NcclLog", "parse_nccl_logs", "iter_log_files", "NcclLogError"]

MAX_SAMPLES_PER_FILE = 200


class NcclLogError(OSError):
    """A log path cannot be read (missing, a directory without logs, not text, unreadable)."""


@dataclass
class NcclLog:
    """Tables parsed from NCCL debug logs (see README, "NCCL logs", for every column)."""

    collectives: pd.DataFrame
    communicators: pd.DataFrame
    topology: pd.DataFrame
    warnings: pd.DataFrame
    unparsed: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, out_dir: str | os.PathLike) -> list[str]:
        """Write the four tables (and `unparsed`) as Parquet files into `out_dir`."""
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for name in ("collectives", "communicators", "topology", "warnings", "unparsed"):
            path = os.path.join(out_dir, f"{name}.parquet")
            getattr(self, name).to_parquet(path, index=False)
            paths.append(path)
        return paths

    def summary_text(self) -> str:
        """The summary as aligned text (what `commscope nccl-log` prints)."""
        s = self.summary
        lines = [f"files: {len(s['files'])}   lines read: {s['lines_read']:,}   "
                 f"recognised: {s['lines_recognised']:,}   not recognised: "
                 f"{s['lines_not_recognised']:,}"]
        for kind, n in sorted(s["records"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {kind:<22} {n:>10,}")
        if s["samples_not_recognised"]:
            lines.append("samples of lines not recognised:")
            lines += [f"  {x}" for x in s["samples_not_recognised"][:5]]
        return "\n".join(lines)


def iter_log_files(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> list[str]:
    """Expand paths: a folder means every regular file in it (recursively), sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                           if not f.startswith("."))
            if not found:
                raise NcclLogError(f"no log files in folder {p}")
            out += found
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise NcclLogError(f"NCCL log not found: {p}")
    return out


def _open_text(path: str) -> Iterator[str]:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise NcclLogError(f"cannot read NCCL log {path}: {exc}") from exc
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


class _Parser:
    def __init__(self) -> None:
        self.colls: list[list] = []
        self.inits: list[dict] = []
        self.topo: list[dict] = []
        self.warns: list[dict] = []
        self.unparsed: list[dict] = []
        self.records: Counter = Counter()
        self.lines_read = 0
        self.lines_recognised = 0
        self.samples: list[str] = []
        self.hosts: set[str] = set()
        # (host, pid, tid) -> indices of collectives awaiting their tuning line, and tuning lines
        # awaiting their collective (versions differ in which comes first).
        self.await_tuning: dict[tuple, dict[int, list[int]]] = defaultdict(dict)
        self.orphan_tuning: dict[tuple, dict[tuple, tuple]] = defaultdict(dict)
        self.unparsed_per_file: Counter = Counter()
        self.thread_comm: dict[tuple, str] = {}

    # -- per line ---------------------------------------------------------------------------
    def feed_file(self, path: str) -> None:
        samples = 0
        try:
            fh = _open_text(path)
            with fh:
                for lineno, line in enumerate(fh, 1):
                    self.lines_read += 1
                    if "NCCL " in line and self._records(line, path, lineno):
                        self.lines_recognised += 1
                        continue
                    stripped = line.strip()
                    if not stripped or stripped[0] == "#" or _looks_like_table_row(stripped):
                        self.lines_recognised += 1
                        self.records["blank" if not stripped else "nccl_tests_output"] += 1
                        continue
                    self.records["not_recognised"] += 1
                    if samples < MAX_SAMPLES_PER_FILE:
                        samples += 1
                        self.unparsed.append({"source": path, "line": lineno,
                                              "reason": "not recognised", "text": stripped[:500]})
                        if len(self.samples) < 20:
                            self.samples.append(f"{os.path.basename(path)}:{lineno}: {stripped[:160]}")
        except (OSError, EOFError, UnicodeError) as exc:
            if self.lines_read == 0:
                raise NcclLogError(f"cannot read NCCL log {path}: {exc}") from exc
            # A truncated gzip stream: keep what was read, say where it stopped.
            self.unparsed.append({"source": path, "line": None, "reason": "read error",
                                  "text": str(exc)[:500]})
            self.records["read_error"] += 1

    def _records(self, line: str, path: str, lineno: int) -> bool:
        """Handle every NCCL record of one physical line; True if any was recognised."""
        m = LINE_START_RE.match(line)
        if m is not None and line.find("NCCL ", m.end()) < 0:
            # The common case: one clean record at the start of the line.
            host = m.group(1)
            if host not in self.hosts:
                self.hosts.add(host)
            ctx = (host, int(m.group(2)), int(m.group(3)), int(m.group(4)))
            text = line[m.end():].rstrip()
            if m.group(5) == "WARN":
                self.warns.append({"host": ctx[0], "pid": ctx[1], "tid": ctx[2],
                                   "device": ctx[3], "text": text, "source": path,
                                   "line": lineno})
                self.records["warn"] += 1
                return True
            return self._info(text, ctx, path, lineno)
        marks = []
        i = line.find("NCCL ")
        while i >= 0:
            level = line[i + 5:i + 10]
            if level in ("INFO ", "WARN "):
                marks.append((i, level[:4]))
            i = line.find("NCCL ", i + 5)
        if not marks:
            return False
        starts = []  # where each record's prefix begins (= end of the previous record's text)
        lo = 0
        for pos, _ in marks:
            m = PREFIX_RE.search(line, max(lo, pos - 200), pos)
            starts.append((m.start() if m else pos, m))
            lo = pos + 10
        any_ok = False
        for k, (pos, level) in enumerate(marks):
            end = starts[k + 1][0] if k + 1 < len(marks) else len(line)
            text = line[pos + 10:end].rstrip()
            m = starts[k][1]
            if m:
                host = m.group(1)
                if m.start() == 0 or not line[:m.start()].strip():
                    self.hosts.add(host)
                elif host not in self.hosts:
                    host = _clean_host(host, self.hosts)
                ctx = (host, int(m.group(2)), int(m.group(3)), int(m.group(4)))
            else:
                ctx = (None, None, None, None)
            if level == "WARN":
                self.warns.append({"host": ctx[0], "pid": ctx[1], "tid": ctx[2],
                                   "device": ctx[3], "text": text, "source": path,
                                   "line": lineno})
                self.records["warn"] += 1
                any_ok = True
            elif self._info(text, ctx, path, lineno):
                any_ok = True
        return any_ok

    def _info(self, text: str, ctx: tuple, path: str, lineno: int) -> bool:
        rec = self.records
        if ": opCount " in text:
            m = COLL_RE.search(text)
            if m:
                self._coll(m, ctx, path, lineno)
                rec["collective"] += 1
                return True
            return self._torn("collective", text, path, lineno)
        if " Bytes -> Algo " in text:
            m = TUNING_RE.search(text)
            if m:
                self._tuning(m, ctx)
                rec["tuning"] += 1
                return True
            return self._torn("tuning", text, path, lineno)
        if "- Init " in text:
            m = INIT_RE.search(text)
            if m:
                d = m.groupdict()
                self.inits.append({"host": ctx[0], "pid": ctx[1], "tid": ctx[2],
                                   "device": ctx[3], "comm": d["comm"], "rank": int(d["rank"]),
                                   "nranks": int(d["nranks"]), "cuda_dev": int(d["cuda_dev"]),
                                   "nvml_dev": _int(d["nvml_dev"]), "bus_id": d["bus_id"],
                                   "comm_id": d["comm_id"], "init_fn": d["fn"],
                                   "phase": d["phase"], "source": path, "line": lineno})
                self.thread_comm[ctx[:3]] = d["comm"]
                rec["comm_init"] += 1
                return True
            return self._torn("comm_init", text, path, lineno)
        for kind, key, regex in _TOPOLOGY_KINDS:
            if key in text:
                m = regex.search(text)
                if m:
                    self._topo(kind, m, ctx, path, lineno)
                    rec[f"topology:{kind}"] += 1
                    return True
                if kind in ("channels", "connection"):
                    return self._torn(kind, text, path, lineno)
        rec["other_nccl"] += 1
        return True

    def _torn(self, kind: str, text: str, path: str, lineno: int) -> bool:
        self.records[f"torn:{kind}"] += 1
        self.unparsed_per_file[path] += 1
        if self.unparsed_per_file[path] <= MAX_SAMPLES_PER_FILE:
            self.unparsed.append({"source": path, "line": lineno,
                                  "reason": f"incomplete {kind} record", "text": text[:500]})
        return True  # the line is an NCCL line; its damaged record is reported

    def _coll(self, m: Any, ctx: tuple, path: str, lineno: int) -> None:
        (nccl_op, opcount, sendbuff, recvbuff, count, datatype, redop, root, comm, nranks,
         stream) = m.groups()
        op = OP_NAMES[nccl_op]
        dt = int(datatype)
        name, esize = DTYPES.get(dt, (f"nccl_type_{dt}", None))
        redop = int(redop)
        root = int(root)
        p2p = op in ("send", "recv")
        count = int(count)
        nranks = None if nranks is None else int(nranks)
        self.colls.append([
            op, nccl_op, int(opcount, 16), count, name, esize,
            REDOPS.get(redop, f"premul_{redop}") if not p2p else None,
            root if op in ("broadcast", "reduce", "gather", "scatter") else None,
            root if p2p else None, comm, nranks, stream, sendbuff, recvbuff,
            ctx[0], ctx[1], ctx[2], ctx[3], None, None, None, path, lineno])
        idx = len(self.colls) - 1
        if not esize:
            return
        key = ctx[:3]
        # Tuning lines give bytes as count x elem, for gathers sometimes x nranks too.
        sizes = {count * esize, count * esize * (nranks or 1)}
        orphans = self.orphan_tuning.get(key)
        if orphans:
            for nbytes in sizes:
                hit = orphans.pop((nccl_op, nbytes), None)
                if hit is not None:
                    self._attach(idx, *hit)
                    return
        waiting = self.await_tuning[key]
        for nbytes in sizes:
            lst = waiting.setdefault(nbytes, [])
            lst.append(idx)
            if len(lst) > 16:  # never tuned (logs without TUNING): keep memory bounded
                del lst[:8]
        if len(waiting) > 256:
            for k in list(waiting)[:128]:
                del waiting[k]

    def _tuning(self, m: Any, ctx: tuple) -> None:
        nccl_op, nbytes, algo, proto, _time, lo, hi = m.groups()
        if algo.isdigit():
            algo = ALGOS.get(int(algo), algo)
        if proto.isdigit():
            proto = PROTOS.get(int(proto), proto)
        chans = None if lo is None else int(hi) - int(lo) + 1
        nbytes = int(nbytes)
        key = ctx[:3]
        waiting = self.await_tuning.get(key)
        idxs = waiting.pop(nbytes, None) if waiting else None
        if idxs:
            rest = []
            for idx in idxs:
                if nccl_op is None or self.colls[idx][1] == nccl_op:
                    self._attach(idx, algo, proto, chans)
                else:
                    rest.append(idx)
            if rest:
                waiting[nbytes] = rest
            return
        if nccl_op is not None:
            orphans = self.orphan_tuning[key]
            orphans[(nccl_op, nbytes)] = (algo, proto, chans)
            if len(orphans) > 256:
                for k in list(orphans)[:128]:
                    del orphans[k]

    def _attach(self, idx: int, algo: str, proto: str, chans: int | None) -> None:
        row = self.colls[idx]
        row[18], row[19], row[20] = algo, proto, chans

    def _topo(self, kind: str, m: Any, ctx: tuple, path: str, lineno: int) -> None:
        d = {k: v for k, v in m.groupdict().items() if v is not None}
        self.topo.append({"host": ctx[0], "pid": ctx[1], "tid": ctx[2], "device": ctx[3],
                          "comm": self.thread_comm.get(ctx[:3]), "kind": kind,
                          "channel": _int(d.pop("channel", None)),
                          "transport": d.pop("transport", None) if kind == "connection" else
                          (d.get("network") or d.get("net")),
                          "value": " ".join(f"{k}={v}" for k, v in d.items()) or m.group(0),
                          "source": path, "line": lineno})

    # -- tables -----------------------------------------------------------------------------
    def result(self, files: list[str]) -> NcclLog:
        colls = pd.DataFrame(self.colls, columns=_COLL_COLUMNS)
        inits = pd.DataFrame(self.inits, columns=_INIT_COLUMNS)
        topo = pd.DataFrame(self.topo, columns=_TOPO_COLUMNS)
        warns = pd.DataFrame(self.warns, columns=["host", "pid", "tid", "device", "text",
                                                  "source", "line"])
        unparsed = pd.DataFrame(self.unparsed, columns=["source", "line", "reason", "text"])
        for df in (colls, inits, topo, warns):
            if len(df):
                df["host"] = [_clean_host(h, self.hosts) for h in df["host"]]
        comms = _communicators(inits, topo)
        colls = _join_ranks(colls, comms)
        return NcclLog(colls, comms, topo, warns, unparsed, {
            "files": files,
            "lines_read": self.lines_read,
            "lines_recognised": self.lines_recognised,
            "lines_not_recognised": self.lines_read - self.lines_recognised,
            "records": dict(self.records),
            "samples_not_recognised": list(self.samples),
        })


_TOPOLOGY_KINDS = (
    ("version", "NCCL version", VERSION_RE),
    ("channels", "coll channels", CHANNELS_RE),
    ("connection", " via ", CONNECTION_RE),
    ("ring", "Ring ", RING_RE),
    ("channel_ring", "Channel ", CHANNEL_RING_RE),
    ("trees", "Trees ", TREES_RE),
    ("network", "Using network", NETWORK_RE),
    ("net_plugin", "NET/Plugin", NET_PLUGIN_RE),
    ("net_devices", ": Using ", NET_USING_RE),
    ("nvls", "NVLS", NVLS_RE),
    ("cuda_driver", "cudaDriverVersion", DRIVER_RE),
)

_COLL_COLUMNS = ["op", "nccl_op", "op_count", "count", "dtype", "elem_bytes", "redop", "root",
                 "peer", "comm", "nranks", "stream", "sendbuff", "recvbuff", "host", "pid", "tid",
                 "device", "algo", "proto", "channels", "source", "line"]
_INIT_COLUMNS = ["host", "pid", "tid", "device", "comm", "rank", "nranks", "cuda_dev", "nvml_dev",
                 "bus_id", "comm_id", "init_fn", "phase", "source", "line"]
_TOPO_COLUMNS = ["host", "pid", "tid", "device", "comm", "kind", "channel", "transport", "value",
                 "source", "line"]


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


_TABLE_TOKEN_RE = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?|N/A|[A-Za-z]\w*")


def _looks_like_table_row(s: str) -> bool:
    """An nccl-tests result row (or a fragment of one): numbers, type and op names only."""
    return (s[0].isdigit() or s[0] == "-") and all(_TABLE_TOKEN_RE.fullmatch(t) for t in s.split())


def _clean_host(h: Any, known: set[str]) -> Any:
    """Glued lines put junk before a host name (`0mew0`, `80356ljm`): use the known host it
    ends with (hosts seen at the start of a line)."""
    if not isinstance(h, str) or h in known:
        return h
    best = max((k for k in known if h.endswith(k)), key=len, default=None)
    return best or h


def _communicators(inits: pd.DataFrame, topo: pd.DataFrame) -> pd.DataFrame:
    """One row per (host, pid, comm) from the init lines, with per-communicator setup."""
    cols = ["host", "pid", "comm", "rank", "nranks", "cuda_dev", "nvml_dev", "bus_id", "comm_id",
            "init_fn", "complete", "nccl_version", "coll_channels", "collnet_channels",
            "nvls_channels", "p2p_channels", "p2p_channels_per_peer", "transports", "network",
            "source", "line"]
    if inits.empty:
        return pd.DataFrame(columns=cols)
    inits = inits.assign(complete=inits["phase"] == "COMPLETE")
    # Prefer the COMPLETE line; keep START-only communicators (an init that hung is a finding).
    inits = inits.sort_values(["complete", "line"]).drop_duplicates(["host", "pid", "comm"],
                                                                      keep="last")
    out = inits[["host", "pid", "comm", "rank", "nranks", "cuda_dev", "nvml_dev", "bus_id",
                 "comm_id", "init_fn", "complete", "source", "line"]].copy()
    versions = topo[topo["kind"] == "version"].groupby(["host", "pid"])["value"].first()
    out["nccl_version"] = [versions.get((h, p), "").removeprefix("version=") or None
                           for h, p in zip(out["host"], out["pid"])]
    chans = topo[topo["kind"] == "channels"].dropna(subset=["comm"])
    parsed = {(h, p, c): dict(kv.split("=") for kv in v.split())
              for h, p, c, v in zip(chans["host"], chans["pid"], chans["comm"], chans["value"])}
    for col, key in (("coll_channels", "coll"), ("collnet_channels", "collnet"),
                     ("nvls_channels", "nvls"), ("p2p_channels", "p2p"),
                     ("p2p_channels_per_peer", "p2p_peer")):
        out[col] = [_int(parsed.get((h, p, c), {}).get(key))
                    for h, p, c in zip(out["host"], out["pid"], out["comm"])]
    # Connection lines come from proxy threads that name no communicator: per process then.
    conn = topo[topo["kind"] == "connection"]
    joined = lambda s: ",".join(sorted(set(s)))  # noqa: E731
    by_comm = conn.dropna(subset=["comm"]).groupby(["host", "pid", "comm"])["transport"].agg(joined)
    by_proc = conn.groupby(["host", "pid"])["transport"].agg(joined)
    net = topo[topo["kind"] == "network"].groupby(["host", "pid"])["transport"].last()
    out["transports"] = [by_comm.get((h, p, c), by_proc.get((h, p))) for h, p, c in
                         zip(out["host"], out["pid"], out["comm"])]
    out["network"] = [net.get((h, p)) for h, p in zip(out["host"], out["pid"])]
    return out[cols].reset_index(drop=True)


def _join_ranks(colls: pd.DataFrame, comms: pd.DataFrame) -> pd.DataFrame:
    """Add rank, pg_size, bytes (nccl-tests S) and a per-communicator sequence number."""
    if colls.empty:
        for c in ("rank", "pg_size", "bytes", "nccl_seq"):
            colls[c] = pd.Series(dtype="Int64")
        return colls
    key = comms.set_index(["host", "pid", "comm"])
    ranks = key["rank"].to_dict()
    sizes = key["nranks"].to_dict()
    k = list(zip(colls["host"], colls["pid"], colls["comm"]))
    colls["rank"] = pd.array([ranks.get(x) for x in k], dtype="Int64")
    nranks = colls["nranks"].astype("Int64")
    colls["pg_size"] = nranks.fillna(pd.Series([sizes.get(x) for x in k], dtype="Int64"))
    mult = pd.Series(1, index=colls.index, dtype="Int64")
    gl = colls["op"].isin(GATHER_LIKE)
    mult[gl] = colls.loc[gl, "pg_size"]
    colls["bytes"] = colls["count"].astype("Int64") * colls["elem_bytes"].astype("Int64") * mult
    colls["nccl_seq"] = colls.groupby(["host", "pid", "comm"], dropna=False).cumcount()
    for c in ("count", "op_count", "nranks", "elem_bytes", "root", "peer", "pid", "tid",
              "device", "channels", "line"):
        colls[c] = colls[c].astype("Int64")
    return colls


def parse_nccl_logs(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> NcclLog:
    """Parse NCCL debug logs (plain or gzip; a folder means every file in it).

    Returns an `NcclLog` with DataFrames `collectives`, `communicators`, `topology`,
    `warnings`, `unparsed` and a `summary` dict (lines read, records per kind, lines not
    recognised with samples). Raises `NcclLogError` only for paths that cannot be read.
    """
    files = iter_log_files(paths)
    parser = _Parser()
    for f in files:
        parser.feed_file(f)
    return parser.result(files)
