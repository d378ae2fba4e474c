"""Fields read straight out of a byte block, many records at once (numpy, no Python per
field): the numpy scanner kernel's field checks and conversions for clean COLL and TUNING
records (`coll_fields`, `tuning_fields`; the compiled kernel, profiler/_cscan.c, applies the
same rules), and the unsigned integers they are made of (counts, byte sizes, opCount in hex).

Fields are given as [start, end) byte offsets into the block array `a`, which must be padded
(the scanner's PAD_BYTES) so fixed-width reads never leave it. `parse_decimal` and `parse_hex`
read each field as two 8-byte little-endian words (see `word_view`) and convert all digits
of a word at once; `parse_uint` is the general digit-by-digit reader they fall back to.
"""

from __future__ import annotations

import numpy as np

from ._nccl_formats import DTYPES

__all__ = ["parse_uint", "parse_decimal", "parse_hex", "word_view", "coll_fields",
           "tuning_fields"]

_HEX = np.full(256, -1, np.int64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i

_POW10 = 10 ** np.arange(19, dtype=np.int64)
_POW16 = 16 ** np.arange(16, dtype=np.int64)


def parse_uint(a: np.ndarray, start: np.ndarray, end: np.ndarray, hexa: bool = False):
    """Unsigned integers written in a[start:end]; returns (values, ok) with ok False for an
    empty, too long or non-digit field. One (rows x widest field) gather, no loop per digit."""
    width = end - start
    ok = (width > 0) & (width <= (15 if hexa else 18))
    w = int(width[ok].max(initial=0))
    if w == 0:
        return np.zeros(len(start), np.int64), ok
    if w == 1:  # the common one-digit fields (datatype, op, root, device ...)
        d = a[np.minimum(start, len(a) - 1)]
        d = _HEX[d] if hexa else d.astype(np.int64) - 48
        return np.where(ok, d, 0), ok & (d >= 0) & (d < (16 if hexa else 10))
    j = np.arange(w)
    live = j < np.where(ok, width, 0)[:, None]
    c = a[np.minimum(start[:, None] + j, len(a) - 1)]
    d = _HEX[c] if hexa else c.astype(np.int64) - 48
    ok &= ((d >= 0) & (d < (16 if hexa else 10)) | ~live).all(axis=1)
    exp = np.clip(width[:, None] - 1 - j, 0, None)
    val = (np.where(live, d, 0) * (_POW16 if hexa else _POW10)[np.minimum(exp, 15 if hexa else 18)]
           ).sum(axis=1)
    return val, ok


_M30 = np.uint64(0x3030303030303030)  # "00000000"
_MF0 = np.uint64(0xF0F0F0F0F0F0F0F0)
_M06 = np.uint64(0x0606060606060606)
# _KEEP[w]: the top w bytes of a little-endian word (the w digits that end the field).
_KEEP = np.array([0] + [(~((1 << (8 * (8 - w))) - 1)) & ((1 << 64) - 1) for w in range(1, 9)],
                 np.uint64)


def word_view(a: np.ndarray) -> np.ndarray:
    """Every 8-byte window of `a` as a little-endian uint64 (a strided view, no copy)."""
    return np.ndarray((len(a) - 7,), "<u8", buffer=a, strides=(1,))


def _swar8(x: np.ndarray) -> np.ndarray:
    """Values of 8 ASCII digits per word (first digit in the lowest byte): three multiplies
    combine digit pairs, then pairs of pairs (SWAR), instead of a loop per digit."""
    x = x - _M30
    x = x * np.uint64(10) + (x >> np.uint64(8))
    x = ((x & np.uint64(0x000000FF000000FF)) * np.uint64(100 + (1000000 << 32)) +
         ((x >> np.uint64(16)) & np.uint64(0x000000FF000000FF)) * np.uint64(1 + (10000 << 32)))
    return x >> np.uint64(32)


def _words(start: np.ndarray, end: np.ndarray, limit: int):
    """(width, ok, widest, parts) of fields of 1..limit characters; `parts` lists the 8-byte
    words to read, each as (word start, how many of the field's digits it holds): the last
    eight digits, then the ones before them."""
    width = end - start
    ok = (width > 0) & (width <= limit)
    widest = int(width[ok].max(initial=0))
    w = np.where(ok, width, 0)
    e = np.maximum(end, 16)
    parts = [(e - 8, np.minimum(w, 8))] + ([(e - 16, np.maximum(w - 8, 0))] if widest > 8 else [])
    return width, ok, widest, parts


def parse_decimal(a: np.ndarray, words: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Like `parse_uint` (decimal), reading each field as two 8-byte words: up to 16 digits."""
    width, ok, widest, parts = _words(start, end, 16)
    if widest <= 1 or ((width > 16) & (width <= 18)).any() or (end[ok] < 16).any():
        return parse_uint(a, start, end)  # one-digit fields have a faster path there
    val = np.zeros(len(start), np.uint64)
    for i, (at, n) in enumerate(parts):  # the last 8 digits, then the 8 before them
        keep = _KEEP[n]
        x = (words[at] & keep) | (_M30 & ~keep)  # bytes before the field read as "0"
        # Every byte a digit: 0x30..0x39 (adding 6 keeps it below 0x40).
        ok &= ((x & _MF0) == _M30) & (((x + _M06) & _MF0) == _M30)
        val = val + _swar8(x) * np.uint64(10 ** (8 * i))
    return np.where(ok, val.astype(np.int64), 0), ok


_HEXV = np.where(_HEX >= 0, _HEX, 16).astype(np.uint8)  # 16: not a hex digit
_HEXW = 16 ** np.arange(7, -1, -1, dtype=np.int64)  # the first byte is the top digit


def parse_hex(a: np.ndarray, words: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Like `parse_uint(..., hexa=True)`, reading each field as two 8-byte words."""
    _, ok, widest, parts = _words(start, end, 15)
    if widest <= 1 or (end[ok] < 16).any():
        return parse_uint(a, start, end, hexa=True)
    val = np.zeros(len(start), np.int64)
    for i, (at, n) in enumerate(parts):  # the last 8 digits, then the 7 before them
        keep = _KEEP[n]
        x = (words[at] & keep) | (_M30 & ~keep)  # bytes before the field read as "0"
        d = _HEXV[x.view(np.uint8).reshape(-1, 8)]
        ok &= (d < 16).all(axis=1)
        val += (d.astype(np.int64) @ _HEXW) << (32 * i)
    return np.where(ok, val, 0), ok


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


def coll_fields(a, words, k, le, sp):
    """Fields of clean COLL records (marker spaces sp[k], line ends le): tokens 3.. are
    `opCount X sendbuff X recvbuff X count N datatype N op N root N comm X [nranks=N] stream X`
    (`[nranks=N]` since 2.x). Returns (fields of the records that pass, which pass)."""
    st, en, inside = _windows(sp, k, le, 23)
    ok = _labels(a, st, en, [5, 7, 9, 11, 13, 15, 17],
                 [b"sendbuff", b"recvbuff", b"count", b"datatype", b"op", b"root", b"comm"])
    has_n = (en[:, 19] - st[:, 19] > 9) & (a[st[:, 19]] == 91) & (a[st[:, 19] + 1] == 110) & \
        (a[st[:, 19] + 7] == 61) & (a[np.maximum(en[:, 19] - 1, 0)] == 93)
    r = np.arange(len(k))
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
    return dict(op_count=opc[ok], count=count[ok], dtype_code=dt[ok], redop=redop[ok],
                root=np.where(neg, -root, root)[ok], nranks=np.where(has_n, nranks, -1)[ok],
                sb_s=st[ok, 6], sb_e=en[ok, 6], rb_s=st[ok, 8], rb_e=en[ok, 8],
                cm_s=st[ok, 18], cm_e=en[ok, 18], st_s=vs[ok], st_e=ve[ok]), ok


def tuning_fields(a, words, k, le, sp):
    """Fields of clean `<Coll>: <n> Bytes -> Algo A proto P [channel{Lo..Hi}={l..h}|time t]`
    (tokens 3..10 from the marker). Returns as `coll_fields` does."""
    st, en, inside = _windows(sp, k, le, 11)
    nbytes, ok = parse_decimal(a, words, st[:, 3], en[:, 3])
    ok &= _labels(a, st, en, [5, 6, 8], [b"->", b"Algo", b"proto"]) & inside[:, 9]
    ok &= (en[:, 7] > st[:, 7]) & (en[:, 9] > st[:, 9])
    # Numeric ids (older versions) take the Python path, which maps them to names.
    ok &= (a[st[:, 7]] > 57) & (a[st[:, 9]] > 57)
    cs, ce = st[:, 10], en[:, 10]
    has_ch = inside[:, 10] & (ce - cs > 21) & (a[cs] == 99) & (a[cs + 7] == 123) & \
        (a[cs + 15] == 61) & (a[cs + 16] == 123)
    # `={lo..hi}`: lo ends at the first '.', hi at the closing brace.
    width = np.zeros(len(k), np.int64)
    searching = has_ch.copy()
    for j in range(8):
        hit = searching & (a[cs + 17 + j] == 46)
        width[hit] = j
        searching &= ~hit
    lo, ok_l = parse_decimal(a, words, cs + 17, cs + 17 + width)
    hi, ok_h = parse_decimal(a, words, cs + 19 + width, ce - 1)
    has_ch &= ok_l & ok_h & ~searching & (a[np.maximum(ce - 1, 0)] == 125)
    # Anything else after proto (`time t`, extra fields) keeps the record, without channels.
    return dict(nbytes=nbytes[ok], channels=np.where(has_ch, hi - lo + 1, -1)[ok],
                al_s=st[ok, 7], al_e=en[ok, 7], pr_s=st[ok, 9], pr_e=en[ok, 9]), ok
