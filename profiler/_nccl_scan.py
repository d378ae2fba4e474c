"""Vectorised NCCL log scanner: numpy over raw byte blocks, no Python work per clean line.

A block of complete lines is scanned as one byte array. Space and newline positions are found
once; every `NCCL INFO`/`NCCL WARN` marker is a space followed by those bytes, and every field of
a clean COLL or TUNING record is the k-th space-separated token after its marker, so fields are
located, checked (labels, digits) and converted with array operations. The `host:pid:tid [dev]`
prefixes repeat (one per thread), so they are dictionary-encoded and only the distinct ones are
parsed. What does not
pass those checks (several records on one line, torn or wrapped records, init and topology lines,
WARN lines, unusual prefixes) is handed back as line indices for the Python record parser; that
is a small minority in any real log. Lines without a marker are classified (blank, `#`, an
nccl-tests table row, or not recognised) with one RE2 pass over just those lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._nccl_formats import DTYPES, OP_NAMES
from ._nccl_numbers import parse_decimal, parse_hex, word_view
from ._nccl_records import _TOPOLOGY_KINDS

__all__ = ["BlockScan", "scan_block", "PAD_BYTES", "ragged_strings", "NCCL_OPS", "PLAIN_KINDS"]

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


@dataclass
class BlockScan:
    """What the vectorised pass got out of one block (line indices are block-relative)."""

    colls: dict          # column name -> array, one row per clean COLL record
    tunings: dict        # column name -> array, one row per clean TUNING record
    python_lines: np.ndarray  # lines for the Python record parser (damaged/rare)
    line_start: np.ndarray    # byte offset of each line in the block
    line_end: np.ndarray      # byte offset of each line's end (before "\r\n" / "\n")
    other_nccl: int      # clean INFO lines of no table (proxy, alloc, RAS chatter ...)
    plain_lines: np.ndarray   # lines without an NCCL marker ...
    plain_kind: np.ndarray    # ... and their kind: PLAIN_KINDS[code]
    n_lines: int


def ragged_strings(a: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.Array:
    """Arrow strings a[start[i]:end[i]] gathered into one buffer (no Python per string).

    The spans must be in order and apart (what every caller has: one field per record,
    records in log order, one record per line). They are cut out of the block's own buffer:
    it is viewed as strings [gap, span, gap, span, ...] and Arrow's take copies the spans."""
    n = len(start)
    if not (bool((end >= start).all()) and bool((start[1:] >= end[:-1]).all())):
        raise ValueError("ragged_strings: spans out of order or overlapping")
    offs = np.empty(2 * n + 1, np.int64)
    offs[0] = 0
    offs[1::2] = start
    offs[2::2] = end
    every = pa.LargeStringArray.from_buffers(2 * n, pa.py_buffer(offs), pa.py_buffer(a))
    return every.take(pa.array(np.arange(1, 2 * n, 2)))


def _windows(sp: np.ndarray, k: np.ndarray, le: np.ndarray, n: int):
    """Token bounds for records whose marker space is sp[k]: token i (0 = "NCCL") is
    [start[:, i], end[:, i]); `inside[:, i]` says it begins inside the record's line."""
    win = sp[k[:, None] + np.arange(n + 1)]
    return win[:, :-1] + 1, np.minimum(win[:, 1:], le[:, None]), win[:, :-1] < le[:, None]


def _labels(a, start, end, cols, words) -> np.ndarray:
    """Tokens `cols` equal `words` (length and first byte compared)."""
    s, e = start[:, cols], end[:, cols]
    ok = ((e - s) == np.array([len(w) for w in words])).all(axis=1)
    ok &= (a[s] == np.array([w[0] for w in words], np.uint8)).all(axis=1)
    return ok


def _strings(a: np.ndarray, bounds: list[tuple[np.ndarray, np.ndarray]]) -> list[pa.Array]:
    """Several string columns (see `ragged_strings`)."""
    return [ragged_strings(a, s, e) for s, e in bounds]


