"""Every kind of damage a real NCCL log shows, with exact record counts and bytes.

Wrapped records (cut anywhere after the op name), torn records glued to the next full record,
colour codes, launcher and logger prefixes, CRLF, gzip (whole and truncated), block boundaries
of the streaming reader; nccl-tests layouts without `Group`; host names cut at the first '.'.
"""

from __future__ import annotations

import gzip
import os

import pandas as pd
import pytest

from commscope import analysis, profiler

INIT = ("h1:100:110 [0] NCCL INFO ncclCommInitRank comm 0xaaa rank 0 nranks 4 cudaDev 0 "
        "nvmlDev 0 busId 1000 commId 0x77 - Init COMPLETE")


def coll(count: int, opc: int = 0, host: str = "h1", op: str = "AllReduce") -> str:
    return (f"{host}:100:100 [0] NCCL INFO {op}: opCount {opc:x} sendbuff 0x1 recvbuff 0x2 "
            f"count {count} datatype 7 op 0 root 0 comm 0xaaa [nranks=4] stream 0x5")


def tuning(nbytes: int) -> str:
    return (f"h1:100:100 [0] NCCL INFO AllReduce: {nbytes} Bytes -> Algo RING proto LL "
            "channel{Lo..Hi}={0..1}")


def _parse(tmp_path, text: str, name: str = "x.log", **kw) -> profiler.NcclLog:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return profiler.parse_nccl_logs(str(p), **kw)


def _lines(*xs: str) -> str:
    return "".join(x + "\n" for x in xs)


CLEAN = _lines(INIT, coll(1024, 0), tuning(4096), coll(2048, 1), tuning(8192), coll(3072, 2),
               tuning(12288))
BYTES = [4096, 8192, 12288]


def _check_clean(log: profiler.NcclLog, lines: int) -> None:
    c = log.collectives
    assert c["bytes"].tolist() == BYTES and c["op_count"].tolist() == [0, 1, 2]
    assert c["host"].tolist() == ["h1"] * 3 and c["rank"].tolist() == [0] * 3
    assert c["algo"].tolist() == ["RING"] * 3 and c["proto"].tolist() == ["LL"] * 3
    assert log.summary["records"]["collective"] == 3 and log.summary["records"]["tuning"] == 3
    assert log.summary["lines_read"] == lines
    assert log.summary["lines_not_recognised"] == 0 and log.unparsed.empty


def test_clean_reference(tmp_path):
    _check_clean(_parse(tmp_path, CLEAN), 7)


def test_wrapped_anywhere_after_the_op_name(tmp_path):
    """A terminal wraps at a column (nothing lost); a paste may turn the space there into the
    line break. Every cut from just after `AllReduce:` to the stream value's first byte."""
    rec = coll(2048, 1)
    start = rec.index("AllReduce:") + len("AllReduce:")
    stop = rec.rindex(" ") + 1  # a cut inside the last value leaves a complete-looking record
    for cut in range(start, stop):
        variants = [rec[:cut] + "\n" + rec[cut:]]
        if rec[cut] == " ":
            variants.append(rec[:cut] + "\n" + rec[cut + 1:])
        for wrapped in variants:
            text = _lines(INIT, coll(1024, 0), tuning(4096), wrapped, tuning(8192),
                          coll(3072, 2), tuning(12288))
            log = _parse(tmp_path, text)
            _check_clean(log, 8)
            assert log.summary["records"]["wrapped:collective"] == 1, wrapped
            assert log.collectives["line"].tolist() == [2, 4, 7]


def test_wrapped_tuning_line(tmp_path):
    t = tuning(8192)
    cut = t.index(" proto")
    text = _lines(INIT, coll(1024, 0), tuning(4096), coll(2048, 1), t[:cut], t[cut:],
                  coll(3072, 2), tuning(12288))
    log = _parse(tmp_path, text)
    _check_clean(log, 8)
    assert log.summary["records"]["wrapped:tuning"] == 1


def test_wrapped_record_across_block_boundaries(tmp_path):
    rec = coll(2048, 1)
    cut = rec.index(" comm ")
    text = _lines(INIT, coll(1024, 0), tuning(4096), rec[:cut], rec[cut:], tuning(8192),
                  coll(3072, 2), tuning(12288))
    ref = _parse(tmp_path, text)
    _check_clean(ref, 8)
    for block in (1, 7, 64, 300, 1000):
        log = _parse(tmp_path, text, block_bytes=block)
        pd.testing.assert_frame_equal(log.collectives, ref.collectives)
        assert log.summary["records"] == ref.summary["records"]
        assert log.summary["lines_read"] == 8


