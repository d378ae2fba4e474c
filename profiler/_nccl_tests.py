"""Parse nccl-tests `*_perf` output into measurements (calibration input).

Handles the current layout (size, count, type, redop, root, then time/algbw/busbw/#wrong out of
place and in place), older layouts without redop/root or with an `error` column, `N/A` in-place
values, repeated headers and several tests in one file, and output whose rows were split and
glued to NCCL log lines (NCCL_DEBUG=INFO in the same stream): NCCL records are cut out and the
remaining fragments are reassembled in order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import pandas as pd

from ._nccl_formats import PREFIX_RE
from ._nccl_log import _open_text, iter_log_files
from ._nccl_records import clean_host

__all__ = ["parse_nccl_tests", "MEASUREMENT_COLUMNS"]

MEASUREMENT_COLUMNS = ["collective", "nranks", "nodes", "gpu", "dtype", "redop", "root", "bytes",
                       "count", "placement", "time_us", "algbw_GBps", "busbw_GBps", "wrong",
                       "source", "line"]

_BINARIES = {
    "all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
    "broadcast": "broadcast", "reduce": "reduce", "alltoall": "all_to_all",
    "all_to_all": "all_to_all", "sendrecv": "sendrecv", "gather": "gather", "scatter": "scatter",
    "hypercube": "hypercube",
}
_TYPES = {"int8": "int8", "uint8": "uint8", "int32": "int32", "uint32": "uint32",
          "int64": "int64", "uint64": "uint64", "half": "float16", "float": "float32",
          "double": "float64", "bfloat16": "bfloat16", "f8e4m3": "float8_e4m3fn",
          "f8e5m2": "float8_e5m2", "int": "int32"}
_TEST_RE = re.compile(r"Collective test starting: (\w+?)_perf|(\w+?)_perf\b")
# `Group` is absent from older versions' device lines.
_DEVICE_RE = re.compile(r"#\s+Rank\s+(\d+)\s+(?:Group\s+\d+\s+)?Pid\s+\d+\s+on\s+(\S+)\s+device"
                        r"\s+\d+\s+\[[^\]]*\]\s+(.+?)\s*$")
# `# nThread 1 nGpus 4 ...`: ranks per process, the fallback when no device lines are printed.
_THREADS_RE = re.compile(r"nThread\s+(\d+)\s+nGpus\s+(\d+)")
_TOKEN_RE = re.compile(r"^(-?\d+(\.\d+)?([eE][+-]?\d+)?|N/A|[A-Za-z][\w]*)$")
_NCCL_MARK_RE = re.compile(r"NCCL (INFO|WARN) ")


def _strip_nccl(line: str, hosts: set[str]) -> str:
    """The text of a line before any NCCL log record glued into it.

    A glued record's host name runs into the fragment before it (`-1mew0:64904:...`); known host
    names (from device lines and clean log lines, collected in `hosts`) tell where it starts.
    """
    m = _NCCL_MARK_RE.search(line)
    if not m:
        return line
    p = PREFIX_RE.search(line, max(0, m.start() - 200), m.start())
    if p is None:
        return line[:m.start()]
    host = p.group(1)
    if p.start() == 0:
        hosts.add(host)
        return ""
    known = clean_host(host, hosts)
    if known != host:
        return line[:p.start(1) + len(host) - len(known)]
    return line[:p.start()]


def _num(tok: str) -> float | None:
    if tok == "N/A":
        return None
    try:
        return float(tok)
    except ValueError:
        return None


class _Test:
    """State of one nccl-tests run inside a file."""

    def __init__(self, collective: str | None) -> None:
        self.collective = collective
        self.ranks: dict[int, tuple[str, str]] = {}
        self.columns: list[str] | None = None
        self.pending: list[str] = []
        self.pending_line = 0
        self.local_ranks: int | None = None


def _header_columns(text: str) -> list[str] | None:
    toks = text.lstrip("#").split()
    if len(toks) < 4 or toks[0] != "size" or "time" not in toks:
        return None
    return toks


def parse_nccl_tests(paths: Iterable[str | os.PathLike] | str | os.PathLike) -> pd.DataFrame:
    """Measurements from nccl-tests output files: one row per size and placement.

    Columns: collective (torch-style), nranks, nodes, gpu, dtype, redop, root, bytes (the
    nccl-tests size S), count, placement ('out_of_place' / 'in_place'), time_us, algbw_GBps,
    busbw_GBps, wrong, source, line. `df.attrs["avg_busbw_GBps"]` maps source -> the reported
    average bus bandwidth.
    """
    rows: list[dict] = []
    avg: dict[str, float] = {}
    for path in iter_log_files(paths):
        default = _collective_from_name(os.path.basename(path))
        test = _Test(default)
        hosts: set[str] = set()
        with _open_text(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                line = _strip_nccl(raw, hosts).rstrip("\n")
                s = line.strip()
                if not s:
                    continue
                if s.startswith("#"):
                    m = _TEST_RE.search(s)
                    if m and "Collective test starting" in s:
                        test = _Test(_BINARIES.get(m.group(1), m.group(1)))
                        continue
                    t = _THREADS_RE.search(s)
                    if t:
                        test.local_ranks = int(t.group(1)) * int(t.group(2))
                        continue
                    d = _DEVICE_RE.match(s)
                    if d:
                        test.ranks[int(d.group(1))] = (d.group(2), d.group(3))
                        hosts.add(d.group(2))
                        continue
                    cols = _header_columns(s)
                    if cols:
                        test.columns = cols
                        test.pending = []
                        continue
                    if "Avg bus bandwidth" in s:
                        v = _num(s.rsplit(":", 1)[-1].strip())
                        if v is not None:
                            avg[path] = v
                    continue
                if test.collective is None:
                    m = _TEST_RE.search(s)
                    if m:
                        test.collective = _BINARIES.get(m.group(2), m.group(2))
                if test.columns is None:
                    continue
                toks = s.split()
                if not all(_TOKEN_RE.match(t) for t in toks):
                    test.pending = []  # prose inside the table: drop a partial row
                    continue
                if not test.pending:
                    if not toks[0].isdigit():
                        continue
                    test.pending_line = lineno
                test.pending += toks
                n = len(test.columns)
                while len(test.pending) >= n:
                    row, test.pending = test.pending[:n], test.pending[n:]
                    rows += _rows(test, row, path, test.pending_line)
                    test.pending_line = lineno
    df = pd.DataFrame(rows, columns=MEASUREMENT_COLUMNS)
    for c in ("nranks", "nodes", "root", "bytes", "count", "wrong", "line"):
        df[c] = df[c].astype("Int64")
    df.attrs["avg_busbw_GBps"] = avg
    return df


def _collective_from_name(name: str) -> str | None:
    m = re.search(r"(all_reduce|all_gather|reduce_scatter|alltoall|all_to_all|broadcast|"
                  r"reduce|sendrecv|gather|scatter)", name)
    return _BINARIES.get(m.group(1)) if m else None


def _rows(test: _Test, toks: list[str], path: str, lineno: int) -> list[dict]:
    cols = test.columns or []
    # The header names each placement's block once: size count type [redop] [root] then
    # (time algbw busbw [#wrong|error]) twice.
    lead = cols.index("time")
    per = (len(cols) - lead) // 2
    base = dict(zip(cols[:lead], toks[:lead]))
    if not base.get("size", "").isdigit():
        return []
    hosts = {h for h, _ in test.ranks.values()}
    gpus = sorted({g for _, g in test.ranks.values()})
    out = []
    for k, placement in enumerate(("out_of_place", "in_place")):
        block = toks[lead + k * per: lead + (k + 1) * per]
        if len(block) < 3:
            continue
        t, algbw, busbw = (_num(x) for x in block[:3])
        if t is None:  # N/A: not measured in this placement
            continue
        wrong = _num(block[3]) if len(block) > 3 else None
        root = base.get("root")
        out.append({
            "collective": test.collective, "nranks": len(test.ranks) or test.local_ranks,
            "nodes": len(hosts) or None, "gpu": gpus[0] if len(gpus) == 1 else
            (",".join(gpus) or None),
            "dtype": _TYPES.get(base.get("type", ""), base.get("type")),
            "redop": None if base.get("redop") in (None, "none", "N/A") else base.get("redop"),
            "root": int(root) if root not in (None, "N/A", "none") and
            root.lstrip("-").isdigit() else None,
            "bytes": int(base["size"]), "count": int(base["count"]) if
            base.get("count", "").isdigit() else None,
            "placement": placement, "time_us": t, "algbw_GBps": algbw, "busbw_GBps": busbw,
            "wrong": None if wrong is None else int(wrong), "source": path, "line": lineno,
        })
    return out