def scan_block(block: bytes | bytearray) -> BlockScan:
    """Scan a block of complete lines (each ending in `\\n`) followed by PAD_BYTES (the
    padding lets fixed-offset reads run past the lines without a copy of the block)."""
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
    # Every line as Arrow strings over the block's own bytes (no copy), for the RE2 passes.
    offs = np.empty(n_lines + 1, np.int64)
    offs[:-1] = l_start
    offs[-1] = size
    whole = pa.LargeStringArray.from_buffers(n_lines, pa.py_buffer(offs), pa.py_buffer(block))

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
    k, m, m_line = k[sel], m[sel], m_line[sel]
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
    # The prefixes of both kinds of record in one pass (in log order), then split.
    rec = np.flatnonzero(is_coll | is_tun)
    pre = _prefix(a, sp, k[rec], l_start[m_line[rec]])
    is_c = is_coll[rec]
    colls, c_ok = _colls(a, words, rec[is_c], k, le, sp, op_code, pre, np.flatnonzero(is_c))
    tun, t_ok = _tunings(a, words, rec[~is_c], k, le, sp, op_code, pre, np.flatnonzero(~is_c))
    # A collective name that did not parse: torn or wrapped (the Python parser joins lines).
    bad = is_op.copy()
    bad[c_ok] = False
    bad[t_ok] = False
    to_python.append(m_line[bad])
    colls["line"], tun["line"] = m_line[c_ok], m_line[t_ok]
    rest = ~is_op
    detail = np.zeros(rest.sum(), bool)
    if detail.size:
        # Chatter repeats (one text per thread and message): the regex sees each text once.
        enc = pc.dictionary_encode(whole.take(pa.array(m_line[rest])))
        per_text = pc.match_substring_regex(enc.dictionary, _DETAIL_RE).to_numpy(
            zero_copy_only=False)
        detail = per_text[enc.indices.to_numpy(zero_copy_only=False)]
    to_python.append(m_line[rest][detail])

    # Lines without any marker.
    plain = np.flatnonzero(per_line == 0)
    kind = np.full(len(plain), 3, np.int8)
    if plain.size:
        stripped = pc.utf8_trim_whitespace(whole.take(pa.array(plain)))
        is_row = pc.match_substring_regex(stripped, _TABLE_ROW_RE).to_numpy(zero_copy_only=False)
        kind[is_row] = 2
        kind[pc.starts_with(stripped, "#").to_numpy(zero_copy_only=False)] = 1
        kind[pc.equal(pc.binary_length(stripped), 0).to_numpy(zero_copy_only=False)] = 0
    py = np.unique(np.concatenate(to_python))
    return BlockScan(colls, tun, py, l_start, l_end, int(rest.sum() - detail.sum()), plain,
                     kind, n_lines)


_PREFIX_TOKEN_RE = re.compile(r"([^\s:\[\]]+):(\d+):(\d+) \[(\d+)\]\Z")


def _prefix(a, sp, k, ls):
    """`host:pid:tid [dev]` before the marker sp[k] (a launcher's tag or a torn record's tail
    may be glued in front of the host). A log has few distinct prefixes (one per thread), so
    the prefix text is dictionary-encoded and only the distinct values are parsed.
    Returns (ok, host, pid, tid, dev, host at line start)."""
    km1, km2 = sp[np.maximum(k - 1, 0)], sp[np.maximum(k - 2, 0)]
    tok_s = np.where((k >= 2) & (km2 >= ls), km2 + 1, ls)
    span = ragged_strings(a, np.where((k >= 1) & (km1 >= ls), tok_s, sp[k]), sp[k])
    enc = pc.dictionary_encode(span)
    parsed = [_PREFIX_TOKEN_RE.search(v) for v in enc.dictionary.to_pylist()]
    ok_u = np.array([m is not None for m in parsed] + [False])
    nums = np.array([(int(m.group(2)), int(m.group(3)), int(m.group(4)), m.start())
                     if m else (-1, -1, -1, -1) for m in parsed] + [(-1, -1, -1, -1)], np.int64)
    hosts = pa.array([m.group(1) if m else None for m in parsed], pa.large_string())
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ok = ok_u[idx]
    pid, tid, dev, off = nums[idx].T
    host = pa.DictionaryArray.from_arrays(enc.indices, hosts)  # rows are not materialized
    return ok, host, pid, tid, dev, _blank_before(a, ls, tok_s + off)


def _rows_of(pre: tuple, pos: np.ndarray) -> tuple:
    """`_prefix`'s numpy columns at positions `pos` (the host's dictionary array is left
    whole: the caller takes the rows it keeps)."""
    ok, host, pid, tid, dev, at_start = pre
    return ok[pos], host, pid[pos], tid[pos], dev[pos], at_start[pos]


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


