"""analysis.load_events: clear errors for bad input, projection, filters, clock offsets."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from commscope import analysis
from commscope.profiler._groups import GroupInfo
from commscope.profiler._phases import PhaseFrame
from commscope.profiler._recorder import API_TABLE, _register_api
from commscope.profiler._writer import Identity, rows_to_table, write_part


def _row(api_idx, seq, t0, count, phase=None):
    import torch

    return (api_idx, t0, t0 + 1000, t0 + 900, torch.float32, count, count, count, "0", seq, seq,
            phase, 1, None)


def _write_rank(run_dir, rank, offset_ns, n=3, t0=1_000_000):
    idx = _register_api("all_reduce", "all_reduce")
    assert API_TABLE[idx][1] == "all_reduce"
    ident = Identity("run", rank, 2, "host", 100 + rank, "0")
    rows = [_row(idx, i, t0 + offset_ns + 10_000 * i, 4 * (i + 1), PhaseFrame("decode", "decode", i))
            for i in range(n)]
    table = rows_to_table(rows, ident, {"0": GroupInfo("0", 2, (0, 1), "gloo")})
    d = run_dir / f"rank_{rank:05d}"
    write_part(table, str(d), "part-1-00000.parquet")
    (d / "metadata.json").write_text(json.dumps({"run_id": "run", "rank": rank,
                                                 "clock_offset_ns": offset_ns}))


def test_clock_offsets_are_subtracted(tmp_path):
    _write_rank(tmp_path / "run", 0, 0)
    _write_rank(tmp_path / "run", 1, 5_000_000)  # rank 1's clock runs 5 ms ahead
    df = analysis.load_events(tmp_path / "run")
    a = df[df["rank"] == 0]["t_start_ns"].tolist()
    b = df[df["rank"] == 1]["t_start_ns"].tolist()
    assert a == b == [1_000_000, 1_010_000, 1_020_000]
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
    assert sorted(m["clock_offset_ns"] for m in meta) == [0, 7]
    assert isinstance(pd.DataFrame(meta), pd.DataFrame)


def test_committed_sample_trace_loads():
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    df = analysis.load_events(os.path.join(root, "traces", "sample_tp2"))
    assert len(df) == 20 and set(df["op"]) == {"all_reduce"} and set(df["pg_dim"]) == {"tp"}
    assert df.groupby("phase").size().to_dict() == {"decode": 16, "prefill": 4}
    assert set(df[df["phase"] == "prefill"]["bytes"]) == {16 * 256 * 4}
