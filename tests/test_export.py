"""Chrome trace-event export (Perfetto): structure, args, and export -> import round trips on a
real gloo run (hook rows) and on an imported GPU trace (device-time rows)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from commscope import analysis, dashboards, profiler
from commscope.cli import main
from tests import workers
from tests.distributed import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLRM = os.path.join(ROOT, "..", "shared", "data", "kineto",
                    "facebookresearch__param__dlrm_kineto.tar.gz")


def _same_calls(a_run: str, b_run: str) -> None:
    a, b = analysis.load_events(a_run), analysis.load_events(b_run)
    assert len(a) == len(b) > 0
    cols = [c for c in a.columns if c != "run_id"]
    for c in cols:
        left, right = a[c].tolist(), b[c].tolist()
        if c == "pg_ranks":
            left = [None if x is None else list(x) for x in left]
            right = [None if x is None else list(x) for x in right]
        assert left == right or a[c].equals(b[c]), c
    ma = {m["rank"]: m for m in analysis.load_metadata(a_run)}
    mb = {m["rank"]: m for m in analysis.load_metadata(b_run)}
    assert {r: m["clock_offset_ns"] for r, m in ma.items()} == \
        {r: m["clock_offset_ns"] for r, m in mb.items()}


def test_gloo_hooks_round_trip(tmp_path):
    run_ranks(workers.straggler_worker, 2, str(tmp_path / "t"), timeout_s=180)
    run = str(tmp_path / "t" / "straggler")
    out = tmp_path / "trace.json"
    assert main(["export", run, "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    procs = [e for e in doc["traceEvents"] if e.get("name") == "process_name"]
    assert sorted(e["args"]["name"] for e in procs) == ["rank 0", "rank 1"]
    slices = [e for e in doc["traceEvents"] if e.get("cat") == "comm"]
    ev = analysis.load_events(run)
    assert len(slices) == len(ev) == 18
    assert not [e for e in doc["traceEvents"] if e.get("cat") == "comm_gpu"]   # CPU tensors
    assert {e["args"]["op"] for e in slices} == {"all_reduce"}
    assert {e["args"]["bytes"] for e in slices} == {4096}
    assert {e["args"]["time_basis"] for e in slices} == {"host"}
    back = profiler.import_trace(out, tmp_path / "back", run_name="straggler")
    _same_calls(run, back)
    assert {m["source"] for m in analysis.load_metadata(back)} == {"hooks"}


@pytest.mark.skipif(not os.path.exists(DLRM), reason="../shared/data absent")
def test_kineto_device_slices_and_round_trip(tmp_path):
    run = profiler.import_trace(DLRM, tmp_path / "imp")
    out = dashboards.export_perfetto(run, tmp_path / "dlrm.json")
    with open(out) as fh:
        doc = json.load(fh)
    ev = analysis.bandwidth(analysis.load_events(run))
    gpu = [e for e in doc["traceEvents"] if e.get("cat") == "comm_gpu"]
    host = [e for e in doc["traceEvents"] if e.get("cat") == "comm"]
    assert len(gpu) == len(host) == 64
    procs = [e for e in doc["traceEvents"] if e.get("name") == "process_name"]
    assert len(procs) == 8
    # one host track and one device track per (rank, group): group '0' only
    tracks = {(e["pid"], e["args"]["name"]) for e in doc["traceEvents"]
              if e.get("name") == "thread_name"}
    assert len(tracks) == 16
    r0 = ev[ev["rank"] == 0].sort_values("seq")
    g0 = sorted((e for e in gpu if e["pid"] == 0), key=lambda e: e["ts"])
    assert [round(e["dur"] * 1000) for e in g0] == r0["gpu_duration_ns"].tolist()
    assert np.allclose([e["args"]["busbw_GBps"] for e in g0], r0["busbw_GBps"].to_numpy())
    assert [e["args"]["bytes"] for e in g0] == r0["bytes"].tolist()
    back = profiler.import_trace(out, tmp_path / "back", run_name="x")
    _same_calls(run, back)
    assert {m["source"] for m in analysis.load_metadata(back)} == {"kineto"}
    assert analysis.load_metadata(back)[0]["gpu_busy"] == analysis.load_metadata(run)[0][
        "gpu_busy"]
