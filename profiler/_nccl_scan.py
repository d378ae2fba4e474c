"""Vectorised NCCL log scanner: raw byte blocks, no Python work per clean line.

A block of complete lines is scanned as one byte array by a kernel: every `NCCL INFO`/`NCCL WARN`
marker is a space followed by those bytes, and every field of a clean COLL or TUNING record is
the k-th space-separated token after its marker, so fields are located, checked (labels,
digits) and converted without a regex. Two kernels apply the same rules: the compiled one
(profiler/_cscan.c: one pass, GIL released) when it is built, else numpy (`_numpy_kernel`, with
`_nccl_numbers`), the reference a test holds the compiled one to, output for output.
COMMSCOPE_NO_NATIVE=1 forces numpy. The rest is shared: the `host:pid:tid [dev]` prefixes
repeat (one per thread), so they are dictionary-encoded and only the distinct ones are parsed;
what does not pass the checks (several records on one line, torn or wrapped records, init and
topology lines, WARN lines, unusual prefixes) is handed back as line indices for the Python
record parser, a small minority in any real log; lines without a marker are classified (blank,
`#`, an nccl-tests table row, or not recognised) with one RE2 pass over just those lines.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._native import native
from ._nccl_formats import OP_NAMES
from ._nccl_numbers import coll_fields, tuning_fields, word_view
from ._nccl_records import _TOPOLOGY_KINDS

__all__ = ["BlockScan", "scan_block", "KERNEL", "PAD_BYTES", "ragged_strings",
           "NCCL_OPS", "PLAIN_KINDS"]

#: Kinds of lines without an NCCL record (codes of `BlockScan.plain_kind`).
PLAIN_KINDS = ("blank", "comment", "table_row", "not_recognised")

#: NCCL collective names, in a fixed order: the fast path's `nccl_op` codes index this.
NCCL_OPS = pa.array(sorted(OP_NAMES))
# Keywords of the INIT/topology/version lines the Python parser reads field by field.
_DETAIL_RE = "|".join(re.escape(key) for key in
                      ("- Init ", *(key for _, key, _ in _TOPOLOGY_KINDS)))
_NUM = r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
# An nccl-tests result row (or a fragment of one): numbers first, then numbers/type/op names.
_TABLE_ROW_RE = rf"^\s*{_NUM}(?:\s+(?:{_NUM}|N/A|[A-Za-z]\w*))*\s*$"
_PAD = 64  # bytes of padding so fixed-offset reads never leave the array
_SENTINELS = 24
PAD_BYTES = b" " * _SENTINELS + b"\0" * (_PAD - _SENTINELS)
# The compiled kernel (profiler/_cscan.c), or None: not built, or COMMSCOPE_NO_NATIVE=1.
_CSCAN = native("_cscan")
#: Which kernel `scan_block` uses by default.
KERNEL = "native" if _CSCAN is not None else "numpy"


@dataclass
class BlockScan:
    """What the vectorised pass got out of one block (line indices are block-relative)."""

    colls: dict          # column name -> array, one row per clean COLL record
    tunings: dict        # column name -> array, one row per clean TUNING record
    python_lines: np.ndarray  # lines for the Python record parser (damaged/rare)
    bounds: dict         # line -> (start, end) byte offsets (end before "\r\n" / "\n") of the
                         # lines the caller reads: 0, the Python lines and the ones after
                         # them, and the lines not recognised (samples)
    other_nccl: int      # clean INFO lines of no table (proxy, alloc, RAS chatter ...)
    plain_lines: np.ndarray   # lines without an NCCL marker ...
    plain_kind: np.ndarray    # ... and their kind: PLAIN_KINDS[code]
    n_lines: int


def ragged_strings(a: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Array:
    """Arrow strings a[start[i]:end[i]] gathered into one buffer (no Python per string).

    The compiled kernel copies the spans in one loop. Without it they are cut out of the
    block's own buffer: it is viewed as strings [gap, span, gap, span, ...] and Arrow's take
    copies the spans, which needs them in order and apart (what every caller has: one field
    per record, records in log order, one record per line)."""
    if _CSCAN is not None:
        offs, data = _CSCAN.gather(a, np.ascontiguousarray(start, np.int64),
                                   np.ascontiguousarray(end, np.int64), pa.allocate_buffer)
        return pa.LargeStringArray.from_buffers(len(start), offs, data)
    n = len(start)
    if not (bool((end >= start).all()) and bool((start[1:] >= end[:-1]).all())):
        raise ValueError("ragged_strings: spans out of order or overlapping")
    offs = np.empty(2 * n + 1, np.int64)
    offs[0] = 0
    offs[1::2] = start
    offs[2::2] = end
    every = pa.LargeStringArray.from_buffers(2 * n, pa.py_buffer(offs), pa.py_buffer(a))
    return every.take(pa.array(np.arange(1, 2 * n, 2)))


@dataclass
class _Kernel:
    """What a kernel (numpy's or the compiled one) finds in a block; the rest of the scan
    (prefixes, strings, chatter and plain lines) is shared. Line indices are block-relative.

    `rec`: every COLL/TUNING candidate record in log order (span_s/span_e: the prefix text
    before its marker, tok_s: where the prefix token may begin, ls: its line's start, line).
    `coll`/`tun`: the records whose fields passed every check, `pos` indexing `rec`, string
    fields as byte spans (*_s, *_e). `python`: lines for the record parser (unsorted)."""

    l_start: np.ndarray
    l_end: np.ndarray
    plain: np.ndarray
    python: np.ndarray
    chatter: np.ndarray
    rec: dict
    coll: dict
    tun: dict


_REC = ("span_s", "span_e", "tok_s", "ls", "line")
_COLL = ("pos", "op_code", "op_count", "count", "dtype_code", "redop", "root", "nranks",
         "sb_s", "sb_e", "rb_s", "rb_e", "cm_s", "cm_e", "st_s", "st_e")
_TUN = ("pos", "op_code", "nbytes", "channels", "al_s", "al_e", "pr_s", "pr_e")
_OP_BYTES = tuple(s.encode() for s in NCCL_OPS.to_pylist())


_SCRATCH = threading.local()


def _scratch(nbytes: int) -> pa.Buffer:
    """This thread's buffer for the compiled kernel's tables, reused block after block (fresh
    memory costs more than the scan itself); what outlives `scan_block` is copied out."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _SCRATCH.buf = pa.allocate_buffer((nbytes + nbytes // 4) // 8 * 8 + 8)
    return buf


def _native_kernel(block: bytes | bytearray) -> _Kernel:
    """The compiled kernel (`_cscan.scan`): its int64 tables viewed as numpy columns (views of
    this thread's scratch buffer: valid until the thread's next call)."""
    n_lines, n_mk, counts, tables = _CSCAN.scan(block, _OP_BYTES, _scratch)
    n_plain, n_py, n_chat, n_rec, n_coll, n_tun = counts
    words = 5 * n_lines + (len(_REC) + len(_COLL) + len(_TUN)) * n_mk
    flat = np.frombuffer(tables, np.int64, words)
    at = 0

    def cut(rows: int, cols: int) -> np.ndarray:
        nonlocal at
        at += rows * cols
        return flat[at - rows * cols:at].reshape(cols, rows)

    def cols(names, n):
        m = cut(n_mk, len(names))
        return {name: m[i, :n] for i, name in enumerate(names)}

    ln, ls = cut(n_lines, 2), cut(n_lines, 3)
    return _Kernel(ln[0], ln[1], ls[0, :n_plain], ls[1, :n_py], ls[2, :n_chat],
                   cols(_REC, n_rec), cols(_COLL, n_coll), cols(_TUN, n_tun))


def _numpy_kernel(block: bytes | bytearray) -> _Kernel:
    """The kernel in numpy (the fallback, and the reference the compiled one must equal)."""
    a, size = np.frombuffer(block, np.uint8), len(block) - _PAD
    nl = np.flatnonzero(a[:size] == 10)
    n_lines = len(nl)
    l_start = np.empty(n_lines, np.int64)
    l_start[:1] = 0
    l_start[1:] = nl[:-1] + 1
    l_end = nl - (a[np.maximum(nl - 1, 0)] == 13)  # without "\r\n"
    # The padding starts with 24 spaces: sentinels, so token reads past the block's last space
    # land at or after the block end (outside every line) without a copy of `sp`.
    sp = np.flatnonzero(a[:size + _SENTINELS] == 32)

    # Markers: " NCCL INFO " / " NCCL WARN ".
    k = np.flatnonzero(a[sp[:-_SENTINELS] + 1] == 78)
    c = sp[k]
    hit = (a[c + 2] == 67) & (a[c + 3] == 67) & (a[c + 4] == 76) & (a[c + 5] == 32)
    k, c = k[hit], c[hit]
    info = (a[c + 6] == 73) & (a[c + 7] == 78) & (a[c + 8] == 70) & (a[c + 9] == 79)
    warn = (a[c + 6] == 87) & (a[c + 7] == 65) & (a[c + 8] == 82) & (a[c + 9] == 78)
    hit = (info | warn) & (a[c + 10] == 32)
    k, m, info = k[hit], c[hit], info[hit]
    m_line = np.searchsorted(nl, m)
    per_line = np.bincount(m_line, minlength=n_lines)
    # A record with no prefix at all (`NCCL INFO ...` at a line start): the Python parser.
    bare = np.flatnonzero((a[l_start] == 78) & (a[l_start + 1] == 67) & (a[l_start + 2] == 67) &
                          (a[l_start + 3] == 76) & (a[l_start + 4] == 32))
    per_line[bare] += 1
    single = per_line[m_line] == 1
    to_python = [np.flatnonzero(per_line > 1), bare]
    to_python.append(m_line[single & ~info])  # WARN lines: few, kept whole by the parser
    sel = single & info
    k, m_line = k[sel], m_line[sel]
    le = l_end[m_line]

    # Kind: `<Coll>: opCount ...` (COLL), `<Coll>: <n> Bytes -> Algo ...` (TUNING), else detail
    # or chatter. Tokens from the marker: 0 "NCCL", 1 "INFO", 2 "<Coll>:", 3 ...
    s2, e2 = sp[k + 2] + 1, np.minimum(sp[k + 3], le)
    w2 = e2 - s2
    cand = (sp[k + 2] < le) & (w2 >= 5) & (w2 <= 14) & (a[np.maximum(e2 - 1, 0)] == 58)
    ci = np.flatnonzero(cand)
    op_code = np.full(len(k), -1, np.int64)
    if ci.size:
        names = ragged_strings(a, s2[ci], e2[ci] - 1)
        op_code[ci] = pc.fill_null(pc.index_in(names, value_set=NCCL_OPS), -1).to_numpy(
            zero_copy_only=False)
    is_op = op_code >= 0
    s3 = sp[k + 3] + 1
    is_coll = is_op & (a[s3] == 111) & (a[s3 + 2] == 67) & (sp[k + 4] - s3 == 7)  # opCount
    s4 = sp[k + 4] + 1
    is_tun = is_op & ~is_coll & (a[s4] == 66) & (a[s4 + 4] == 115) & (sp[k + 5] - s4 == 5)
    words = word_view(a)
    rec = np.flatnonzero(is_coll | is_tun)
    ls = l_start[m_line[rec]]
    span_s, tok_s = _prefix_spans(sp, k[rec], ls)
    is_c = is_coll[rec]
    coll, c_ok = coll_fields(a, words, k[rec[is_c]], le[rec[is_c]], sp)
    tun, t_ok = tuning_fields(a, words, k[rec[~is_c]], le[rec[~is_c]], sp)
    coll["pos"], tun["pos"] = np.flatnonzero(is_c)[c_ok], np.flatnonzero(~is_c)[t_ok]
    coll["op_code"], tun["op_code"] = op_code[rec[coll["pos"]]], op_code[rec[tun["pos"]]]
    # A collective name that did not parse: torn or wrapped (the Python parser joins lines).
    bad = is_op.copy()
    bad[rec[coll["pos"]]] = False
    bad[rec[tun["pos"]]] = False
    to_python.append(m_line[bad])
    return _Kernel(l_start, l_end, np.flatnonzero(per_line == 0), np.concatenate(to_python),
                   m_line[~is_op], dict(span_s=span_s, span_e=sp[k[rec]], tok_s=tok_s, ls=ls,
                                       line=m_line[rec]), coll, tun)


def scan_block(block: bytes | bytearray) -> BlockScan:
    """Scan a block of complete lines (each ending in `\\n`) followed by PAD_BYTES (the
    padding lets fixed-offset reads run past the lines without a copy of the block)."""
    kern = _native_kernel(block) if _CSCAN is not None else _numpy_kernel(block)
    a, size = np.frombuffer(block, np.uint8), len(block) - _PAD
    n_lines = len(kern.l_start)
    # Every line as Arrow strings over the block's own bytes (no copy), for the RE2 passes.
    offs = np.empty(n_lines + 1, np.int64)
    offs[:-1] = kern.l_start
    offs[-1] = size
    whole = pa.LargeStringArray.from_buffers(n_lines, pa.py_buffer(offs), pa.py_buffer(block))
    r = kern.rec
    pre = _prefix(a, r["span_s"], r["span_e"], r["tok_s"], r["ls"])
    to_python = [kern.python]
    colls = _keep(a, kern.coll, pre, r["line"], to_python, dict(
        sendbuff=("sb_s", "sb_e"), recvbuff=("rb_s", "rb_e"), comm=("cm_s", "cm_e"),
        stream=("st_s", "st_e")))
    tun = _keep(a, kern.tun, pre, r["line"], to_python, dict(algo=("al_s", "al_e"),
                                                             proto=("pr_s", "pr_e")))
    chatter = kern.chatter
    detail = np.zeros(len(chatter), bool)
    if detail.size:
        # Chatter repeats (one text per thread and message): the regex sees each text once.
        enc = pc.dictionary_encode(whole.take(pa.array(chatter)))
        per_text = pc.match_substring_regex(enc.dictionary, _DETAIL_RE).to_numpy(
            zero_copy_only=False)
        detail = per_text[enc.indices.to_numpy(zero_copy_only=False)]
    to_python.append(chatter[detail])

    # Lines without any marker.
    plain = kern.plain
    kind = np.full(len(plain), 3, np.int8)
    if plain.size:
        stripped = pc.utf8_trim_whitespace(whole.take(pa.array(plain)))
        is_row = pc.match_substring_regex(stripped, _TABLE_ROW_RE).to_numpy(zero_copy_only=False)
        kind[is_row] = 2
        kind[pc.starts_with(stripped, "#").to_numpy(zero_copy_only=False)] = 1
        kind[pc.equal(pc.binary_length(stripped), 0).to_numpy(zero_copy_only=False)] = 0
    py = np.unique(np.concatenate(to_python))
    read = np.unique(np.concatenate([[0], py, py + 1, plain[kind == 3]]))
    read = read[read < n_lines]
    bounds = dict(zip(read.tolist(), zip(kern.l_start[read].tolist(),
                                         kern.l_end[read].tolist())))
    # plain: a copy, as the compiled kernel's tables are reused for this thread's next block.
    return BlockScan(colls, tun, py, bounds, int(len(chatter) - detail.sum()), plain.copy(),
                     kind, n_lines)


def _keep(a, rows: dict, pre: tuple, rec_line: np.ndarray, to_python: list,
          strings: dict) -> dict:
    """A kernel's checked records whose prefix parsed too, as the block's columns (copies:
    nothing keeps the kernel's tables alive); the others go to the Python parser."""
    pre_ok, host, pid, tid, dev, at_start = pre
    pos = rows["pos"]
    f = pre_ok[pos]
    to_python.append(rec_line[pos[~f]])
    p = pos[f]
    skip = {"pos", *(x for span in strings.values() for x in span)}
    out = {k: v[f] for k, v in rows.items() if k not in skip}
    out.update((k, ragged_strings(a, rows[s][f], rows[e][f])) for k, (s, e) in strings.items())
    out.update(pid=pid[p], tid=tid[p], device=dev[p], host=host.take(pa.array(p)),
               host_at_start=at_start[p], line=rec_line[p])
    return out


_PREFIX_TOKEN_RE = re.compile(r"([^\s:\[\]]+):(\d+):(\d+) \[(\d+)\]\Z")


def _prefix_spans(sp: np.ndarray, k: np.ndarray, ls: np.ndarray):
    """Where the prefix text before the marker sp[k] begins: the two tokens before it within
    the line (empty when the marker has no space before it in its line). Returns (span start,
    where its first token begins)."""
    km1, km2 = sp[np.maximum(k - 1, 0)], sp[np.maximum(k - 2, 0)]
    tok_s = np.where((k >= 2) & (km2 >= ls), km2 + 1, ls)
    return np.where((k >= 1) & (km1 >= ls), tok_s, sp[k]), tok_s


def _prefix(a, span_s, span_e, tok_s, ls):
    """`host:pid:tid [dev]` in a[span_s:span_e] before each record's marker (a launcher's tag
    or a torn record's tail may be glued in front of the host). A log has few distinct
    prefixes (one per thread), so the prefix text is dictionary-encoded and only the distinct
    values are parsed. Returns (ok, host, pid, tid, dev, host at line start)."""
    enc = pc.dictionary_encode(ragged_strings(a, span_s, span_e))
    # A prefix whose numbers do not fit int64 (damage) is left to the Python parser.
    parsed = [m if m and max(len(m.group(2)), len(m.group(3)), len(m.group(4))) <= 18
              else None for m in map(_PREFIX_TOKEN_RE.search, enc.dictionary.to_pylist())]
    ok_u = np.array([m is not None for m in parsed] + [False])
    nums = np.array([(int(m.group(2)), int(m.group(3)), int(m.group(4)), m.start())
                     if m else (-1, -1, -1, -1) for m in parsed] + [(-1, -1, -1, -1)], np.int64)
    hosts = pa.array([m.group(1) if m else None for m in parsed], pa.large_string())
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ok = ok_u[idx]
    pid, tid, dev, off = nums[idx].T
    host = pa.DictionaryArray.from_arrays(enc.indices, hosts)  # rows are not materialized
    return ok, host, pid, tid, dev, _blank_before(a, ls, tok_s + off)


def _blank_before(a: np.ndarray, ls: np.ndarray, host_s: np.ndarray) -> np.ndarray:
    """Only whitespace between the line start and the host (a host seen at a line start is
    a real host name; one later in a line may carry junk glued in front)."""
    out = host_s == ls
    rest = np.flatnonzero(~out & (host_s - ls <= 8))
    for j in range(8):
        live = rest[ls[rest] + j < host_s[rest]]
        if not live.size:
            break
        bad = (a[ls[live] + j] != 32) & (a[ls[live] + j] != 9)
        rest = np.setdiff1d(rest, live[bad], assume_unique=True)
    out[rest] = True
    return out
