"""Analytics on real gloo runs: an injected straggler, overlapped p2p, a hang."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from commscope import analysis
from tests import workers
from tests.analysis_fixtures import shift_rank
from tests.distributed import run_ranks

MS = 1_000_000


@pytest.fixture(scope="module")
def overlap_run(tmp_path_factory):
    """One 2-rank run of overlap_worker, shared by the tests that read it (never modified)."""
    out = tmp_path_factory.mktemp("overlap")
    run_ranks(workers.overlap_worker, 2, str(out))
    return out / "overlap"


@pytest.fixture(scope="module")
def mismatch_run(tmp_path_factory):
    """One 2-rank run of mismatch_worker (rank 1 skips the last all_reduce; rank 0 times out)."""
    out = tmp_path_factory.mktemp("mismatch")
    run_ranks(workers.mismatch_worker, 2, str(out), timeout_s=3, expect_failure=True)
    return out / "mismatch"


def test_straggler_is_named_and_skew_is_on_exactly_those_instances(tmp_path):
    run_ranks(workers.straggler_worker, 2, str(tmp_path))
    ev = analysis.load_events(tmp_path / "straggler")
    m = analysis.match_collectives(ev)
    assert m["pg_seq"].tolist() == list(range(9)) and (m["ranks_seen"] == 2).all()
    late = m[m["pg_seq"] % 3 == 0]
    on_time = m[m["pg_seq"] % 3 != 0]
    # The injected 100 ms shows up as start skew on every third instance, with rank 1 last...
    assert (late["start_skew_ns"] >= 40 * MS).all() and (late["start_skew_ns"] < 500 * MS).all()
    assert (late["last_rank"] == 1).all()
    # ...and not on the others; the data movement itself stays short everywhere.
    assert (on_time["start_skew_ns"] < 40 * MS).all()
    assert (m["transfer_ns"] < 40 * MS).all()
    s = analysis.stragglers(ev)
    assert s.iloc[0]["rank"] == 1 and s.iloc[0]["times_last"] >= 3
    assert s.iloc[0]["wait_imposed_ns"] >= 3 * 40 * MS


def test_async_p2p_overlap_is_measured(overlap_run):
    ev = analysis.load_events(overlap_run)
    o = analysis.overlap(ev).set_index("op")
    assert set(o.index) == {"send", "recv"}
    for op in ("send", "recv"):
        assert o.loc[op, "count"] == 1 and o.loc[op, "waited"] == 1
        # The ~30 ms of computation sits between issue and wait.
        assert o.loc[op, "window_ns"] >= 25 * MS
        assert 0 <= o.loc[op, "hidden_fraction"] <= 1
    m = analysis.match_collectives(ev)
    assert len(m) == 1 and (m.iloc[0]["src"], m.iloc[0]["dst"]) == (0, 1)


def test_hang_leaves_complete_trace_and_mismatch_names_missing_rank(mismatch_run):
    ev = analysis.load_events(mismatch_run)
    assert ev.groupby("rank").size().to_dict() == {0: 3, 1: 2}
    r0 = ev[ev["rank"] == 0].sort_values("seq")
    assert r0["error"].notna().tolist() == [False, False, True]
    mm = analysis.find_mismatches(ev)
    assert len(mm) == 1
    row = mm.iloc[0]
    assert (row["pg_seq"], row["kind"], row["ranks"]) == (2, "missing", [1])
    assert row["expected"] == "all_reduce 64 B float32"
    pd.testing.assert_frame_equal(mm, analysis.find_mismatches(str(mismatch_run)))


def test_frame_and_path_agree_with_a_clock_offset(tmp_path):
    """A real trace whose rank 1 clock is 500 ms ahead: the DataFrame from load_events and the
    trace path give identical results for every analysis."""
    run_ranks(workers.all_ops_worker, 2, str(tmp_path))
    path = tmp_path / "all_ops"
    shift_rank(path, 1, 500 * MS)
    ev = analysis.load_events(path)
    parts = sorted((path / "rank_00001").glob("*.parquet"))
    recorded = pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("seq") \
        .column("t_start_ns").to_pylist()
    offset = json.loads((path / "rank_00001" / "metadata.json").read_text())["clock_offset_ns"]
    assert offset >= 500 * MS  # the shift made above plus the offset estimated when tracing
    assert ev[ev["rank"] == 1]["t_start_ns"].tolist() == [t - offset for t in recorded]
    m = analysis.match_collectives(ev)
    assert len(m) == 27 and (m["start_skew_ns"] < 250 * MS).all()
    for fn in (analysis.match_collectives, analysis.stragglers, analysis.summarize,
               analysis.overlap, analysis.collective_waits, analysis.find_mismatches):
        pd.testing.assert_frame_equal(fn(ev), fn(str(path)))


def test_overlap_and_mismatches_frame_equals_path_with_offset(overlap_run, mismatch_run,
                                                             tmp_path):
    path = tmp_path / "overlap"
    shutil.copytree(overlap_run, path)  # the shared run stays as recorded
    shift_rank(path, 1, 500 * MS)
    ev = analysis.load_events(path)
    a = analysis.overlap(ev)
    b = analysis.overlap(str(path))
    for c in ("count", "waited", "total_ns", "window_ns", "exposed_ns", "hidden_ns"):
        assert a[c].tolist() == b[c].tolist(), c
    ma, mb = analysis.match_collectives(ev), analysis.match_collectives(str(path))
    pd.testing.assert_frame_equal(ma, mb)
    # The pair's skew is the true one, far under the 500 ms a missed shift would add.
    assert len(ma) == 1 and ma.iloc[0]["start_skew_ns"] < 250 * MS
    mm = analysis.find_mismatches(str(mismatch_run))
    row = mm.iloc[0]
    assert (row["pg_seq"], row["kind"], row["ranks"]) == (2, "missing", [1])
