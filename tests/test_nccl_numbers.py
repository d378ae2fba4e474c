"""The scanner's word-at-a-time number readers give exactly what Python's int() gives."""

from __future__ import annotations

import numpy as np

from commscope.profiler import _nccl_numbers as numbers


def _fields(texts: list[str], lead: int = 40):
    """The texts laid out space-separated after `lead` filler bytes, padded like a block."""
    buf = bytearray(b"x" * lead)
    start, end = [], []
    for t in texts:
        start.append(len(buf))
        buf += t.encode()
        end.append(len(buf))
        buf += b" "
    a = np.frombuffer(bytes(buf) + b"\0" * 64, np.uint8)
    return a, numbers.word_view(a), np.array(start, np.int64), np.array(end, np.int64)


def _expect(texts: list[str], base: int, max_digits: int):
    ok = [0 < len(t) <= max_digits and all(c in "0123456789abcdefABCDEF"[:base + (6 if base == 16
                                                                               else 0)]
                                           for c in t) for t in texts]
    return np.array(ok), np.array([int(t, base) if k else 0 for t, k in zip(texts, ok)])


def test_decimal_fields_equal_python_int():
    rng = np.random.default_rng(3)
    texts = ["0", "7", "42", "12345678", "123456789", "9999999999999999", "18446744073",
             "", "1a", "-5", "12 ", "00000001", "99999999", "100000000",
             "1234567890123456", "12345678901234567"]
    texts += [str(rng.integers(0, 10 ** int(rng.integers(1, 17)))) for _ in range(2000)]
    texts += ["".join(rng.choice(list("0123456789:/x"), int(rng.integers(1, 12))))
              for _ in range(500)]
    # Without the 17-digit field every field is read as words; with it, digit by digit (up to
    # 18 digits, as before): the same values either way.
    for part in (texts[:15] + texts[16:], texts):
        a, words, s, e = _fields(part)
        val, ok = numbers.parse_decimal(a, words, s, e)
        want_ok, want = _expect(part, 10, 18)
        assert ok.tolist() == want_ok.tolist()
        assert np.where(ok, val, 0).tolist() == want.tolist()
        assert val[part.index("9999999999999999")] == 9_999_999_999_999_999


def test_hex_fields_equal_python_int():
    rng = np.random.default_rng(4)
    texts = ["0", "f", "A", "ff", "7fffffff", "deadbeef1", "123456789abcdef", "0123456789ABCDEF",
             "", "g", "1g", "`", "@1", "fffffffffffffff"]
    texts += [format(int(rng.integers(0, 2 ** 60)), "x") for _ in range(2000)]
    texts += ["".join(rng.choice(list("0123456789abcdefG@`/"), int(rng.integers(1, 10))))
              for _ in range(500)]
    a, words, s, e = _fields(texts)
    val, ok = numbers.parse_hex(a, words, s, e)
    want_ok, want = _expect(texts, 16, 15)
    assert ok.tolist() == want_ok.tolist()
    assert np.where(ok, val, 0).tolist() == want.tolist()
    assert val[texts.index("fffffffffffffff")] == 16 ** 15 - 1


def test_fields_at_the_block_start_take_the_exact_path():
    # A field ending in the first 16 bytes cannot be read as two words before it: same answer.
    a, words, s, e = _fields(["12", "345", "6789abc"], lead=0)
    val, ok = numbers.parse_decimal(a, words, s, e)
    assert ok.tolist() == [True, True, False]
    assert val[:2].tolist() == [12, 345]
    hval, hok = numbers.parse_hex(a, words, s, e)
    assert hok.tolist() == [True, True, True]
    assert hval.tolist() == [0x12, 0x345, 0x6789ABC]
