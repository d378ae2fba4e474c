"""Parse NCCL debug logs (NCCL_DEBUG=INFO, any version 2.4 to current) into tables.

Real logs are damaged: launcher and logger prefixes, colour codes, interleaved ranks and threads,
torn and glued lines, records wrapped onto the next line, prose in between, gzip, huge files. The
file is read in blocks of whole lines (bounded memory, buffers reused); each block is scanned
on a worker thread by the compiled kernel or its numpy twin (`_nccl_scan`), and only the rare
lines that need it go to the Python record parser (`_nccl_records`). Tuning lines are attached
to their collectives with sorted-array joins (`_nccl_tuning`). Nothing raises on content; what
was skipped is counted, with samples.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pandas as pd

from . import _nccl_scan
from ._nccl_records import MAX_SAMPLES_PER_FILE, RecordParser, clean_host
from ._nccl_scan import PAD_BYTES, PLAIN_KINDS, BlockScan, scan_block
from ._nccl_tables import (
    INIT_COLUMNS,
    TOPO_COLUMNS,
    collectives_table,
    communicators_table,
)

__all__ = ["NcclLog", "parse_nccl_logs", "iter_log_files", "NcclLogError"]

#: Bytes read per block (a block is cut at a line end; memory stays bounded by a few blocks).
BLOCK_BYTES = 4 << 20
_THREADS = max(1, min(4, os.cpu_count() or 1))
_ANSI_RE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


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


def _open_binary(path: str) -> IO[bytes]:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    except OSError as exc:
        raise NcclLogError(f"cannot read NCCL log {path}: {exc}") from exc


def _open_text(path: str) -> IO[str]:
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8", errors="replace")


def _blocks(fh: IO[bytes], block_bytes: int, error: list,
            free: list | None = None) -> Iterator[bytearray]:
    """Blocks of whole lines, each followed by the scanner's PAD_BYTES (the file's last line
    gets a newline if it lacks one). Each block is read straight into its own buffer, after
    the previous block's unfinished line (no second copy); buffers the caller is done with
    and put in `free` are read into again (fresh memory costs more than the read). A read
    error (a truncated gzip stream) ends the blocks and is put in `error`; the lines before
    it are yielded."""
    carry = b""
    while True:
        buf = _buffer(free, len(carry) + block_bytes + len(PAD_BYTES))
        buf[:len(carry)] = carry
        try:
            n = fh.readinto(memoryview(buf)[len(carry):len(carry) + block_bytes])
        except (OSError, EOFError, ValueError) as exc:
            error.append(exc)
            n = 0
        if not n:
            if carry:
                yield bytearray(carry + b"\n" + PAD_BYTES)
            return
        end = len(carry) + n
        cut = buf.rfind(b"\n", 0, end) + 1
        if cut == 0:  # one line longer than a block: keep reading
            carry = bytes(buf[:end])
            continue
        carry = bytes(buf[cut:end])
        buf[cut:cut + len(PAD_BYTES)] = PAD_BYTES
        del buf[cut + len(PAD_BYTES):]
        yield buf


def _buffer(free: list | None, size: int) -> bytearray:
    """A buffer of `size` bytes: a free one resized (within its allocation: no copy), or new."""
    while free:
        buf = free.pop()
        try:
            if len(buf) < size:
                buf.extend(bytes(size - len(buf)))
            else:
                del buf[size:]
            return buf
        except BufferError:  # still viewed somewhere: leave it to the garbage collector
            continue
    return bytearray(size)


def _strip_ansi(block: bytes | bytearray) -> bytes:
    """`block` without colour codes. A code starts at ESC and holds no ESC, so matching at each
    ESC (found by memchr) is what `re.sub` does, without the regex walking every byte while
    holding the GIL."""
    view, parts, pos = memoryview(block), [], 0
    i = block.find(b"\x1b")
    while i >= 0:
        m = _ANSI_RE.match(block, i)
        if m:
            parts.append(view[pos:i])
            pos = m.end()
        i = block.find(b"\x1b", i + 1)
    parts.append(view[pos:])
    return b"".join(parts)


def _scan(block: bytes | bytearray) -> tuple[bytes | bytearray, BlockScan]:
    if b"\x1b" in block:  # colour codes (they never contain a newline)
        cscan = _nccl_scan._CSCAN
        if cscan is not None and isinstance(block, bytearray):
            del block[cscan.strip_ansi(block):]  # in place: no copy of the block
        else:
            block = _strip_ansi(block)
    if not block.isascii():
        block = block.decode("utf-8", "replace").encode("utf-8")
    return block, scan_block(block)


class _Parser:
    def __init__(self) -> None:
        self.rec = RecordParser()
        self.fast_c: list[dict] = []
        self.fast_t: list[dict] = []
        self.counts: Counter = Counter()
        self.lines_read = 0
        self.not_recognised = 0
        self.samples: list[str] = []

    def feed_file(self, path: str, file_idx: int, block_bytes: int = BLOCK_BYTES) -> None:
        base = 0  # lines before the current block
        pending = None  # the previous block's last line, when it awaits its next line
        error: list[Exception] = []
        with _open_binary(path) as fh, ThreadPoolExecutor(_THREADS) as pool:
            # Blocks are scanned on worker threads (numpy and Arrow release the GIL) while this
            # thread handles the previous block's rare lines; at most _THREADS + 1 blocks are
            # in memory, and their buffers are read into again.
            inflight: deque = deque()
            free: list[bytearray] = []
            for block in _blocks(fh, block_bytes, error, free):
                inflight.append((block, pool.submit(_scan, block)))
                while len(inflight) > _THREADS:
                    pending = self._next(inflight, free, path, file_idx, base, pending)
                    base += self.last_n
            while inflight:
                pending = self._next(inflight, free, path, file_idx, base, pending)
                base += self.last_n
        if error:
            if base == 0:
                raise NcclLogError(f"cannot read NCCL log {path}: {error[0]}") from error[0]
            # A truncated gzip stream: keep what was read, say where it stopped.
            self.rec.unparsed.append({"source": path, "line": None, "reason": "read error",
                                      "text": str(error[0])[:500]})
            self.counts["read_error"] += 1
        if pending is not None:
            self._python_line(pending[0], path, file_idx, pending[1], None)

    def _next(self, inflight: deque, free: list, path: str, file_idx: int, base: int,
              pending: tuple | None) -> tuple | None:
        """Handle the oldest scanned block, then give its buffer back for reading."""
        buf, fut = inflight.popleft()
        pending = self._block(*fut.result(), path, file_idx, base, pending)
        free.append(buf)
        return pending

    def _python_line(self, text: str, path: str, file_idx: int, lineno: int,
                     nxt: str | None) -> bool:
        ok, consumed = self.rec.line(text, path, file_idx, lineno, nxt)
        if not ok:
            self.not_recognised += 1
            self.counts["not_recognised"] += 1
            self.rec.sample(path, lineno, text.strip(), self.samples)
        return consumed

    def _block(self, block: bytes, s: BlockScan, path: str, file_idx: int, base: int,
               pending: tuple | None) -> tuple | None:
        self.last_n = n = s.n_lines
        self.lines_read += n

        def text(i: int) -> str:
            start, end = s.bounds[i]
            return block[start:end].decode("utf-8")

        consumed = set()
        if pending is not None and self._python_line(pending[0], path, file_idx, pending[1],
                                                     text(0)):
            consumed.add(0)
        new_pending = None
        for i in s.python_lines.tolist():
            if i in consumed:
                continue
            if i == n - 1:
                new_pending = (text(i), base + i + 1)
            elif self._python_line(text(i), path, file_idx, base + i + 1, text(i + 1)):
                consumed.add(i + 1)
        for part, out in ((s.colls, self.fast_c), (s.tunings, self.fast_t)):
            m = len(part["line"])
            if m:
                part["line"] += base + 1  # in place: the scanner's own copy
                # One value per block (every record alone on its line): expanded when joined.
                part["file_idx"], part["sub"] = file_idx, 0
                out.append(part)
        c = self.counts
        c["collective"] += len(s.colls["line"])
        c["tuning"] += len(s.tunings["line"])
        c["other_nccl"] += s.other_nccl
        kinds = s.plain_kind
        if consumed:
            keep = ~np.isin(s.plain_lines, list(consumed))
            kinds, plain = kinds[keep], s.plain_lines[keep]
        else:
            plain = s.plain_lines
        per = np.bincount(kinds, minlength=4)
        c["blank"] += int(per[0])
        c["nccl_tests_output"] += int(per[1] + per[2])
        unrec = plain[kinds == PLAIN_KINDS.index("not_recognised")]
        c["not_recognised"] += len(unrec)
        self.not_recognised += len(unrec)
        budget = MAX_SAMPLES_PER_FILE - self.rec.unparsed_per_file[path]
        for i in unrec[:max(budget, 0)].tolist():
            self.rec.sample(path, base + i + 1, text(i).strip(), self.samples)
        return new_pending

    def result(self, files: list[str]) -> NcclLog:
        rec = self.rec
        inits = pd.DataFrame(rec.inits, columns=INIT_COLUMNS)
        topo = pd.DataFrame(rec.topo, columns=TOPO_COLUMNS)
        warns = pd.DataFrame(rec.warns, columns=["host", "pid", "tid", "device", "text",
                                                 "source", "line"])
        unparsed = pd.DataFrame(rec.unparsed, columns=["source", "line", "reason", "text"])

        def comms_of() -> pd.DataFrame:
            # Called once the collectives' host names have taught `rec.hosts` the real ones.
            for df in (inits, topo, warns):
                if len(df):
                    df["host"] = [clean_host(h, rec.hosts) for h in df["host"]]
            return communicators_table(inits, topo)

        colls, comms = collectives_table(self.fast_c, self.fast_t, rec, files, comms_of)
        records = Counter({k: v for k, v in self.counts.items() if v})
        records.update({k: v for k, v in rec.records.items() if v})
        return NcclLog(colls, comms, topo, warns, unparsed, {
            "files": files,
            "lines_read": self.lines_read,
            "lines_recognised": self.lines_read - self.not_recognised,
            "lines_not_recognised": self.not_recognised,
            "records": dict(records),
            "samples_not_recognised": list(self.samples),
        })


def parse_nccl_logs(paths: Iterable[str | os.PathLike] | str | os.PathLike,
                    block_bytes: int = BLOCK_BYTES) -> NcclLog:
    """Parse NCCL debug logs (plain or gzip; a folder means every file in it).

    Returns an `NcclLog` with DataFrames `collectives`, `communicators`, `topology`,
    `warnings`, `unparsed` and a `summary` dict (lines read, records per kind, lines not
    recognised with samples). Files are read in blocks of `block_bytes`, so memory is bounded
    by the tables, not the log. Raises `NcclLogError` only for paths that cannot be read.
    """
    files = iter_log_files(paths)
    parser = _Parser()
    for i, f in enumerate(files):
        parser.feed_file(f, i, block_bytes)
    return parser.result(files)
