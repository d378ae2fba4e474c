"""NCCL debug logs and nccl-tests output: every format claimed, damaged input, real samples."""

from __future__ import annotations

import gzip
import os
import random

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commscope import analysis, profiler

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nccl")
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data absent")

# NCCL 2.2x: Init lines with busId/commId, [nranks=N], tuning lines after the collective.
MODERN = """\
h1:100:100 [0] NCCL INFO NCCL version 2.21.5+cuda12.4
h1:100:100 [0] NCCL INFO cudaDriverVersion 12040
h1:100:110 [0] NCCL INFO ncclCommInitRank comm 0xaaa rank 0 nranks 4 cudaDev 0 nvmlDev 0 busId 1000 commId 0x77 - Init START
h1:100:110 [0] NCCL INFO Channel 00/02 : 0 1 2 3
h1:100:110 [0] NCCL INFO Trees [0] 1/-1/-1->0->-1 [1] 1/-1/-1->0->-1
h1:100:110 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC/read
h1:100:110 [0] NCCL INFO Channel 01/0 : 0[0] -> 3[3] [send] via NET/IB/0/GDRDMA
h1:100:110 [0] NCCL INFO NVLS multicast support is not available on dev 0
h1:100:110 [0] NCCL INFO 2 coll channels, 2 collnet channels, 0 nvls channels, 4 p2p channels, 2 p2p channels per peer
h1:100:110 [0] NCCL INFO ncclCommInitRank comm 0xaaa rank 0 nranks 4 cudaDev 0 nvmlDev 0 busId 1000 commId 0x77 - Init COMPLETE
h1:100:100 [0] NCCL INFO AllReduce: opCount 0 sendbuff 0x1 recvbuff 0x2 count 1024 datatype 9 op 0 root 0 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO AllReduce: 2048 Bytes -> Algo RING proto LL channel{Lo..Hi}={0..1}
h1:100:100 [0] NCCL INFO AllGather: opCount 1 sendbuff 0x1 recvbuff 0x2 count 256 datatype 7 op 0 root 0 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO AllGather: 4096 Bytes -> Algo RING proto SIMPLE channel{Lo..Hi}={0..1}
h1:100:100 [0] NCCL INFO ReduceScatter: opCount 2 sendbuff 0x1 recvbuff 0x2 count 100 datatype 6 op 4 root 0 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO Broadcast: opCount 3 sendbuff 0x1 recvbuff 0x1 count 10 datatype 10 op 0 root 2 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO Send: opCount 4 sendbuff (nil) recvbuff 0x9 count 64 datatype 11 op 0 root 3 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO Recv: opCount 4 sendbuff (nil) recvbuff 0x9 count 64 datatype 0 op 0 root 1 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO AllToAll: opCount 5 sendbuff 0x1 recvbuff 0x2 count 32 datatype 4 op 0 root 0 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO Gather: opCount 6 sendbuff 0x1 recvbuff 0x2 count 8 datatype 2 op 0 root 1 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO Scatter: opCount 7 sendbuff 0x1 recvbuff 0x2 count 8 datatype 3 op 0 root 1 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL INFO Reduce: opCount 8 sendbuff 0x1 recvbuff 0x2 count 5 datatype 8 op 2 root 0 comm 0xaaa [nranks=4] stream 0x5
h1:100:100 [0] NCCL WARN Cuda failure 'out of memory'
"""

# NCCL 2.4-era: no nranks in COLL lines, hex opCount, init without nvmlDev/commId, numeric
# tuning line printed before the collective.
OLD = """\
oldhost:7:7 [1] NCCL INFO NCCL version 2.4.8+cuda10.1
oldhost:7:7 [1] NCCL INFO comm 0xbbb rank 1 nranks 2 cudaDev 1 busId 2000 - Init COMPLETE
oldhost:7:7 [1] NCCL INFO AllReduce: 40 Bytes -> Algo 1 proto 2 time 13.5
oldhost:7:7 [1] NCCL INFO AllReduce: opCount 1a sendbuff 0x1 recvbuff 0x2 count 10 datatype 7 op 0 root 0 comm 0xbbb stream 0x3
oldhost:7:7 [1] NCCL INFO Broadcast: opCount 1b sendbuff 0x1 recvbuff 0x2 count 3 datatype 2 op 0 root 0 comm 0xbbb stream 0x3
"""

