"""The compiled NCCL scanner kernel (profiler/_cscan.c) against its numpy twin.

Both paths must give the same tables on real logs and on damaged generated ones, and the
kernel's own outputs (line bounds, which lines go to Python, every field of every clean record)
must be equal field for field, so a rule the C code gets wrong fails here. The C half is skipped
only when the extension is not built.
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from commscope import profiler
from commscope.profiler import _nccl_scan, _nccl_tuning
from commscope.profiler._nccl_log import _blocks, _open_binary, _scan

try:
    CSCAN = importlib.import_module("commscope.profiler._cscan")
except ImportError:  # not built (no compiler at install): only the numpy path exists
    CSCAN = None
needs_c = pytest.mark.skipif(CSCAN is None, reason="compiled _cscan not built")
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl")
_TABLES = ("collectives", "communicators", "topology", "warnings", "unparsed")

# --- generated logs: every kind of line and damage the scanner sorts ------------------------

_OPS = ["AllReduce", "AllGather", "ReduceScatter", "Broadcast", "Reduce", "Send", "Recv",
        "AllToAll", "AlltoAll", "Gather", "Scatter", "Allreduce", "Barrier"]


def _coll(rng: random.Random, op: str, opc: int) -> str:
    nranks = rng.choice(["[nranks=4] ", "", "[nranks=] ", "[nranks=12345678901] "])
    count = rng.choice([str(1 << rng.randrange(30)), "12345678901234567", "123456789012345678",
                        "", "0x10"])
    root = rng.choice(["0", "-1", "3", "-", "--2"])
    return (f"{op}: opCount {opc:x} sendbuff 0x7f{rng.randrange(99)} recvbuff (nil) count "
            f"{count} datatype {rng.choice(['7', '9', '11', '12', 'x'])} op "
            f"{rng.choice(['0', '4', '5'])} root {root} comm 0x{rng.randrange(3)}a {nranks}"
            f"stream 0x{rng.randrange(9)}")


def _tuning(rng: random.Random, op: str) -> str:
    tail = rng.choice(["channel{Lo..Hi}={0..7}", "channel{Lo..Hi}={12..3}",
                       "channel{Lo..Hi}={1234567..9}", "channel{Lo..Hi}={..7}", "time 13.5",
                       "", "channel{Lo..Hi}={0..7} extra", "channel{Lo..Hi}={0.x7}"])
    algo, proto = rng.choice([("RING", "SIMPLE"), ("TREE", "LL"), ("1", "2"), ("RING", "")])
    return f"{op}: {rng.randrange(1 << 20)} Bytes -> Algo {algo} proto {proto} {tail}".rstrip()


def generated_log(seed: int, n: int = 1500) -> bytes:
    """A log with clean and damaged records of every kind the fast path and Python sort."""
    rng = random.Random(seed)
    pre = ["h1:100:100 [0] NCCL INFO ", "[1,2]<stdout>:h2:200:201 [1] NCCL INFO ",
           "(RayWorker pid=5, ip=1.2.3.4) h3.x:7:8 [2] NCCL INFO ", "junkh1:100:100 [0] NCCL INFO ",
           "NCCL INFO ", "  h1:100:100 [0] NCCL INFO ", "h1:100:100 [x] NCCL INFO "]
    out = ["h1:100:110 [0] NCCL INFO ncclCommInitRank comm 0x0a rank 0 nranks 4 cudaDev 0 "
           "nvmlDev 0 busId 1000 commId 0x77 - Init COMPLETE",
           "h2:200:201 [1] NCCL INFO comm 0x1a rank 1 nranks 4 cudaDev 1 busId 2000 - Init START"]
    for i in range(n):
        p, op, x = rng.choice(pre), rng.choice(_OPS), rng.random()
        if x < 0.35:
            line = p + _coll(rng, op, i)
            if rng.random() < 0.5:  # its tuning line, bytes = count x elem (x nranks)
                count, dt = line.split(" count ")[1].split()[0], line.split(" datatype ")[1][:2]
                size = {"7 ": 4, "9 ": 2, "11": 1}.get(dt, 8) * rng.choice([1, 4])
                if count.isdigit():
                    line += f"\n{p}{op}: {int(count) * size} Bytes -> Algo RING proto LL"
        elif x < 0.55:
            line = p + _tuning(rng, op)
        elif x < 0.65:
            line = p + rng.choice(["misc/utils.cc:233 memory stack hunk malloc(65536)",
                                   "Channel 00/02 : 0 1 2 3", "Ring 00 : 0 -> 1 -> 2",
                                   "2 coll channels, 0 nvls channels, 4 p2p channels, 2 p2p "
                                   "channels per peer", "NCCL version 2.21.5+cuda12.4"])
        elif x < 0.7:
            line = p.replace("INFO", "WARN") + "Cuda failure 'out of memory'"
        elif x < 0.8:  # wrapped anywhere, or torn and glued to the next record
            rec = p + _coll(rng, op, i)
            cut = rng.randrange(len(p), len(rec))
            line = rec[:cut] + rng.choice(["\n", "\n ", "", "h9:1:1 [0] NCCL INFO "]) + rec[cut:]
        elif x < 0.85:
            line = rng.choice(["", "# comment", "   16   4 float sum 1.0 2.0", "prose", "\t"])
        else:
            line = rng.choice(["\x1b[32m", "", "\r"]) + p + _coll(rng, op, i) + \
                rng.choice(["\x1b[0m", "\r", "", " RCCL 1"])
        out.append(line)
    text = "\n".join(out).encode() + rng.choice([b"\n", b"", b"\r\n"])
    return text.replace(b"prose", "pr\u00f6se \xff".encode("latin-1"), 3)


def mutated(text: bytes, seed: int) -> bytes:
    """`text` with random edits: spans deleted, duplicated, junk and separators inserted."""
    rng = random.Random(seed)
    b = bytearray(text)
    for _ in range(rng.randrange(1, 40)):
        i = rng.randrange(len(b) + 1)
        k = rng.random()
        if k < 0.3:
            del b[i:i + rng.randrange(1, 60)]
        elif k < 0.5:
            b[i:i] = b[i:i + rng.randrange(1, 80)]
        else:
            b[i:i] = rng.choice([b" ", b"\n", b"  ", b" NCCL INFO ", b" NCCL WARN ", b":", b"[",
                                 b"]", b"\r", b"9", b"\xc3\xa9", b"\xff", b"\x1b[0m", b"\t",
                                 b"AllReduce: ", b" Bytes -> Algo "])
    return bytes(b)


# --- helpers ----------------------------------------------------------------------------------

@pytest.fixture
def kernel(monkeypatch):
    """A function that switches the scanner (and the joins) to the C or the numpy path."""
    def use(native: bool) -> None:
        if native and CSCAN is None:
            pytest.skip("compiled _cscan not built")
        monkeypatch.setattr(_nccl_scan, "_CSCAN", CSCAN if native else None)
    return use


def _parse_both(kernel, path: str, block_bytes: int) -> tuple:
    out = []
    for native in (True, False):
        kernel(native)
        out.append(profiler.parse_nccl_logs(path, block_bytes=block_bytes))
    return tuple(out)


def _assert_same_logs(a: profiler.NcclLog, b: profiler.NcclLog) -> None:
    for name in _TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True,
                                      obj=name)
    assert a.summary == b.summary


def _assert_same_kernels(kernel, path: str, block_bytes: int) -> int:
    """Both kernels on every block of `path`, output for output; returns the clean records."""
    kernel(True)
    n = 0
    with _open_binary(path) as fh:
        for block in _blocks(fh, block_bytes, []):
            if b"\x1b" in block or not block.isascii():
                block, _ = _scan(block)
            x, y = _nccl_scan._numpy_kernel(block), _nccl_scan._native_kernel(block)
            for f in ("l_start", "l_end", "plain", "chatter"):
                np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)
            np.testing.assert_array_equal(np.unique(x.python), np.unique(y.python))
            for table in ("rec", "coll", "tun"):
                tx, ty = getattr(x, table), getattr(y, table)
                assert sorted(tx) == sorted(ty)
                for col in tx:
                    np.testing.assert_array_equal(tx[col], ty[col], err_msg=f"{table}.{col}")
            n += len(x.coll["pos"]) + len(x.tun["pos"])
    return n


# --- tests ------------------------------------------------------------------------------------

@needs_c
@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data absent")
@pytest.mark.parametrize("block_bytes", [4 << 20, 4096])
def test_shared_logs_same_on_both_paths(kernel, block_bytes):
    for name in sorted(os.listdir(SHARED)):
        path = os.path.join(SHARED, name)
        _assert_same_kernels(kernel, path, block_bytes)
        _assert_same_logs(*_parse_both(kernel, path, block_bytes))


@needs_c
@pytest.mark.parametrize("seed", range(4))
def test_generated_damaged_logs_same_on_both_paths(kernel, tmp_path, seed):
    path = tmp_path / "gen.log"
    path.write_bytes(generated_log(seed))
    assert _assert_same_kernels(kernel, str(path), 4 << 20) > 100  # the fast path is exercised
    for block_bytes in (4 << 20, 1000):
        a, b = _parse_both(kernel, str(path), block_bytes)
        _assert_same_logs(a, b)
        assert len(a.collectives) > 50 and a.collectives["algo"].notna().any()


@needs_c
def test_randomly_edited_logs_same_on_both_paths(kernel, tmp_path):
    base = generated_log(7, 400)
    for seed in range(25):
        path = tmp_path / f"m{seed}.log"
        path.write_bytes(mutated(base, seed))
        _assert_same_kernels(kernel, str(path), 4 << 20)
        _assert_same_logs(*_parse_both(kernel, str(path), 4 << 20))


@needs_c
def test_kernel_fields_equal_python_int(kernel):
    # Field values straight from the C kernel (not only through the tables): numbers at the
    # width limits, hex opCount, negative root, channels.
    text = ("h:1:2 [3] NCCL INFO AllGather: opCount 7fFfFfFfFfFfFfF sendbuff 0x1 recvbuff 0x2 "
            "count 999999999999999999 datatype 11 op 4 root -12 comm 0xc [nranks=65536] "
            "stream 0x5\n"
            "h:1:2 [3] NCCL INFO AllGather: 1234567890123456 Bytes -> Algo PAT proto LL128 "
            "channel{Lo..Hi}={1234567..1234599}\n")
    block = bytearray(text.encode() + _nccl_scan.PAD_BYTES)
    kernel(True)
    k = _nccl_scan._native_kernel(block)
    c, t = k.coll, k.tun
    assert c["op_count"].tolist() == [int("7fFfFfFfFfFfFfF", 16)]
    assert c["count"].tolist() == [999999999999999999] and c["root"].tolist() == [-12]
    assert c["nranks"].tolist() == [65536] and c["dtype_code"].tolist() == [11]
    assert t["nbytes"].tolist() == [1234567890123456] and t["channels"].tolist() == [33]
    assert bytes(block[c["cm_s"][0]:c["cm_e"][0]]) == b"0xc"
    assert bytes(block[t["pr_s"][0]:t["pr_e"][0]]) == b"LL128"


@needs_c
def test_kernel_rejects_unpadded_blocks_and_bad_spans():
    with pytest.raises(ValueError):
        CSCAN.scan(bytearray(b"x NCCL INFO y\n"), (b"AllReduce",), bytearray)
    with pytest.raises(ValueError):
        CSCAN.gather(b"abc", np.array([1], np.int64), np.array([9], np.int64), bytearray)


@needs_c
def test_tuning_join_same_on_both_paths(kernel):
    # Random threads, orders, names and sizes with many collisions: the C walk and the sorted
    # arrays attach the same tuning line to every collective.
    rng = np.random.default_rng(1)
    for _ in range(1500):
        n_c, n_t = int(rng.integers(0, 40)), int(rng.integers(0, 30))
        order = rng.permutation(200)[:n_c + n_t]
        n_thr, n_proc = int(rng.integers(1, 4)), int(rng.integers(1, 3))

        def threads(n, n_proc=n_proc, n_thr=n_thr):
            return (rng.integers(0, n_proc, n) << 22) | rng.integers(0, n_thr, n)

        b1 = rng.choice([-1, 4, 8, 16], n_c)
        b2 = np.where((b1 > 0) & (rng.random(n_c) < 0.5), b1 * 2, -1)
        t_op = rng.integers(-1 if rng.random() < 0.5 else 0, 3, n_t)
        args = [threads(n_c), order[:n_c], rng.integers(0, 3, n_c), b1, b2,
                rng.integers(0, 3, n_c), threads(n_t), order[n_c:], t_op,
                rng.choice([4, 8, 16, 32], n_t)]
        args = [np.asarray(x, np.int64) for x in args]
        kernel(True)
        got = _nccl_tuning.attach_tuning(*args)
        kernel(False)
        np.testing.assert_array_equal(got, _nccl_tuning.attach_tuning(*args))


def test_no_native_env_forces_numpy():
    code = "from commscope.profiler import _nccl_scan as s; print(s.KERNEL)"
    env = dict(os.environ, COMMSCOPE_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "numpy"


@needs_c
def test_colour_codes_stripped_in_place_as_the_regex_does():
    from commscope.profiler._nccl_log import _ANSI_RE, _strip_ansi
    rng = random.Random(0)
    alphabet = [b"\x1b", b"[", b"0", b"9", b";", b"?", b"m", b"A", b"z", b"@", b"{", b"\n", b" "]
    for _ in range(5000):
        text = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        buf = bytearray(text)
        del buf[CSCAN.strip_ansi(buf):]
        assert bytes(buf) == _strip_ansi(text) == _ANSI_RE.sub(b"", text), text


@needs_c
def test_string_take_equals_arrow_take(kernel):
    import pyarrow as pa

    from commscope.profiler._nccl_tables import _take
    kernel(True)
    rng = np.random.default_rng(0)
    words = pa.array(["", "a", "bb", "0x7f", "ccc" * 9, "é"], pa.large_string())
    for arr in (words, words.slice(2), words.cast(pa.string())):
        idx = rng.integers(0, len(arr), 500)
        valid = rng.random(500) < 0.7
        assert _take(arr, idx).equals(arr.take(pa.array(idx)).cast(pa.large_string()))
        want = arr.take(pa.array(idx, mask=~valid)).cast(pa.large_string())
        assert _take(arr, idx, valid).equals(want)


@needs_c
def test_cumcount_same_on_both_paths(kernel):
    from commscope.profiler._nccl_tables import _cumcount
    rng = np.random.default_rng(2)
    for n_groups in (1, 7, 70000):
        codes = rng.integers(0, n_groups, 5000)
        kernel(True)
        got = _cumcount(codes, n_groups)
        kernel(False)
        np.testing.assert_array_equal(got, _cumcount(codes, n_groups))


@needs_c
def test_log_order_merge_in_place_equals_the_sort():
    rng = np.random.default_rng(3)
    for _ in range(500):
        n_fast, n_py = int(rng.integers(0, 30)), int(rng.integers(0, 8))
        order = rng.choice(1000, n_fast + n_py, replace=False)
        order = np.concatenate([np.sort(order[:n_fast]), np.sort(order[n_fast:])])
        ins = np.searchsorted(order[:n_fast], order[n_fast:], side="right")
        want = np.argsort(order, kind="stable")
        for dtype in (np.int64, np.bool_):
            values = (order % 7).astype(dtype)
            expected = values[want]
            CSCAN.merge_tail(values, n_fast, ins)
            np.testing.assert_array_equal(values, expected)
