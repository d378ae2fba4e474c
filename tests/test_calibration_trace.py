"""Calibration from traces: transfer time, device time where rows have it, provenance, bench."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from commscope import analysis, profiler
from commscope.analysis import CostModel
from commscope.profiler._bench import apply_device_times, per_call_ns

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "calibration")
SIZES = [1024, 2048, 4096]
ITERS = 3


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return profiler.sweep(str(out), world_size=2, ops=("all_reduce", "send"), min_bytes=1024,
                          max_bytes=4096, iters=ITERS, warmup=2, run_name="cal")


def test_per_call_ns_is_block_time_over_iterations():
    assert per_call_ns(1.5, 3) == 500_000          # 1.5 ms over 3 calls
    assert per_call_ns(0.0123, 20) == 615
    with pytest.raises(ValueError, match="iters > 0"):
        per_call_ns(1.0, 0)


def test_sweep_measurements_host_then_device(sweep_run, tmp_path):
    m = analysis.load_measurements(sweep_run)
    # Timed iterations only (warm-up excluded): ITERS instances per op and size.
    assert sorted(m["collective"].unique()) == ["all_reduce", "send"]
    for op in ("all_reduce", "send"):
        g = m[m["collective"] == op].sort_values("bytes")
        assert g["bytes"].tolist() == SIZES and (g["calls"] == ITERS).all()
    assert set(m["source"]) == {"sweep"} and set(m["time_basis"]) == {"host"}
    assert set(m["run"]) == {"cal"} and set(m["library"]) == {"gloo"}
    assert set(m["phase"]) == {"bench"} and (m["nranks"] == 2).all() and (m["time_us"] > 0).all()

    # Hand-made device times (what `bench --backend nccl` writes): per rank, per (op, size),
    # on a copy (other tests read the host-timed sweep).
    sweep_run = shutil.copytree(sweep_run, tmp_path / "cal")
    ranks = sorted(glob.glob(os.path.join(sweep_run, "rank_*")))
    assert len(ranks) == 2
    set_rows = 0
    for r, d in enumerate(ranks):
        # Linear in bytes: 5 us + 5 us per KiB, + 1 us on rank 1, + 0.5 us for send.
        times = {(op, i): 5_000 + 5_000 * 2**i + 1_000 * r + (500 if op == "send" else 0)
                 for op in ("all_reduce", "send") for i in range(len(SIZES))}
        set_rows += apply_device_times(d, times)
        meta = pq.read_schema(glob.glob(os.path.join(d, "part-*.parquet"))[0]).metadata
        assert b"commscope.schema_version" in meta
    # 2 ops x 3 sizes x ITERS calls on each of the 2 ranks (send on one, recv on the other).
    assert set_rows == 2 * 3 * ITERS * 2
    dev = analysis.load_measurements(sweep_run)
    assert set(dev["time_basis"]) == {"device"}
    for op, extra in (("all_reduce", 0), ("send", 500)):
        g = dev[dev["collective"] == op].sort_values("bytes")
        # The smaller of the two ranks' device times (rank 0's): the last to arrive waited least.
        assert g["time_us"].tolist() == [(5_000 + 5_000 * 2**i + extra) / 1e3 for i in range(3)]
    # A cost model from it says where each curve came from.
    cm = CostModel.fit(dev)
    c = cm.curves().set_index("op")
    assert c.loc["all_reduce", "sources"] == "sweep" and c.loc["send", "time_basis"] == "device"
    assert c.loc["all_reduce", "runs"] == 1
    f = cm.fits[("all_reduce", 2, 1, "gloo")]
    assert f.alpha == pytest.approx([5.0]) and f.beta == pytest.approx([5.0 / 1024])
    assert cm.predict("all_reduce", 2, 3072) == pytest.approx(20.0)


def test_folder_with_a_sweep_and_an_inference_run(sweep_run, tmp_path):
    sample = os.path.join(os.path.dirname(__file__), "..", "traces", "sample_tp2")
    shutil.copytree(sweep_run, tmp_path / "cal")
    shutil.copytree(sample, tmp_path / "sample_tp2")
    m = analysis.load_measurements(tmp_path)
    by_run = m.groupby("run")["source"].unique()
    assert list(by_run.loc["cal"]) == ["sweep"] and list(by_run.loc["sample_tp2"]) == ["trace"]
    # The inference run keeps its phases (the sweep filter applies to the sweep only).
    assert set(m.loc[m["run"] == "sample_tp2", "phase"]) == {"prefill", "decode"}
    assert m.loc[m["run"] == "cal", "calls"].tolist() == [ITERS] * 6


def _ev(rank, seq, t0, t1, g0=None, g1=None, op="all_reduce", run="r1"):
    return dict(run_id=run, rank=rank, host="h", pg_name="0", pg_seq=seq, pg_size=2, op=op,
                bytes=4096, dtype="float32", backend="nccl", peer=None, t_start_ns=t0,
                t_end_ns=t1, gpu_start_ns=g0, gpu_end_ns=g1,
                gpu_duration_ns=None if g0 is None else g1 - g0, phase="decode", step=0)


def test_trace_measurements_use_device_transfer_and_keep_runs_apart():
    rows = [
        # Device times on every member: transfer = earliest device end - latest device start.
        _ev(0, 0, 0, 1_000, 100, 50_100), _ev(1, 0, 20_000, 21_000, 30_100, 60_100),
        _ev(0, 1, 0, 1_000, 100, 40_100), _ev(1, 1, 5_000, 6_000, 10_100, 50_100),
        # Another run, host times only: transfer = earliest end - latest start.
        _ev(0, 0, 0, 90_000, run="r2"), _ev(1, 0, 30_000, 95_000, run="r2"),
    ]
    ev = pd.DataFrame(rows).astype({"peer": "Int64", "gpu_start_ns": "Int64",
                                    "gpu_end_ns": "Int64", "gpu_duration_ns": "Int64"})
    m = analysis.trace_measurements(ev).set_index("run")
    assert m.loc["r1", "time_basis"] == "device" and m.loc["r2", "time_basis"] == "host"
    # r1: instance 0: 50_100 - 30_100 = 20 us; instance 1: 40_100 - 10_100 = 30 us; median 25.
    assert m.loc["r1", "time_us"] == pytest.approx(25.0) and m.loc["r1", "calls"] == 2
    assert m.loc["r2", "time_us"] == pytest.approx(60.0) and m.loc["r2", "calls"] == 1
    assert set(m["source"]) == {"trace"} and set(m["library"]) == {"nccl"}


@pytest.mark.skipif(not glob.glob(os.path.join(SHARED, "*2.29.2*.parquet")),
                    reason="../shared/data/calibration absent")
def test_calibrate_cli_shows_provenance_and_refuses_to_mix(sweep_run, tmp_path):
    table = glob.glob(os.path.join(SHARED, "*2.29.2*.parquet"))[0]
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, "-m", "commscope", "calibrate", sweep_run, table,
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "sweep" in r.stdout and "aiconfigurator" in r.stdout and "libraries gloo, nccl" \
        in r.stdout
    cm = CostModel.load(str(out))
    assert cm.libraries == ["gloo", "nccl"]
    with pytest.raises(ValueError, match="several libraries"):
        cm.predict("all_reduce", 2, 2048)
    prov = cm.curve_provenance[("all_reduce", 2, 1, "gloo")]
    assert prov["sources"] == ["sweep"] and prov["runs"] == ["cal"]
    assert prov["time_basis"] == ["host"]
    assert cm.curve_provenance[("all_reduce", 8, 1, "nccl")]["sources"] == ["aiconfigurator"]