# Damage: launcher/logger prefixes, prose, a torn line holding two records, a wrapped line.
DAMAGED = """\
[1,0]<stdout>:h2:5:5 [0] NCCL INFO comm 0xccc rank 0 nranks 2 cudaDev 0 busId 3000 - Init COMPLETE
2024-05-01 10:00:00,123 worker-3 INFO h2:5:5 [0] NCCL INFO AllReduce: opCount 0 sendbuff 0x1 recvbuff 0x2 count 4 datatype 7 op 0 root 0 comm 0xccc [nranks=2] stream 0x1
Epoch 1/10: loss=0.23 (this is prose)
\x1b[32mh2:5:5 [0] NCCL INFO AllReduce: opCount 1 sendbuff 0x1 recvbuff 0x2 count 8 datatype 7 op 0 root 0 comm 0xccc [nranks=2] stream 0x1\x1b[0m
h2:5:5 [0] NCCL INFO AllReduce: opCount 2 sendbuff 0x1 recvbuff 0x2 count 16 datatyh2:6:6 [1] NCCL INFO comm 0xddd rank 1 nranks 2 cudaDev 1 busId 4000 - Init COMPLETE
h2:5:5 [0] NCCL INFO AllReduce: opCount 3 sendbuff 0x1 recvbuff 0x2 count
 32 datatype 7 op 0 root 0 comm 0xccc [nranks=2] stream 0x1
"""


def _write(tmp_path, name, text, gz=False):
    p = tmp_path / name
    if gz:
        with gzip.open(p, "wt") as fh:
            fh.write(text)
    else:
        p.write_text(text)
    return str(p)


def test_modern_format_every_collective(tmp_path):
    log = profiler.parse_nccl_logs(_write(tmp_path, "modern.log", MODERN))
    c = log.collectives
    assert c["op"].tolist() == ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "send",
                                "recv", "all_to_all", "gather", "scatter", "reduce"]
    assert c["dtype"].tolist() == ["bfloat16", "float32", "float16", "float8_e4m3fn",
                                   "float8_e5m2", "int8", "int64", "int32", "uint32", "float64"]
    # nccl-tests size: x nranks for all_gather, reduce_scatter, gather, scatter.
    assert c["bytes"].tolist() == [2048, 4096, 800, 10, 64, 64, 256, 128, 128, 40]
    assert c["count"].tolist() == [1024, 256, 100, 10, 64, 64, 32, 8, 8, 5]
    assert c["redop"].tolist()[:3] == ["sum", "sum", "avg"]
    assert c["root"].tolist()[3] == 2 and pd.isna(c["root"].iloc[0])
    assert c["peer"].tolist()[4:6] == [3, 1]
    assert c["rank"].tolist() == [0] * 10 and c["pg_size"].tolist() == [4] * 10
    assert c["algo"].tolist()[:2] == ["RING", "RING"] and c["proto"].tolist()[:2] == ["LL", "SIMPLE"]
    assert c["channels"].tolist()[:2] == [2, 2]
    assert c["line"].tolist()[0] == 11 and c["source"].iloc[0].endswith("modern.log")
    assert c["nccl_seq"].tolist() == list(range(10))
    comm = log.communicators.iloc[0]
    assert (comm["comm"], comm["rank"], comm["nranks"], comm["bus_id"], comm["comm_id"]) == \
        ("0xaaa", 0, 4, "1000", "0x77")
    assert comm["nccl_version"] == "2.21.5+cuda12.4"
    assert (comm["coll_channels"], comm["nvls_channels"], comm["p2p_channels"]) == (2, 0, 4)
    assert comm["transports"] == "NET,P2P"
    kinds = log.topology["kind"].value_counts().to_dict()
    assert kinds["connection"] == 2 and kinds["trees"] == 1 and kinds["nvls"] == 1
    assert log.warnings["text"].tolist() == ["Cuda failure 'out of memory'"]
    assert log.summary["records"]["collective"] == 10 and log.summary["records"]["tuning"] == 2
    assert log.summary["lines_not_recognised"] == 0


def test_old_format_numeric_tuning_before_collective(tmp_path):
    log = profiler.parse_nccl_logs(_write(tmp_path, "old.log", OLD))
    c = log.collectives
    assert c["op_count"].tolist() == [0x1a, 0x1b]
    assert c["nranks"].isna().all() and c["pg_size"].tolist() == [2, 2]  # from the init line
    assert c["rank"].tolist() == [1, 1] and c["bytes"].tolist() == [40, 12]
    assert c["algo"].tolist()[0] == "RING" and c["proto"].tolist()[0] == "SIMPLE"
    assert log.communicators["nccl_version"].tolist() == ["2.4.8+cuda10.1"]