def test_torn_record_glued_to_the_next_full_record(tmp_path):
    # Another process's write cut a record short; the next full record follows on that line.
    torn = coll(999, 7)[:70]
    text = _lines(INIT, coll(1024, 0), tuning(4096), torn + coll(2048, 1), tuning(8192),
                  coll(3072, 2), tuning(12288))
    log = _parse(tmp_path, text)
    c = log.collectives
    assert c["bytes"].tolist() == BYTES and c["line"].tolist() == [2, 4, 6]
    assert log.summary["records"]["torn:collective"] == 1
    assert log.unparsed["reason"].tolist() == ["incomplete collective record"]
    assert log.unparsed["text"].iloc[0] == torn[torn.index("AllReduce"):]


def test_tail_of_an_earlier_record_before_a_full_record(tmp_path):
    # The line starts with the rest of a record torn earlier, glued to the host of the next.
    text = _lines(INIT, coll(1024, 0), tuning(4096), "root 0 comm 0xaaa stream 0x5" +
                  coll(2048, 1), tuning(8192), coll(3072, 2), tuning(12288))
    log = _parse(tmp_path, text)
    c = log.collectives
    assert c["bytes"].tolist() == BYTES and c["host"].tolist() == ["h1"] * 3
    assert c["algo"].tolist() == ["RING"] * 3


@pytest.mark.parametrize("prefix", [
    "[1,2]<stdout>:", "[1,0]<stderr>: ", "(RayWorker pid=12345, ip=10.0.0.7) ",
    "2024-05-01 10:00:00,123 worker-3 INFO ", "[2024-05-01T10:00:00.123Z] ", "\x1b[32m",
    "\x1b[1;31m[1,2]<stdout>:",
])
def test_launcher_logger_prefixes_and_colour_codes(tmp_path, prefix):
    suffix = "\x1b[0m" if "\x1b" in prefix else ""
    text = "".join(prefix + x + suffix + "\n" for x in CLEAN.splitlines())
    log = _parse(tmp_path, text)
    _check_clean(log, 7)
    assert log.collectives["stream"].tolist() == ["0x5"] * 3
    assert log.collectives["pid"].tolist() == [100] * 3


def test_crlf_and_missing_final_newline(tmp_path):
    log = _parse(tmp_path, CLEAN.replace("\n", "\r\n").rstrip("\r\n"))
    _check_clean(log, 7)
    assert log.collectives["stream"].tolist() == ["0x5"] * 3


