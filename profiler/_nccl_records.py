"""The Python record parser for the NCCL log lines the vectorised scanner hands over.

Those are the rare lines: several records on one line (torn by concurrent writers), records
wrapped onto the next line, init/topology/version lines, WARN lines, unusual prefixes. Each
`NCCL INFO`/`NCCL WARN` record anywhere in a line is found, recognised by kind, and either kept
or reported (`torn:<kind>` with a sample in `unparsed`); nothing raises on content.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from ._nccl_formats import (
    ALGOS,
    CHANNEL_RING_RE,
    CHANNELS_RE,
    COLL_RE,
    CONNECTION_RE,
    DRIVER_RE,
    INIT_RE,
    NET_PLUGIN_RE,
    NET_USING_RE,
    NETWORK_RE,
    NVLS_RE,
    OP_NAMES,
    PREFIX_RE,
    PROTOS,
    RING_RE,
    TREES_RE,
    TUNING_RE,
    VERSION_RE,
)

__all__ = ["RecordParser", "clean_host", "MAX_SAMPLES_PER_FILE"]

MAX_SAMPLES_PER_FILE = 200
_MARK_RE = re.compile(r"NCCL (INFO|WARN) ")
# A record cut right after (or inside) its first words: `AllReduce:`, `AllReduce: opCo`.
_OP_HEAD_RE = re.compile(rf"(?:{'|'.join(sorted(OP_NAMES, key=len, reverse=True))}):")

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
# Record kinds whose fields are all needed: a failed match there is damage, not chatter.
_STRICT = {"collective": COLL_RE, "tuning": TUNING_RE, "comm_init": INIT_RE}


def clean_host(h: Any, known: set[str]) -> Any:
    """Glued lines put junk before a host name (`0mew0`, `80356ljm`): use the known host it
    ends with (hosts seen at the start of a line)."""
    if not isinstance(h, str) or h in known:
        return h
    best = max((k for k in known if h.endswith(k)), key=len, default=None)
    return best or h


_INT64_MAX = (1 << 63) - 1


def _fits_int64(m: Any, ctx: tuple) -> bool:
    """Every number of a COLL or TUNING match and its prefix fits the tables' int64 columns (a
    damaged line can hold any run of digits). Digit-only fields are decimal; opCount is hex."""
    d = m.groupdict()
    op_count = d.get("opcount")
    if op_count is not None and int(op_count, 16) > _INT64_MAX:
        return False
    return all(int(v) <= _INT64_MAX for v in m.groups() if v and v.isdigit()) and \
        all(v is None or v <= _INT64_MAX for v in ctx[1:])


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _kind(text: str) -> str | None:
    if ": opCount " in text:
        return "collective"
    if " Bytes -> Algo " in text:
        return "tuning"
    if "- Init " in text:
        return "comm_init"
    return None


class RecordParser:
    """Accumulates rows from the lines it is given (see the module doc)."""

    def __init__(self) -> None:
        self.colls: list[tuple] = []     # (match, ctx, file_idx, line, sub)
        self.tunings: list[tuple] = []   # (match, ctx, file_idx, line, sub)
        self.inits: list[dict] = []
        self.topo: list[dict] = []
        self.warns: list[dict] = []
        self.unparsed: list[dict] = []
        self.records: Counter = Counter()
        self.hosts: set[str] = set()
        self.thread_comm: dict[tuple, str] = {}
        self.unparsed_per_file: Counter = Counter()

    def line(self, line: str, path: str, file_idx: int, lineno: int,
             nxt: str | None) -> tuple[bool, bool]:
        """Handle every record of one physical line.

        Returns (recognised, consumed_next): the second is True when the line's last record
        was wrapped and the whole next line was its continuation.
        """
        marks = [(m.start(), m.group(1)) for m in _MARK_RE.finditer(line)]
        if not marks:
            return False, False
        starts = []  # where each record's prefix begins (= end of the previous record's text)
        lo = 0
        for pos, _ in marks:
            m = PREFIX_RE.search(line, max(lo, pos - 200), pos)
            start = m.start() if m else pos
            if m and m.start() > 0:  # junk glued before the host: a known host tells where
                known = clean_host(m.group(1), self.hosts)
                start += len(m.group(1)) - len(known)
            starts.append((start, m))
            lo = pos + 10
        consumed = False
        for k, (pos, level) in enumerate(marks):
            end = starts[k + 1][0] if k + 1 < len(marks) else len(line)
            text = line[pos + 10:end].rstrip()
            m = starts[k][1]
            if m:
                host = m.group(1)
                if m.start() == 0 or not line[:m.start()].strip():
                    self.hosts.add(host)
                elif host not in self.hosts:
                    host = clean_host(host, self.hosts)
                ctx = (host, int(m.group(2)), int(m.group(3)), int(m.group(4)))
            else:
                ctx = (None, None, None, None)
            where = (path, file_idx, lineno, k)
            if level == "WARN":
                self.warns.append({"host": ctx[0], "pid": ctx[1], "tid": ctx[2],
                                   "device": ctx[3], "text": text, "source": path,
                                   "line": lineno})
                self.records["warn"] += 1
                continue
            kind = _kind(text)
            if k == len(marks) - 1 and nxt and (kind or _OP_HEAD_RE.match(text)) and \
                    not (kind and _STRICT[kind].search(text)):
                # Cut at the line end (a terminal's or a paste's wrap): try the next line.
                for want in [kind] if kind else ["collective", "tuning"]:
                    joined, whole = self._unwrap(want, text, nxt)
                    if joined is not None:
                        text, consumed = joined, whole
                        self.records[f"wrapped:{want}"] += 1
                        kind = _kind(text)
                        break
            self._info(text, ctx, where, kind)
        return True, consumed

    def _unwrap(self, kind: str, text: str, nxt: str) -> tuple[str | None, bool]:
        """Join a record cut at the line end with the start of the next line (up to the next
        line's first record) when that completes it."""
        m = _MARK_RE.search(nxt)
        cont = nxt
        if m:
            p = PREFIX_RE.search(nxt, max(0, m.start() - 200), m.start())
            cut = p.start() if p else m.start()
            if p is not None:
                known = clean_host(p.group(1), self.hosts)
                if known != p.group(1):
                    cut = p.start(1) + len(p.group(1)) - len(known)
            cont = nxt[:cut]
        cont = cont.rstrip()
        if not cont.strip():
            return None, False
        for joined in (text + cont, text.rstrip() + " " + cont.lstrip()):
            hit = _STRICT[kind].search(joined)
            # `comm 0xa` + `[nranks=2]` glued would make the pointer `0xa[nranks=2]`.
            if hit and not joined[hit.end():].strip() and "[" not in (hit.groupdict().get(
                    "comm") or ""):
                return joined, m is None
        return None, False

    def _info(self, text: str, ctx: tuple, where: tuple, kind: str | None) -> None:
        rec = self.records
        path, file_idx, lineno, sub = where
        if kind is not None:
            m = _STRICT[kind].search(text)
            if not m:
                return self._torn(kind, text, path, lineno)
            if not _fits_int64(m, ctx):
                return self._skip(f"out_of_range:{kind}", f"{kind} record with a number "
                                  "beyond int64", text, path, lineno)
            rec[kind] += 1
            if kind == "collective":
                self.colls.append((m, ctx, file_idx, lineno, sub))
            elif kind == "tuning":
                self.tunings.append((m, ctx, file_idx, lineno, sub))
            else:
                d = m.groupdict()
                self.inits.append({"host": ctx[0], "pid": ctx[1], "tid": ctx[2],
                                   "device": ctx[3], "comm": d["comm"], "rank": int(d["rank"]),
                                   "nranks": int(d["nranks"]), "cuda_dev": int(d["cuda_dev"]),
                                   "nvml_dev": _int(d["nvml_dev"]), "bus_id": d["bus_id"],
                                   "comm_id": d["comm_id"], "init_fn": d["fn"],
                                   "phase": d["phase"], "source": path, "line": lineno})
                self.thread_comm[ctx[:3]] = d["comm"]
            return
        for tkind, key, regex in _TOPOLOGY_KINDS:
            if key in text:
                m = regex.search(text)
                if m:
                    self._topo(tkind, m, ctx, path, lineno)
                    rec[f"topology:{tkind}"] += 1
                    return
                if tkind in ("channels", "connection"):
                    return self._torn(tkind, text, path, lineno)
        rec["other_nccl"] += 1

    def _torn(self, kind: str, text: str, path: str, lineno: int) -> None:
        self._skip(f"torn:{kind}", f"incomplete {kind} record", text, path, lineno)

    def _skip(self, count: str, reason: str, text: str, path: str, lineno: int) -> None:
        """A record that cannot go in the tables: counted, and kept in `unparsed`."""
        self.records[count] += 1
        self.unparsed_per_file[path] += 1
        if self.unparsed_per_file[path] <= MAX_SAMPLES_PER_FILE:
            self.unparsed.append({"source": path, "line": lineno, "reason": reason,
                                  "text": text[:500]})

    def _topo(self, kind: str, m: Any, ctx: tuple, path: str, lineno: int) -> None:
        d = {k: v for k, v in m.groupdict().items() if v is not None}
        self.topo.append({"host": ctx[0], "pid": ctx[1], "tid": ctx[2], "device": ctx[3],
                          "comm": self.thread_comm.get(ctx[:3]), "kind": kind,
                          "channel": _int(d.pop("channel", None)),
                          "transport": d.pop("transport", None) if kind == "connection" else
                          (d.get("network") or d.get("net")),
                          "value": " ".join(f"{k}={v}" for k, v in d.items()) or m.group(0),
                          "source": path, "line": lineno})

    def coll_rows(self) -> list[tuple]:
        """Collectives as tuples (nccl_op, opcount, sendbuff, recvbuff, count, datatype, redop,
        root, comm, nranks, stream, host, pid, tid, device, file_idx, line, sub)."""
        return [m.groups() + ctx + (f, ln, sub) for m, ctx, f, ln, sub in self.colls]

    def tuning_rows(self) -> list[tuple]:
        """Tuning lines as tuples (nccl_op, bytes, algo, proto, channels, host, pid, tid,
        device, file_idx, line, sub), numeric algorithm/protocol ids mapped to names."""
        out = []
        for m, ctx, f, ln, sub in self.tunings:
            nccl_op, nbytes, algo, proto, _time, lo, hi = m.groups()
            if algo.isdigit():
                algo = ALGOS.get(int(algo), algo)
            if proto.isdigit():
                proto = PROTOS.get(int(proto), proto)
            chans = -1 if lo is None else int(hi) - int(lo) + 1
            out.append((nccl_op, int(nbytes), algo, proto, chans) + ctx + (f, ln, sub))
        return out

    def sample(self, path: str, lineno: int, text: str, samples: list[str]) -> None:
        """Keep a line that was not recognised (first MAX_SAMPLES_PER_FILE per file)."""
        self.unparsed_per_file[path] += 1
        if self.unparsed_per_file[path] <= MAX_SAMPLES_PER_FILE:
            self.unparsed.append({"source": path, "line": lineno, "reason": "not recognised",
                                  "text": text[:500]})
            if len(samples) < 20:
                samples.append(f"{os.path.basename(path)}:{lineno}: {text[:160]}")
