"""Flight Recorder import on the real 16-rank Megatron-Core hang dumps (ground truth in each
case's fault_injection.log), plus JSON dumps and bad input."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest

from commscope import analysis, profiler
from commscope.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FR = os.path.join(ROOT, "..", "shared", "data", "flight_recorder")
need_data = pytest.mark.skipif(not os.path.isdir(FR), reason="../shared/data absent")


def _ground_truth(case: str) -> list[int]:
    with open(os.path.join(FR, case, "fault_injection.log")) as fh:
        m = re.search(r"Fault ranks: \[([\d, ]+)\]", fh.read())
    assert m is not None
    return sorted(int(x) for x in m.group(1).split(","))


@need_data
@pytest.mark.parametrize("case", ["gpu_error_1st", "lock_gil_1st"])
def test_every_faulted_rank_is_named(case, tmp_path):
    run = profiler.import_trace(os.path.join(FR, case), tmp_path)
    metas = analysis.load_metadata(run)
    assert sorted(m["rank"] for m in metas) == list(range(16))   # ranks from pg_config
    assert all(m["import"]["skipped"] for m in metas)   # the .log/.txt files are set aside
    hang = analysis.attribute_hang(run)
    assert hang.attrs["faulted_ranks"] == _ground_truth(case)


@need_data
def test_gpu_error_rank_14_is_seen_only_through_completions(tmp_path):
    """NVIDIA's tool names only rank 12: rank 14 enqueued every collective its peers did, but
    its last completed one lags theirs (pg_status)."""
    run = profiler.import_trace(os.path.join(FR, "gpu_error_1st"), tmp_path)
    hang = analysis.attribute_hang(run)
    ep = hang[hang["pg_name"] == "74"].set_index("kind")
    assert ep.loc["not_issued", "ranks"] == [12] and ep.loc["not_issued", "pg_seq"] == 20537
    assert ep.loc["not_issued", "expected"] == "nccl:all_to_all 41236480 B bfloat16"
    assert ep.loc["not_completed", "ranks"] == [14]
    assert ep.loc["not_completed", "pg_seq"] == 20530
    assert "20529 while ranks [13, 15] completed up to 20536" in ep.loc["not_completed", "detail"]
    assert set(hang["kind"]) == {"not_issued", "not_completed"}


@need_data
def test_lock_gil_empty_dumps_are_explained(tmp_path):
    run = profiler.import_trace(os.path.join(FR, "lock_gil_1st"), tmp_path)
    hang = analysis.attribute_hang(run)
    assert hang.attrs["empty_dumps"] == [9, 14]
    ep = hang[hang["pg_name"] == "72"].iloc[0]
    assert ep["kind"] == "not_issued" and ep["ranks"] == [9, 14]
    assert "hold no entry of this group at all" in ep["detail"]
    notes = {m["rank"]: m["import_notes"] for m in analysis.load_metadata(run)}
    assert "the dump holds no entries" in notes[9][0]
    # find_mismatches agrees here (the others' rings still hold the collective)
    mm = analysis.find_mismatches(run)
    assert mm.set_index("pg_name").loc["72", "ranks"] == [9, 14]


@need_data
def test_rows_per_entry(tmp_path):
    run = profiler.import_trace(os.path.join(FR, "gpu_error_1st"), tmp_path)
    ev = analysis.load_events(run)
    with open(os.path.join(FR, "gpu_error_1st", "_dump_12"), "rb") as fh:
        d = pickle.load(fh)
    r12 = ev[ev["rank"] == 12]
    assert len(r12) == len(d["entries"]) == 27
    assert set(ev["source"]) == {"flight_recorder"}
    first = r12[r12["pg_seq"] == 42806].iloc[0]     # _all_gather_base [4096,1,5120] bf16, TP2
    assert first["op"] == "all_gather" and first["count"] == 4096 * 5120
    assert first["bytes"] == 4096 * 5120 * 2 * 2 and first["pg_ranks"].tolist() == [12, 13]
    assert first["pg_dim"] == "tp" and first["t_start_ns"] == 1758610505880883597
    send = r12[r12["api"] == "nccl:send 3->0"].iloc[0]   # group-local 0 of PP [0,4,8,12]
    assert send["op"] == "send" and send["peer"] == 0


def test_json_dump_and_bad_dumps(tmp_path, capsys):
    dump = {"version": "2.4", "pg_config": {"0": {"name": "0", "desc": "default_pg",
                                                  "ranks": "[0, 1]"},
                                            "5": {"name": "5", "desc": "x", "ranks": "[1]"}},
            "pg_status": {"0": {"last_enqueued_collective": "3",
                                "last_completed_collective": "2"}},
            "entries": [{"record_id": 0, "pg_id": 0, "process_group": ["0", "default_pg"],
                         "collective_seq_id": 3, "p2p_seq_id": 0, "op_id": 3,
                         "profiling_name": "nccl:all_reduce", "time_created_ns": 10,
                         "input_sizes": [[4, 8]], "output_sizes": [[4, 8]],
                         "input_dtypes": ["Float"], "output_dtypes": ["Float"],
                         "state": "scheduled", "time_discovered_started_ns": 0,
                         "time_discovered_completed_ns": 0, "retired": False,
                         "timeout_ms": 600000, "is_p2p": False, "duration_ms": 1.5}]}
    f = tmp_path / "trace_x.json"
    f.write_text(json.dumps(dump))
    ev = analysis.load_events(profiler.import_trace(f, tmp_path / "o"))
    assert ev["rank"].tolist() == [1] and ev["bytes"].tolist() == [128]
    assert ev["gpu_duration_ns"].tolist() == [1_500_000] and ev["pg_seq"].tolist() == [3]
    evil = tmp_path / "dump_evil"
    evil.write_bytes(pickle.dumps({"version": "2.9", "pg_config": {}, "x": os.getcwd},
                                  protocol=2))
    assert main(["import", str(evil), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "dump_evil" in err and "refusing to load" in err and "Traceback" not in err
