"""Unsigned integers read straight out of a byte block, many fields at once (numpy, no Python
per field): the scanner's number fields (counts, byte sizes, opCount in hex, ...).

Fields are given as [start, end) byte offsets into the block array `a`, which must be padded
(the scanner's PAD_BYTES) so fixed-width reads never leave it. `parse_decimal` and `parse_hex`
read each field as two 8-byte little-endian words (see `word_view`) and convert all digits
of a word at once; `parse_uint` is the general digit-by-digit reader they fall back to.
"""

from __future__ import annotations

import numpy as np

__all__ = ["parse_uint", "parse_decimal", "parse_hex", "word_view"]

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