def test_gzip_whole_and_truncated(tmp_path):
    p = tmp_path / "x.log.gz"
    body = CLEAN * 200
    p.write_bytes(gzip.compress(body.encode()))
    log = profiler.parse_nccl_logs(str(p))
    assert len(log.collectives) == 600 and log.collectives["bytes"].tolist() == BYTES * 200
    data = p.read_bytes()
    t = tmp_path / "cut.log.gz"
    t.write_bytes(data[:len(data) // 2])
    cut = profiler.parse_nccl_logs(str(t), block_bytes=1024)
    n = len(cut.collectives)
    assert 0 < n < 600 and cut.collectives["bytes"].tolist() == (BYTES * 200)[:n]
    assert cut.summary["records"]["read_error"] == 1
    assert cut.unparsed["reason"].tolist() == ["read error"]


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path):
    text = CLEAN.encode().replace(b"stream 0x5\n", b"stream 0x5\n\xff\xfe junk\n", 1)
    log = _parse(tmp_path, text)
    assert log.collectives["bytes"].tolist() == BYTES
    assert log.summary["lines_not_recognised"] == 1 and log.summary["lines_read"] == 8


def test_numbers_beyond_int64_are_reported_not_fatal(tmp_path):
    """A damaged line can hold any run of digits: such records are counted and kept in
    `unparsed` with their reason, and every other record still parses."""
    huge = 1 << 64
    text = _lines(INIT, coll(1024, 0), coll(huge, 1), tuning(4096),
                  coll(2048, 1).replace("opCount 1", f"opCount {huge:x}"),
                  tuning(huge), coll(3072, 2).replace("h1:100:100", f"h1:{huge}:100"),
                  coll(2048, 1), tuning(8192), coll(3072, 2), tuning(12288))
    log = _parse(tmp_path, text)
    assert log.collectives["count"].tolist() == [1024, 2048, 3072]
    assert log.collectives["bytes"].tolist() == BYTES
    assert log.summary["records"]["out_of_range:collective"] == 3
    assert log.summary["records"]["out_of_range:tuning"] == 1
    assert log.unparsed["line"].tolist() == [3, 5, 6, 7]
    assert set(log.unparsed["reason"]) == {"collective record with a number beyond int64",
                                           "tuning record with a number beyond int64"}


# --- nccl-tests: every layout gets its rank count ---------------------------------------------

OLD_DEVICES = """\
# nThread 1 nGpus 1 minBytes 8 maxBytes 16 step: 2(factor) warmup iters: 5 iters: 20 validation: 1
#
# Using devices
#   Rank  0 Pid   4000 on   nodeD device  0 [0x3b] Tesla V100-SXM2-16GB
#   Rank  1 Pid   4001 on   nodeD device  1 [0x5e] Tesla V100-SXM2-16GB
#   Rank  2 Pid   4002 on   nodeE device  0 [0x3b] Tesla V100-SXM2-16GB
#
#                                                 out-of-place                       in-place
#       size         count    type   redop     time   algbw   busbw  error     time   algbw   busbw  error
#        (B)    (elements)                     (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
           8             2   float     sum    10.00    0.00    0.00  0e+00    11.00    0.00    0.00  0e+00
          16             4   float     sum    12.00    0.00    0.00  0e+00    13.00    0.00    0.00  0e+00
"""

NO_DEVICES = """\
# nThread 2 nGpus 4 minBytes 8 maxBytes 8 step: 2(factor) warmup iters: 5 iters: 20 validation: 1
#       size         count    type   redop     time   algbw   busbw  error     time   algbw   busbw  error
           8             2   float     sum    10.00    0.00    0.00  0e+00    11.00    0.00    0.00  0e+00
"""


def test_nccl_tests_device_lines_without_group(tmp_path):
    p = tmp_path / "all_reduce_perf.txt"
    p.write_text(OLD_DEVICES)
    df = profiler.parse_nccl_tests(str(p))
    assert df["nranks"].tolist() == [3] * 4 and df["nodes"].tolist() == [2] * 4
    assert df["gpu"].tolist() == ["Tesla V100-SXM2-16GB"] * 4
    m = analysis.load_measurements([str(p)])
    assert m["nranks"].tolist() == [3, 3] and m["time_us"].tolist() == [10.0, 12.0]


def test_nccl_tests_without_device_lines_uses_threads_times_gpus(tmp_path):
    p = tmp_path / "all_reduce_perf.txt"
    p.write_text(NO_DEVICES)
    df = profiler.parse_nccl_tests(str(p))
    assert df["nranks"].tolist() == [8, 8]
    assert analysis.load_measurements([str(p)])["nranks"].tolist() == [8]


# --- join_nccl: NCCL prints the host name cut at the first '.' --------------------------------

def test_join_matches_short_nccl_host_to_full_trace_host(tmp_path):
    text = _lines(INIT.replace("h1:", "node7:"), coll(1024, 0, "node7"), coll(2048, 1, "node7"))
    log = _parse(tmp_path, text)
    assert log.collectives["host"].tolist() == ["node7", "node7"]
    ev = pd.DataFrame([dict(host="node7.cluster.example.com", pid=100, rank=0, seq=i,
                            pg_name="0", pg_size=4, op="all_reduce", bytes=b, count=b // 4)
                       for i, b in enumerate([4096, 8192])])
    j = analysis.join_nccl(ev, log)
    assert j.events["nccl_seq"].tolist() == [0, 1]
    cov = j.coverage
    assert cov[["both", "nccl_only", "hooks_only"]].values.tolist() == [[2, 0, 0]]
    assert j.events["host"].tolist() == ["node7.cluster.example.com"] * 2


def test_shared_logs_parse_identically_in_small_blocks():
    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl")
    path = os.path.join(shared, "Timez-zx__nccl-tests__nccl.log")
    if not os.path.exists(path):
        pytest.skip("../shared/data absent")
    ref = profiler.parse_nccl_logs(path)
    small = profiler.parse_nccl_logs(path, block_bytes=4096)
    pd.testing.assert_frame_equal(small.collectives, ref.collectives)
    assert small.summary["records"] == ref.summary["records"]
    assert ref.summary["records"]["collective"] == 990


def test_records_without_any_prefix(tmp_path):
    # Some collectors strip `host:pid:tid [dev] `: the record is kept, without a thread.
    text = _lines(INIT, coll(1024, 0)[coll(1024, 0).index("NCCL INFO"):], coll(2048, 1))
    log = _parse(tmp_path, text)
    c = log.collectives
    assert c["count"].tolist() == [1024, 2048] and c["bytes"].tolist() == [4096, 8192]
    assert c["host"].isna().tolist() == [True, False] and c["pid"].isna().tolist() == [True, False]
    assert log.summary["lines_not_recognised"] == 0