def _colls(a, words, idx, k, le, sp, op_code, pre, pos):
    """Fields of clean COLL records: tokens 3.. are `opCount X sendbuff X recvbuff X count N
    datatype N op N root N comm X [nranks=N] stream X` (`[nranks=N]` since 2.x).
    `pre`: `_prefix` of these and other records, these at positions `pos`."""
    kk, lee = k[idx], le[idx]
    st, en, inside = _windows(sp, kk, lee, 23)
    ok = _labels(a, st, en, [5, 7, 9, 11, 13, 15, 17],
                 [b"sendbuff", b"recvbuff", b"count", b"datatype", b"op", b"root", b"comm"])
    has_n = (en[:, 19] - st[:, 19] > 9) & (a[st[:, 19]] == 91) & (a[st[:, 19] + 1] == 110) & \
        (a[st[:, 19] + 7] == 61) & (a[np.maximum(en[:, 19] - 1, 0)] == 93)
    r = np.arange(len(idx))
    sh = has_n.astype(np.int64)
    ss, se = st[r, 19 + sh], en[r, 19 + sh]
    ok &= (se - ss == 6) & (a[ss] == 115) & (a[ss + 1] == 116)  # stream
    vs, ve = st[r, 20 + sh], en[r, 20 + sh]
    # The stream value ends the line (RCCL adds fields: those take the Python path), and
    # every token lies inside the line (a record cut short would borrow the next line's).
    ok &= inside[r, 20 + sh] & ~inside[r, 21 + sh] & (ve > vs)
    opc, o1 = parse_hex(a, words, st[:, 4], en[:, 4])
    count, o2 = parse_decimal(a, words, st[:, 10], en[:, 10])
    dt, o3 = parse_decimal(a, words, st[:, 12], en[:, 12])
    redop, o4 = parse_decimal(a, words, st[:, 14], en[:, 14])
    neg = a[st[:, 16]] == 45
    root, o5 = parse_decimal(a, words, st[:, 16] + neg, en[:, 16])
    nranks, o6 = parse_decimal(a, words, st[:, 19] + 8, en[:, 19] - 1)
    ok &= o1 & o2 & o3 & o4 & o5 & (o6 | ~has_n) & (dt < len(DTYPES)) & (redop <= 4)
    pre_ok, host, pid, tid, dev, at_start = _rows_of(pre, pos)
    f = ok & pre_ok
    good = idx[f]
    host = host.take(pa.array(pos[f]))
    sendbuff, recvbuff, comm, stream = _strings(a, [
        (st[f, 6], en[f, 6]), (st[f, 8], en[f, 8]), (st[f, 18], en[f, 18]), (vs[f], ve[f])])
    return dict(op_code=op_code[good], op_count=opc[f], count=count[f], dtype_code=dt[f],
                redop=redop[f], root=np.where(neg, -root, root)[f],
                nranks=np.where(has_n, nranks, -1)[f], sendbuff=sendbuff, recvbuff=recvbuff,
                comm=comm, stream=stream, pid=pid[f], tid=tid[f], device=dev[f], host=host,
                host_at_start=at_start[f]), good


def _tunings(a, words, idx, k, le, sp, op_code, pre, pos):
    """Fields of clean `<Coll>: <n> Bytes -> Algo A proto P [channel{Lo..Hi}={l..h}|time t]`
    (tokens 3..10 from the marker). `pre`, `pos`: as for `_colls`."""
    kk, lee = k[idx], le[idx]
    st, en, inside = _windows(sp, kk, lee, 11)
    nbytes, ok = parse_decimal(a, words, st[:, 3], en[:, 3])
    ok &= _labels(a, st, en, [5, 6, 8], [b"->", b"Algo", b"proto"]) & inside[:, 9]
    ok &= (en[:, 7] > st[:, 7]) & (en[:, 9] > st[:, 9])
    # Numeric ids (older versions) take the Python path, which maps them to names.
    ok &= (a[st[:, 7]] > 57) & (a[st[:, 9]] > 57)
    cs, ce = st[:, 10], en[:, 10]
    has_ch = inside[:, 10] & (ce - cs > 21) & (a[cs] == 99) & (a[cs + 7] == 123) & \
        (a[cs + 15] == 61) & (a[cs + 16] == 123)
    # `={lo..hi}`: lo ends at the first '.', hi at the closing brace.
    width = np.zeros(len(idx), np.int64)
    searching = has_ch.copy()
    for j in range(8):
        hit = searching & (a[cs + 17 + j] == 46)
        width[hit] = j
        searching &= ~hit
    lo, ok_l = parse_decimal(a, words, cs + 17, cs + 17 + width)
    hi, ok_h = parse_decimal(a, words, cs + 19 + width, ce - 1)
    has_ch &= ok_l & ok_h & ~searching & (a[np.maximum(ce - 1, 0)] == 125)
    # Anything else after proto (`time t`, extra fields) keeps the record, without channels.
    pre_ok, host, pid, tid, dev, at_start = _rows_of(pre, pos)
    f = ok & pre_ok
    good = idx[f]
    host = host.take(pa.array(pos[f]))
    algo, proto = _strings(a, [(st[f, 7], en[f, 7]), (st[f, 9], en[f, 9])])
    return dict(op_code=op_code[good], nbytes=nbytes[f], algo=algo, proto=proto,
                channels=np.where(has_ch, hi - lo + 1, -1)[f], pid=pid[f], tid=tid[f],
                device=dev[f], host=host, host_at_start=at_start[f]), good
