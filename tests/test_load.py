"""analysis.load_events: clear errors for bad input, projection, filters, clock offsets."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from commscope import analysis
from tests.analysis_fixtures import row, write_rank


def _write_rank(run_dir, rank, offset_ns, n=3, t0=1_000_000):
    rows = [row(seq=i, pg_seq=i, op="all_reduce", bytes=16 * (i + 1), step=i,
                t_start_ns=t0 + 10_000 * i, t_end_ns=t0 + 10_000 * i + 1000,
                t_return_ns=t0 + 10_000 * i + 900) for i in range(n)]
    write_rank(run_dir, rank, rows, offset_ns=offset_ns)


def test_clock_offsets_are_subtracted(tmp_path):
    _write_rank(tmp_path / "run", 0, 0)
    _write_rank(tmp_path / "run", 1, 5_000_000)  # rank 1's clock runs 5 ms ahead
    df = analysis.load_events(tmp_path / "run")
    for c, extra in (("t_start_ns", 0), ("t_return_ns", 900), ("t_end_ns", 1000)):
        a = df[df["rank"] == 0][c].tolist()
        b = df[df["rank"] == 1][c].tolist()
        assert a == b == [1_000_000 + extra, 1_010_000 + extra, 1_020_000 + extra], c
    assert df["bytes"].tolist() == [16, 32, 48, 16, 32, 48]
    assert df["step"].tolist() == [0, 1, 2, 0, 1, 2]


def test_projection_and_filters(tmp_path):
    _write_rank(tmp_path / "run", 0, 0)
    _write_rank(tmp_path / "run", 1, 0)
    df = analysis.load_events(tmp_path / "run", columns=["rank", "bytes"],
                              filters=[("bytes", ">=", 32)])
    assert list(df.columns) == ["rank", "bytes"]
    assert df["bytes"].tolist() == [32, 48, 32, 48]
    import pyarrow.dataset as ds

    df2 = analysis.load_events(tmp_path / "run", filters=ds.field("rank") == 1)
    assert set(df2["rank"]) == {1} and len(df2) == 3
    with pytest.raises(KeyError, match="unknown trace columns"):
        analysis.load_events(tmp_path / "run", columns=["nope"])


def test_all_runs_under_a_folder_with_run_id(tmp_path):
    _write_rank(tmp_path / "a", 0, 0)
    _write_rank(tmp_path / "b", 0, 0)
    df = analysis.load_events(tmp_path)
    assert len(df) == 6


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(analysis.TraceFormatError, match="no commscope trace files"):
        analysis.load_events(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analysis.load_events(tmp_path / "missing")


def test_corrupt_file_is_named(tmp_path):
    _write_rank(tmp_path / "run", 0, 0)
    bad = tmp_path / "run" / "rank_00000" / "part-1-00001.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(analysis.TraceFormatError) as err:
        analysis.load_events(tmp_path / "run")
    assert str(bad) in str(err.value) and "unreadable" in str(err.value)


def test_foreign_parquet_is_named(tmp_path):
    _write_rank(tmp_path / "run", 0, 0)
    foreign = tmp_path / "run" / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(analysis.TraceFormatError) as err:
        analysis.load_events(tmp_path / "run")
    assert str(foreign) in str(err.value) and "not a commscope trace" in str(err.value)


def test_future_major_schema_is_refused(tmp_path):
    _write_rank(tmp_path / "run", 0, 0)
    f = tmp_path / "run" / "rank_00000" / "part-1-00000.parquet"
    t = pq.read_table(f)
    t = t.replace_schema_metadata({b"commscope.schema_version": b"9.0"})
    pq.write_table(t, f)
    with pytest.raises(analysis.TraceFormatError, match="schema 9.0"):
        analysis.load_events(tmp_path / "run")


def test_metadata_loader(tmp_path):
    _write_rank(tmp_path / "run", 0, 0)
    _write_rank(tmp_path / "run", 1, 7)
    meta = analysis.load_metadata(tmp_path / "run")
    assert sorted((m["rank"], m["clock_offset_ns"]) for m in meta) == [(0, 0), (1, 7)]
    assert {m["run_id"] for m in meta} == {"run"}


def test_committed_sample_trace_loads():
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    df = analysis.load_events(os.path.join(root, "traces", "sample_tp2"))
    assert len(df) == 20 and set(df["op"]) == {"all_reduce"} and set(df["pg_dim"]) == {"tp"}
    assert df.groupby("phase").size().to_dict() == {"decode": 16, "prefill": 4}
    assert set(df[df["phase"] == "prefill"]["bytes"]) == {16 * 256 * 4}