def test_damaged_log_keeps_going_and_reports(tmp_path):
    log = profiler.parse_nccl_logs(_write(tmp_path, "damaged.log.gz", DAMAGED, gz=True))
    c = log.collectives
    # The torn record (its tail lost under another process's line) is reported; the wrapped
    # one is rejoined with its continuation line.
    assert c["count"].tolist() == [4, 8, 32] and c["bytes"].tolist() == [16, 32, 128]
    assert c["line"].tolist() == [2, 4, 6]
    assert set(c["host"]) == {"h2"} and c["rank"].tolist() == [0, 0, 0]
    assert sorted(log.communicators["comm"]) == ["0xccc", "0xddd"]
    s = log.summary
    assert s["lines_read"] == 7
    assert s["records"]["torn:collective"] == 1 and s["records"]["wrapped:collective"] == 1
    assert s["lines_not_recognised"] == 1  # the prose
    assert any("prose" in x for x in s["samples_not_recognised"])
    reasons = log.unparsed["reason"].value_counts().to_dict()
    assert reasons == {"incomplete collective record": 1, "not recognised": 1}


def test_folder_and_bad_paths(tmp_path):
    _write(tmp_path, "a.log", MODERN)
    _write(tmp_path, "b.log", OLD)
    log = profiler.parse_nccl_logs(str(tmp_path))
    assert len(log.collectives) == 12 and len(log.summary["files"]) == 2
    with pytest.raises(profiler.NcclLogError, match="not found"):
        profiler.parse_nccl_logs(str(tmp_path / "missing.log"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(profiler.NcclLogError, match="no log files"):
        profiler.parse_nccl_logs(str(empty))


def test_write_tables(tmp_path):
    log = profiler.parse_nccl_logs(_write(tmp_path, "modern.log", MODERN))
    paths = log.write(tmp_path / "out")
    assert sorted(os.path.basename(p) for p in paths) == [
        "collectives.parquet", "communicators.parquet", "topology.parquet", "unparsed.parquet",
        "warnings.parquet"]
    back = pd.read_parquet(tmp_path / "out" / "collectives.parquet")
    assert back["bytes"].tolist() == log.collectives["bytes"].tolist()


_CLEAN_KEYS = ["op", "op_count", "count", "dtype", "bytes", "comm", "algo", "proto"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400),
       st.integers(0, len(MODERN)))
def test_random_and_truncated_input_invents_nothing(tmp_path, junk, cut):
    text = MODERN[:cut] + junk + MODERN[cut:cut + 200]
    log = profiler.parse_nccl_logs(_write(tmp_path, "fuzz.log", text))
    assert log.summary["lines_read"] == text.count("\n") + (not text.endswith("\n"))
    # Every collective found is one of MODERN's (random bytes never make a collective).
    real = profiler.parse_nccl_logs(_write(tmp_path, "clean.log", MODERN)).collectives
    known = set(map(tuple, real[["op", "op_count", "count", "dtype"]].astype(str).values))
    got = set(map(tuple, log.collectives[["op", "op_count", "count", "dtype"]].astype(str).values))
    assert got <= known


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 22),
                          st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                         blacklist_characters="\n"),
                                  max_size=120)), max_size=12))
def test_noise_lines_between_records_change_nothing(tmp_path, noise):
    clean = profiler.parse_nccl_logs(_write(tmp_path, "clean.log", MODERN))
    lines = MODERN.splitlines(keepends=True)
    for pos, text in sorted(noise, reverse=True):
        lines.insert(pos, text + "\n")
    log = profiler.parse_nccl_logs(_write(tmp_path, "noisy.log", "".join(lines)))
    assert log.summary["lines_read"] == 23 + len(noise)
    a = clean.collectives[_CLEAN_KEYS].astype(str)
    b = log.collectives[_CLEAN_KEYS].astype(str)
    assert a.values.tolist() == b.values.tolist()
    assert log.summary["records"]["collective"] == 10 and log.summary["records"]["tuning"] == 2


