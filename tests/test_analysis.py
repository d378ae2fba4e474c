"""Trace analytics on hand-built traces with exact expected numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from commscope import analysis

MS = 1_000_000


def _ev(**kw):
    base = dict(run_id="r", host="h", pid=1, pg_name="0", pg_dim="tp", pg_size=2,
                pg_ranks=[0, 1], dtype="float32", phase="decode", step=0, async_op=False,
                peer=None, t_wait_ns=None, t_return_ns=None)
    base.update(kw)
    return base


def _frame(rows):
    df = pd.DataFrame(rows)
    for c in ("t_start_ns", "t_end_ns", "t_wait_ns", "t_return_ns", "bytes", "peer", "pg_seq"):
        df[c] = df[c].astype("Int64")
    return df


@pytest.fixture
def two_collectives():
    # Instance 0: both start together, 2 ms transfer. Instance 1: rank 1 arrives 5 ms late.
    return _frame([
        _ev(rank=0, seq=0, pg_seq=0, op="all_reduce", bytes=4_000_000, t_start_ns=0,
            t_end_ns=2 * MS),
        _ev(rank=1, seq=0, pg_seq=0, op="all_reduce", bytes=4_000_000, t_start_ns=0,
            t_end_ns=2 * MS),
        _ev(rank=0, seq=1, pg_seq=1, op="all_reduce", bytes=4_000_000, t_start_ns=10 * MS,
            t_end_ns=17 * MS),
        _ev(rank=1, seq=1, pg_seq=1, op="all_reduce", bytes=4_000_000, t_start_ns=15 * MS,
            t_end_ns=17 * MS),
    ])


def test_bandwidth_nccl_tests_factors():
    ev = _frame([
        _ev(rank=0, seq=0, pg_seq=0, op="all_reduce", bytes=8_000, pg_size=4, t_start_ns=0,
            t_end_ns=1000),
        _ev(rank=0, seq=1, pg_seq=1, op="all_gather", bytes=8_000, pg_size=4, t_start_ns=0,
            t_end_ns=1000),
        _ev(rank=0, seq=2, pg_seq=2, op="broadcast", bytes=8_000, pg_size=4, t_start_ns=0,
            t_end_ns=1000),
        _ev(rank=0, seq=3, pg_seq=3, op="barrier", bytes=0, pg_size=4, t_start_ns=0,
            t_end_ns=1000),
    ])
    bw = analysis.bandwidth(ev)
    assert bw["algbw_GBps"].tolist()[:3] == [8.0, 8.0, 8.0]  # 8000 B / 1000 ns = 8 GB/s
    assert bw["busbw_GBps"].tolist()[:3] == [12.0, 6.0, 8.0]  # x 2*3/4, x 3/4, x 1
    assert math.isnan(bw["busbw_GBps"].iloc[3])
    assert "nccl-tests" in analysis.BUSBW_DEFINITION


def test_match_collectives_skew_and_transfer(two_collectives):
    m = analysis.match_collectives(two_collectives)
    assert m["start_skew_ns"].tolist() == [0, 5 * MS]
    assert m["transfer_ns"].tolist() == [2 * MS, 2 * MS]
    assert m["last_rank"].tolist()[1] == 1 and m["ranks_seen"].tolist() == [2, 2]
    assert m["algbw_GBps"].tolist() == [2.0, 2.0] and m["busbw_GBps"].tolist() == [2.0, 2.0]
    w = analysis.collective_waits(two_collectives)
    assert w.sort_values(["pg_seq", "rank"])["wait_ns"].tolist() == [0, 0, 5 * MS, 0]


def test_stragglers(two_collectives):
    s = analysis.stragglers(two_collectives)
    top = s.iloc[0]
    assert (top["rank"], top["times_last"], top["wait_imposed_ns"]) == (1, 1, 5 * MS)
    r0 = s[s["rank"] == 0].iloc[0]
    assert (r0["times_last"], r0["wait_total_ns"]) == (0, 5 * MS)


def test_p2p_pairs_are_matched():
    ev = _frame([
        _ev(rank=0, seq=0, pg_seq=0, op="send", peer=1, bytes=64, t_start_ns=0, t_end_ns=3000),
        _ev(rank=1, seq=0, pg_seq=0, op="recv", peer=0, bytes=64, t_start_ns=1000,
            t_end_ns=3000),
    ])
    m = analysis.match_collectives(ev)
    assert len(m) == 1
    row = m.iloc[0]
    assert (row["src"], row["dst"], row["start_skew_ns"], row["transfer_ns"]) == (0, 1, 1000, 2000)
    assert row["last_rank"] == 1


def test_overlap():
    ev = _frame([
        _ev(rank=0, seq=0, pg_seq=0, op="send", async_op=True, bytes=64, t_start_ns=0,
            t_return_ns=100, t_wait_ns=900, t_end_ns=1000),
        _ev(rank=0, seq=1, pg_seq=1, op="send", async_op=True, bytes=64, t_start_ns=0,
            t_return_ns=100, t_wait_ns=200, t_end_ns=1000),
        _ev(rank=0, seq=2, pg_seq=2, op="all_reduce", bytes=64, t_start_ns=0, t_end_ns=50),
    ])
    o = analysis.overlap(ev).iloc[0]
    assert (o["count"], o["waited"], o["total_ns"]) == (2, 2, 2000)
    assert (o["window_ns"], o["exposed_ns"], o["hidden_ns"]) == (900, 900, 1100)
    assert o["hidden_fraction"] == 0.55


def test_find_mismatches_two_ranks_disagree_without_inventing_a_culprit(two_collectives):
    assert analysis.find_mismatches(two_collectives).empty
    ev = two_collectives.copy()
    ev.loc[0, "bytes"] = 8  # rank 0 disagrees at pg_seq 0, where both arrived together
    m = analysis.find_mismatches(ev).iloc[0]
    assert (m["pg_seq"], m["kind"], m["ranks"], m["expected"]) == (0, "bytes", [0, 1], None)
    assert m["observed_by"] == "rank 0: all_reduce 8 B float32; rank 1: all_reduce 4000000 B float32"
    assert m["suspect_ranks"] == [] and "no rank is blamed" in m["detail"]
    assert "arrived last" not in m["detail"]


def test_find_mismatches_two_ranks_timing_names_who_was_waited_for(two_collectives):
    ev = two_collectives.copy()
    ev.loc[2, "bytes"] = 8  # rank 0 disagrees at pg_seq 1, where rank 1 arrived 5 ms late
    m = analysis.find_mismatches(ev).iloc[0]
    assert (m["pg_seq"], m["kind"], m["ranks"], m["expected"]) == (1, "bytes", [0, 1], None)
    assert m["suspect_ranks"] == [1]
    assert "rank 1 arrived last (host time): rank 0 waited 5.000 ms" in m["detail"]


def test_find_mismatches_majority_and_missing():
    def inst(rank, nbytes, seq=0):
        return _ev(rank=rank, seq=seq, pg_seq=seq, op="all_reduce", bytes=nbytes, pg_size=3,
                   pg_ranks=[0, 1, 2], t_start_ns=0, t_end_ns=MS)

    # Rank 2's signature sorts first ("... 1000 B" < "... 4000000 B") yet it is the minority.
    ev = _frame([inst(0, 4_000_000), inst(1, 4_000_000), inst(2, 1000)])
    m = analysis.find_mismatches(ev).iloc[0]
    assert (m["kind"], m["ranks"], m["suspect_ranks"]) == ("bytes", [2], [2])
    assert (m["expected"], m["observed"]) == ("all_reduce 4000000 B float32",
                                              "all_reduce 1000 B float32")
    ev = _frame([inst(0, 64), inst(1, 64), inst(2, 64), inst(0, 64, 1), inst(2, 64, 1)])
    m = analysis.find_mismatches(ev).iloc[0]
    assert (m["pg_seq"], m["kind"], m["ranks"], m["observed"]) == (1, "missing", [1], "no call")
    assert m["pg_ranks"] == [0, 1, 2] and m["expected"] == "all_reduce 64 B float32"


def test_summarize_percentiles_and_share(two_collectives):
    s = analysis.summarize(two_collectives)
    assert len(s) == 1
    row = s.iloc[0]
    assert row["calls"] == 4 and row["size_bucket"] == "<=4MiB"
    assert row["total_time_us"] == 2000 + 2000 + 7000 + 2000
    assert row["p50_us"] == 2000 and row["p99_us"] == pytest.approx(6850)
    # Per rank: 9 ms and 4 ms of communication over 17 ms and 17 ms of wall time.
    assert row["share_of_wall"] == pytest.approx((13 / 2) / 17)
    assert row["median_busbw_GBps"] == pytest.approx(np.median([2.0, 2.0, 4 / 7, 2.0]))


def test_size_bucket_labels():
    labels, _ = analysis.size_bucket(pd.Series([0, 1, 1000, 1024, 1025, 3 << 20]))
    assert labels.tolist() == ["0B", "<=1B", "<=1KiB", "<=1KiB", "<=2KiB", "<=4MiB"]


def test_stragglers_with_a_missing_call_host_and_device_paths_agree():
    def inst(rank, seq, start_ms):
        return _ev(rank=rank, seq=seq, pg_seq=seq, op="all_reduce", bytes=64, pg_size=3,
                   pg_ranks=[0, 1, 2], t_start_ns=start_ms * MS, t_end_ns=20 * MS)

    # Rank 1 never issues pg_seq 1: its totals cannot come from the group's sums.
    ev = _frame([inst(0, 0, 0), inst(1, 0, 2), inst(2, 0, 1), inst(0, 1, 10), inst(2, 1, 14)])
    expected = {"rank": [2, 1, 0], "collectives": [2, 1, 2], "times_last": [1, 1, 0],
                "wait_imposed_ns": [4 * MS, 3 * MS, 0], "wait_total_ns": [1 * MS, 0, 6 * MS]}
    s = analysis.stragglers(ev)
    assert s[list(expected)].to_dict("list") == expected
    assert set(s["time_basis"]) == {"host"}
    # The same starts as device times (host times all equal) take the row-join path.
    dev = ev.assign(gpu_start_ns=ev["t_start_ns"], gpu_end_ns=ev["t_end_ns"],
                    t_start_ns=pd.array([0] * len(ev), dtype="Int64"))
    s = analysis.stragglers(dev)
    assert s[list(expected)].to_dict("list") == expected
    assert set(s["time_basis"]) == {"device"}
