"""One implementation for DataFrames and trace paths: clock offsets, Trace, schema 1.0 traces."""

from __future__ import annotations

import os

import pandas as pd
import pytest

import commscope
from commscope import analysis
from tests.analysis_fixtures import MS, TIME_COLUMNS, offset_run, row, write_rank

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run(tmp_path):
    offset_run(tmp_path / "run", offset_ns=3 * MS)
    return tmp_path / "run"


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_every_time_column_is_aligned_by_load_events(run):
    df = analysis.load_events(run)
    r1 = df[df["rank"] == 1].set_index("pg_seq")
    # Recorded 3 ms ahead; true times come back for all six time columns.
    assert r1.loc[1, "t_start_ns"] == 15 * MS
    recv = df[(df["op"] == "recv")].iloc[0]
    assert [recv[c] for c in ("t_start_ns", "t_return_ns", "t_wait_ns", "t_end_ns")] == \
        [21 * MS, 21_100_000, 22 * MS, 26 * MS]
    b = df[(df["op"] == "broadcast") & (df["rank"] == 1)].iloc[0]
    assert (b["gpu_start_ns"], b["gpu_end_ns"], b["gpu_duration_ns"]) == (33 * MS, 36 * MS, 3 * MS)
    assert set(TIME_COLUMNS) <= set(df.columns)


def test_offset_run_same_results_from_frame_path_and_trace(run):
    df = analysis.load_events(run)
    with analysis.Trace(run) as t:
        for fn, method in ((analysis.match_collectives, t.match),
                           (analysis.stragglers, t.stragglers), (analysis.overlap, t.overlap),
                           (analysis.summarize, t.summary),
                           (analysis.collective_waits, t.waits),
                           (analysis.find_mismatches, t.mismatches)):
            from_frame, from_path, from_trace = fn(df), fn(str(run)), method()
            _same(from_frame, from_path)
            _same(from_frame, from_trace)
        _same(t.events(), df)


def test_offset_run_exact_values(run):
    m = analysis.match_collectives(run)
    assert m["pg_name"].tolist() == ["0", "0", "0", "p2p"]
    assert m["op"].tolist() == ["all_reduce", "all_reduce", "broadcast", "send"]
    # Without the offset, rank 1's 3 ms would appear as skew on every instance.
    assert m["start_skew_ns"].tolist() == [0, 5 * MS, 2 * MS, 1 * MS]
    assert m["transfer_ns"].tolist() == [2 * MS, 2 * MS, 3 * MS, 5 * MS]
    assert m["last_rank"].tolist()[1:] == [1, 1, 1]
    assert m["time_basis"].tolist() == ["host", "host", "device", "host"]
    assert (m["src"].iloc[3], m["dst"].iloc[3]) == (0, 1)
    s = analysis.stragglers(run).set_index("rank")
    assert s.loc[1, ["times_last", "wait_imposed_ns", "wait_total_ns"]].tolist() == [2, 7 * MS, 0]
    assert s.loc[0, ["times_last", "wait_imposed_ns", "wait_total_ns"]].tolist() == [0, 0, 7 * MS]
    assert s.loc[0, "time_basis"] == "mixed"
    o = analysis.overlap(run).set_index("op")
    assert o.loc["send", ["total_ns", "window_ns", "exposed_ns", "hidden_ns"]].tolist() == \
        [6 * MS, 4_900_000, 1 * MS, 5 * MS]
    assert o.loc["recv", ["total_ns", "window_ns", "exposed_ns", "hidden_ns"]].tolist() == \
        [5 * MS, 900_000, 4 * MS, 1 * MS]
    assert set(o["time_basis"]) == {"host"}


def test_trace_object_is_the_top_level_one_and_answers_repeatedly(run):
    assert commscope.Trace is analysis.Trace
    t = commscope.Trace(run)
    try:
        assert len(t.files) == 2 and sorted(m["rank"] for m in t.metadata) == [0, 1]
        first = t.stragglers()
        t.files = []  # the dataset is not globbed or re-validated per question
        _same(first, t.stragglers())
        assert len(t.match()) == 4
        assert t.sql("SELECT count(*) AS n FROM events")["n"].tolist() == [8]
        ev = t.events(columns=["rank", "t_start_ns"], filters=[("op", "==", "recv")])
        assert ev.to_dict("list") == {"rank": [1], "t_start_ns": [21 * MS]}
    finally:
        t.close()


def test_schema_1_0_sample_traces_load_and_analyse():
    path = os.path.join(ROOT, "traces", "sample_tp2")
    df = analysis.load_events(path)
    assert len(df) == 20
    assert set(df["source"]) == {"hooks"}
    for c in ("gpu_start_ns", "gpu_end_ns", "gpu_hidden_ns", "cuda_graph"):
        assert df[c].isna().all(), c
    m = analysis.match_collectives(path)
    assert len(m) == 10 and (m["ranks_seen"] == 2).all() and set(m["time_basis"]) == {"host"}
    _same(m, analysis.match_collectives(df))
    s = analysis.summarize(path)
    assert s["calls"].sum() == 20 and set(s["time_basis"]) == {"host"}
    _same(s, analysis.summarize(df))
    llama = os.path.join(ROOT, "traces", "llama_tp2_pp2")
    _same(analysis.stragglers(llama), analysis.stragglers(analysis.load_events(llama)))


def test_mixed_schema_versions_in_one_run(tmp_path):
    write_rank(tmp_path / "run", 0, [row(pg_seq=0, op="all_reduce", bytes=8, t_start_ns=0,
                                         t_end_ns=10_000)], version="1.0")
    write_rank(tmp_path / "run", 1, [row(pg_seq=0, op="all_reduce", bytes=8, t_start_ns=0,
                                         t_end_ns=10_000, gpu_start_ns=1_000,
                                         gpu_end_ns=4_000, source="kineto")])
    df = analysis.load_events(tmp_path / "run")
    assert df["source"].tolist() == ["hooks", "kineto"]
    assert df["gpu_end_ns"].isna().tolist() == [True, False]
    b = analysis.bandwidth(df)
    assert b["duration_ns"].tolist() == [10_000, 3_000]
    assert b["time_basis"].tolist() == ["host", "device"]
    # One member lacks device times: the instance stays on host time.
    m = analysis.match_collectives(tmp_path / "run")
    assert m[["time_basis", "transfer_ns"]].values.tolist() == [["host", 10_000]]


def test_runs_under_one_folder_are_kept_apart(tmp_path):
    # Two runs with the same group and pg_seq: instances never mix across runs.
    for run_id, late_ms in (("a", 1), ("b", 4)):
        for rank in (0, 1):
            write_rank(tmp_path / run_id, rank, [
                row(pg_seq=0, op="all_reduce", bytes=8, t_start_ns=rank * late_ms * MS,
                    t_end_ns=10 * MS)], run_id=run_id, offset_ns=rank * 2 * MS)
    m = analysis.match_collectives(tmp_path)
    assert m[["run_id", "start_skew_ns", "ranks_seen"]].values.tolist() == \
        [["a", 1 * MS, 2], ["b", 4 * MS, 2]]
    s = analysis.stragglers(tmp_path).set_index("rank")
    assert s.loc[1, ["collectives", "times_last", "wait_imposed_ns"]].tolist() == [2, 2, 5 * MS]
    _same(m, analysis.match_collectives(analysis.load_events(tmp_path)))