@needs_shared
@pytest.mark.parametrize("name, colls, tunings, channels", [
    ("Timez-zx__nccl-tests__nccl.log", 990, 495, 24),
    ("Timez-zx__nccl-tests__nccl-fault.log", 990, 495, 2),
])
def test_real_nccl_tests_logs(name, colls, tunings, channels):
    log = profiler.parse_nccl_logs(os.path.join(SHARED, name))
    assert len(log.collectives) == colls and log.summary["records"]["tuning"] == tunings
    assert log.collectives["algo"].notna().all()  # every collective got its tuning line
    assert set(log.collectives["rank"]) == {0, 1} and set(log.collectives["host"]) == {"mew0"}
    assert len(log.communicators) == 2 and log.communicators["complete"].all()
    assert set(log.communicators["coll_channels"]) == {channels}
    assert set(log.communicators["nccl_version"]) == {"2.27.7+cuda13.0"}
    assert len(log.warnings) == 0


@needs_shared
def test_real_torn_log():
    log = profiler.parse_nccl_logs(os.path.join(SHARED, "1602615899__RADDet__nccl_debug.log"))
    comms = log.communicators.sort_values("rank")
    assert comms["rank"].tolist() == [0, 1] and set(comms["host"]) == {"ljm"}
    assert comms["comm_id"].tolist() == ["0x245d75cdaf12704b"] * 2
    conn = log.topology[log.topology["kind"] == "connection"]
    assert conn["transport"].tolist() == ["SHM", "SHM"]
    assert log.summary["lines_read"] == 17


# --- nccl-tests ------------------------------------------------------------------------------

NCCL_TESTS_OLD = """\
# nThread 1 nGpus 4 minBytes 8 maxBytes 64 step: 2(factor) warmup iters: 5 iters: 20 validation: 1
#
# Using devices
#   Rank  0 Pid  12 on node1 device  0 [0x1a] Tesla V100-SXM2-16GB
#
#                                                 out-of-place                       in-place
#       size         count    type   redop     time   algbw   busbw  error     time   algbw   busbw  error
#        (B)    (elements)                     (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)
           8             2   float     sum    10.00    0.00    0.00  0e+00    11.00    0.00    0.00  0e+00
          16             4   float     sum    12.00    0.00    0.00  0e+00    13.00    0.00    0.00  0e+00
# Out of bounds values : 0 OK
# Avg bus bandwidth    : 0.00123
"""

NCCL_TESTS_TWO = """\
# Collective test starting: alltoall_perf
# nThread 1 nGpus 1 minBytes 1024 maxBytes 2048 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0
#  Rank  0 Group  0 Pid   1 on a device  0 [0000:04:00] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid   2 on b device  0 [0000:04:00] NVIDIA H100 80GB HBM3
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
        1024           128     float    none      -1    20.00    0.05    0.03      0      N/A     N/A     N/A    N/A
        2048           256     float    none      -1    21.00    0.10    0.05      0      N/A     N/A     N/A    N/A
# Collective test starting: reduce_scatter_perf
#  Rank  0 Group  0 Pid   1 on a device  0 [0000:04:00] NVIDIA H100 80GB HBM3
#  Rank  1 Group  0 Pid   2 on b device  0 [0000:04:00] NVIDIA H100 80GB HBM3
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
        4096           512      half     sum      -1    30.00    0.14    0.07      0    29.00    0.14    0.07      0
#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong
        8192          1024      half     sum      -1    31.00    0.26    0.13      0    30.00    0.27    0.14      0
"""


def test_nccl_tests_old_layout(tmp_path):
    df = profiler.parse_nccl_tests(_write(tmp_path, "all_reduce_perf.txt", NCCL_TESTS_OLD))
    assert df["collective"].tolist() == ["all_reduce"] * 4  # from the file name
    assert df["bytes"].tolist() == [8, 8, 16, 16]
    assert df["placement"].tolist() == ["out_of_place", "in_place"] * 2
    assert df["time_us"].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert df["dtype"].tolist() == ["float32"] * 4 and df["wrong"].tolist() == [0] * 4
    assert df["root"].isna().all()
    assert list(df.attrs["avg_busbw_GBps"].values()) == [0.00123]


def test_nccl_tests_na_repeated_headers_several_tests(tmp_path):
    df = profiler.parse_nccl_tests(_write(tmp_path, "out.txt", NCCL_TESTS_TWO))
    a2a = df[df["collective"] == "all_to_all"]
    assert a2a["placement"].tolist() == ["out_of_place"] * 2  # in-place is N/A
    assert a2a["redop"].isna().all() and a2a["nranks"].tolist() == [2, 2]
    assert a2a["nodes"].tolist() == [2, 2] and a2a["gpu"].iloc[0] == "NVIDIA H100 80GB HBM3"
    rs = df[df["collective"] == "reduce_scatter"]
    assert rs["bytes"].tolist() == [4096, 4096, 8192, 8192]
    assert rs["dtype"].tolist() == ["float16"] * 4 and rs["busbw_GBps"].tolist() == [0.07, 0.07, 0.13, 0.14]


