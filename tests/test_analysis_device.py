"""Device time first: hook rows with hand-made device times give exact device-based values."""

from __future__ import annotations

import pandas as pd
import pytest

from commscope import analysis

US = 1_000
MS = 1_000_000


def _frame(rows):
    base = dict(run_id="r", pg_name="0", pg_dim="tp", pg_size=2, pg_ranks=[0, 1],
                dtype="bfloat16", phase="decode", step=0, async_op=False, peer=None)
    df = pd.DataFrame([{**base, **r} for r in rows])
    for c in ("t_start_ns", "t_end_ns", "gpu_start_ns", "gpu_end_ns", "gpu_duration_ns",
              "gpu_hidden_ns", "bytes", "pg_seq"):
        if c not in df:
            df[c] = None
        df[c] = df[c].astype("Int64")
    return df


@pytest.fixture
def nccl_like():
    # On NCCL the host call returns at enqueue (20 us here) whatever the peers do; the kernels
    # say what happened: rank 1's kernel starts 300 us after rank 0's, data moves for 100 us.
    return _frame([
        dict(rank=0, pg_seq=0, op="all_reduce", bytes=1_000_000, t_start_ns=0, t_end_ns=20 * US,
             gpu_start_ns=50 * US, gpu_end_ns=450 * US),
        dict(rank=1, pg_seq=0, op="all_reduce", bytes=1_000_000, t_start_ns=10 * US,
             t_end_ns=30 * US, gpu_start_ns=350 * US, gpu_end_ns=450 * US),
        dict(rank=0, pg_seq=1, op="all_reduce", bytes=1_000_000, t_start_ns=1 * MS,
             t_end_ns=1 * MS + 20 * US, gpu_duration_ns=80 * US),
        dict(rank=1, pg_seq=1, op="all_reduce", bytes=1_000_000, t_start_ns=1 * MS,
             t_end_ns=1 * MS + 20 * US),
    ])


def test_match_uses_device_times_when_every_member_has_them(nccl_like):
    m = analysis.match_collectives(nccl_like)
    first = m.iloc[0]
    assert first["time_basis"] == "device"
    assert (first["start_skew_ns"], first["transfer_ns"], first["last_rank"]) == \
        (300 * US, 100 * US, 1)
    assert first["algbw_GBps"] == pytest.approx(10.0)  # 1e6 B / 1e5 ns
    assert first["busbw_GBps"] == pytest.approx(10.0)  # x 2(n-1)/n = 1 for n = 2
    # pg_seq 1: only a duration on one rank, no device start/end on either: host basis.
    second = m.iloc[1]
    assert (second["time_basis"], second["start_skew_ns"], second["transfer_ns"]) == \
        ("host", 0, 20 * US)


def test_waits_and_stragglers_from_device_starts(nccl_like):
    w = analysis.collective_waits(nccl_like)
    assert w[["pg_seq", "rank", "wait_ns", "time_basis"]].values.tolist() == [
        [0, 0, 300 * US, "device"], [0, 1, 0, "device"], [1, 0, 0, "host"], [1, 1, 0, "host"]]
    s = analysis.stragglers(nccl_like).set_index("rank")
    assert s.loc[1, ["times_last", "wait_imposed_ns"]].tolist() == [1, 300 * US]
    assert s.loc[0, ["times_last", "wait_total_ns"]].tolist() == [0, 300 * US]
    assert set(s["time_basis"]) == {"mixed"}
    rw = analysis._matching.row_waits(nccl_like)
    assert rw.tolist() == [300 * US, 0, 0, 0]


def test_bandwidth_and_summary_durations(nccl_like):
    b = analysis.bandwidth(nccl_like)
    assert b["duration_ns"].tolist() == [400 * US, 100 * US, 80 * US, 20 * US]
    assert b["time_basis"].tolist() == ["device", "device", "device", "host"]
    assert b["algbw_GBps"].tolist() == pytest.approx([2.5, 10.0, 12.5, 50.0])
    s = analysis.summarize(nccl_like).iloc[0]
    assert (s["calls"], s["time_basis"]) == (4, "mixed")
    assert s["total_time_us"] == pytest.approx(400 + 100 + 80 + 20)
    assert s["p50_us"] == pytest.approx(90.0)
    only_device = analysis.summarize(nccl_like[nccl_like["pg_seq"] == 0]).iloc[0]
    assert (only_device["time_basis"], only_device["p50_us"]) == ("device", 250.0)


def test_sweep_table_times_calls_on_the_device(nccl_like):
    ev = nccl_like.assign(phase="bench", count=500_000)
    t = analysis.sweep_table(ev).iloc[0]
    assert t["time_us"] == pytest.approx(90.0)  # median of 400, 100, 80, 20 us


def test_overlap_of_imported_kernels_uses_hidden_device_time():
    ev = _frame([
        dict(rank=0, pg_seq=0, op="all_reduce", bytes=64, t_start_ns=0, t_end_ns=10,
             gpu_start_ns=0, gpu_end_ns=400 * US, gpu_hidden_ns=300 * US, phase="prefill"),
        dict(rank=0, pg_seq=1, op="all_reduce", bytes=64, t_start_ns=0, t_end_ns=10,
             gpu_duration_ns=200 * US, gpu_hidden_ns=0, phase="prefill"),
        dict(rank=0, pg_seq=2, op="all_reduce", bytes=64, t_start_ns=0, t_end_ns=10,
             gpu_start_ns=0, gpu_end_ns=50 * US, phase="prefill"),  # no hidden: not counted
    ])
    o = analysis.overlap(ev)
    assert len(o) == 1
    row = o.iloc[0]
    assert (row["time_basis"], row["count"], row["total_ns"]) == ("device", 2, 600 * US)
    assert (row["exposed_ns"], row["hidden_ns"]) == (300 * US, 300 * US)
    assert row["hidden_fraction"] == 0.5