@needs_shared
def test_nccl_tests_real_outputs():
    df = profiler.parse_nccl_tests(os.path.join(
        SHARED, "lessizzmore__create-a3mega-ztan-fork__ztan-NCCL-test-result"))
    assert len(df) == 62 and df["bytes"].nunique() == 31
    assert (df["nranks"] == 16).all() and (df["nodes"] == 2).all()
    # The file's own "Avg bus bandwidth" (mean of every busbw, printed to 2 decimals).
    assert abs(df["busbw_GBps"].mean() - 70.742) < 0.005
    # Rows split and glued to NCCL log lines are reassembled.
    glued = profiler.parse_nccl_tests(os.path.join(SHARED, "Timez-zx__nccl-tests__nccl.log"))
    assert len(glued) == 22 and glued["bytes"].nunique() == 11
    assert abs(glued["busbw_GBps"].mean() - 178.078) < 0.005
    assert glued[glued["bytes"] == 8388608]["time_us"].tolist() == [83.33, 80.98]


# --- joining with a trace --------------------------------------------------------------------

def _events(ops):
    rows = []
    for seq, (op, nbytes) in enumerate(ops):
        rows.append(dict(host="h1", pid=100, rank=0, seq=seq, pg_name="0", pg_size=4, op=op,
                         bytes=nbytes, count=nbytes // 4))
    return pd.DataFrame(rows)


def test_join_coverage_and_algorithms(tmp_path):
    log = profiler.parse_nccl_logs(_write(tmp_path, "modern.log", MODERN))
    # The trace saw the all_reduce and all_gather and one call NCCL never logged, but not the
    # rest (which "bypassed" the hooks).
    ev = _events([("all_reduce", 2048), ("barrier", 0), ("all_gather", 4096)])
    ev.loc[1, "op"] = "broadcast"
    ev.loc[1, "bytes"] = 999
    j = analysis.join_nccl(ev, log)
    assert j.events["nccl_algo"].tolist() == ["RING", None, "RING"]
    assert j.events["nccl_proto"].tolist() == ["LL", None, "SIMPLE"]
    assert j.events["nccl_seq"].tolist()[0] == 0 and j.events["nccl_seq"].tolist()[2] == 1
    cov = j.coverage.iloc[0]
    assert (cov["both"], cov["nccl_only"], cov["hooks_only"]) == (2, 8, 1)
    assert len(j.nccl_only) == 8 and len(j.hooks_only) == 1


def test_join_random_interleavings():
    rng = random.Random(0)
    nccl_rows, trace_ops, true_both = [], [], 0
    for _i in range(300):
        key = ("all_reduce", 4 * rng.randint(1, 5))
        r = rng.random()
        if r < 0.1:  # NCCL only (a custom kernel's NCCL call)
            nccl_rows.append(key)
        elif r < 0.2:  # hooks only
            trace_ops.append(key)
        else:
            nccl_rows.append(key)
            trace_ops.append(key)
            true_both += 1
    colls = pd.DataFrame(dict(op=[k[0] for k in nccl_rows], bytes=[k[1] for k in nccl_rows],
                              count=[k[1] // 4 for k in nccl_rows], host="h1", pid=100,
                              comm="0xaaa", pg_size=4, algo="RING", proto="LL",
                              nccl_seq=range(len(nccl_rows))))
    ev = _events(trace_ops)
    j = analysis.join_nccl(ev, colls)
    cov = j.coverage.iloc[0]
    matched = j.events.dropna(subset=["nccl_seq"])
    # Every match pairs equal calls, in order on both sides.
    seqs = matched["nccl_seq"].astype(int).to_numpy()
    assert (colls["bytes"].to_numpy()[seqs] == matched["bytes"].to_numpy()).all()
    assert (seqs[1:] > seqs[:-1]).all() and (matched["seq"].diff().dropna() > 0).all()
    assert cov["both"] == len(matched) and cov["hooks_only"] == len(trace_ops) - len(matched)
    assert sorted(j.nccl_only["nccl_seq"].tolist() + seqs.tolist()) == list(range(len(nccl_rows)))
    # Nearly every call seen by both is found despite the interleaving of look-alike calls.
    assert cov["both"] >= 0.95 * true_both
