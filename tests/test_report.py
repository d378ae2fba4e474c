"""HTML reports: built from real gloo traces, opened in headless Chromium, escaped, bounded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from commscope import analysis, dashboards
from commscope.profiler._groups import GroupInfo
from commscope.profiler._phases import PhaseFrame
from commscope.profiler._rows import register_api
from commscope.profiler._writer import Identity, rows_to_table, write_part
from tests import workers
from tests.distributed import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path, html, *extra):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chrome'}",
                           "--virtual-time-budget=20000", *extra, f"file://{html}"],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def gloo_traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    run_ranks(workers.straggler_worker, 2, str(d))
    run_ranks(workers.overlap_worker, 2, str(d))
    return d


def test_report_numbers_match_the_api(gloo_traces, tmp_path):
    out = dashboards.write_report([gloo_traces / "straggler", gloo_traces / "overlap"],
                                  tmp_path / "r.html")
    with open(out, encoding="utf-8") as fh:
        text = fh.read()
    assert text.count("<script>") >= 2 and "https://" not in text.split("</head>")[1]
    ev = analysis.load_events(gloo_traces / "straggler")
    s = analysis.summarize(ev).iloc[0]
    # The summary table shows the API's numbers (formatted with thousands separators).
    assert f"<td>{int(s['calls']):,}</td>" in text
    assert f"<td>{s['total_time_us']:,.0f}</td>" in text
    st = analysis.stragglers(ev).iloc[0]
    assert f"<td>{int(st['wait_imposed_ns']):,}</td>" in text
    assert "GB = 1e9 bytes" in text and "nccl-tests" in text
    assert os.path.getsize(out) < 10e6


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")
def test_report_renders_in_chromium_without_errors(gloo_traces, tmp_path):
    out = dashboards.write_report([gloo_traces / "straggler", gloo_traces / "overlap"],
                                  tmp_path / "r.html",
                                  nccl_logs=os.path.join(ROOT, "..", "shared", "data", "nccl")
                                  if os.path.isdir(os.path.join(ROOT, "..", "shared")) else None)
    r = _chromium(tmp_path, out, "--dump-dom")
    m = re.search(r'id="commscope-selfcheck"[^>]*>([^<]*)<', r.stdout)
    assert m, r.stderr[-2000:]
    check = json.loads(m.group(1))
    assert check["errors"] == []
    assert check["plots"] >= 8 and check["rendered"] == check["plots"]
    assert check["scripts"] == 3
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "report.png")
    _chromium(tmp_path, out, "--window-size=1400,2400", f"--screenshot={shot}")
    assert os.path.getsize(shot) > 10_000


def _synthetic_trace(path, n_events, phase_name="decode", ranks=4):
    api = register_api("all_reduce", "all_reduce")
    import torch

    frame = PhaseFrame(phase_name, phase_name, 0)
    per = n_events // ranks
    for r in range(ranks):
        t = 10**18 + np.arange(per) * 20_000 + r * 100
        rows = [(api, int(t[i]), int(t[i]) + 5000 + (i % 7) * 100, int(t[i]) + 5000,
                 torch.float32, 1024 << (i % 6), 1024 << (i % 6), 1024 << (i % 6), "0", i, i,
                 frame, 1, None) for i in range(per)]
        table = rows_to_table(rows, Identity("big", r, ranks, "h", 1, "0"),
                              {"0": GroupInfo("0", ranks, tuple(range(ranks)), "gloo")})
        write_part(table, str(path / f"rank_{r:05d}"), "part-1-00000.parquet")


def test_report_escapes_trace_strings(tmp_path):
    evil = "</script><script>window.__pwned=1</script><b>x</b>"
    _synthetic_trace(tmp_path / "evil", 400, phase_name=evil)
    out = dashboards.write_report(tmp_path / "evil", tmp_path / "evil.html", title=evil)
    with open(out, encoding="utf-8") as fh:
        text = fh.read()
    assert evil not in text
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1" in text  # tables and title
    assert "pwned=1\\u003c\\u002fscript" in text  # inside the figures' JSON
    if CHROMIUM:
        r = _chromium(tmp_path, out, "--dump-dom")
        check = json.loads(re.search(r'id="commscope-selfcheck"[^>]*>([^<]*)<', r.stdout)
                           .group(1))
        assert check["errors"] == [] and check["rendered"] == check["plots"]
        assert check["scripts"] == 3  # only the report's own scripts: nothing was injected


def test_report_size_is_bounded_for_a_large_trace(tmp_path):
    _synthetic_trace(tmp_path / "big", 400_000)
    out = dashboards.write_report(tmp_path / "big", tmp_path / "big.html")
    assert os.path.getsize(out) < 10e6
    summ = analysis.summarize(analysis.load_events(tmp_path / "big"))
    assert int(summ["calls"].sum()) == 400_000


def test_report_cli(tmp_path):
    r = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "commscope"),
                        "report", os.path.join(ROOT, "traces", "sample_tp2"), "-o",
                        str(tmp_path / "s.html")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "s.html") and "wrote" in r.stdout


CALIBRATION = os.path.join(ROOT, "..", "shared", "data", "calibration",
                           "ai-dynamo__aiconfigurator__h100_sxm-nccl-2.29.2-nccl_perf.parquet")


@pytest.mark.skipif(not os.path.exists(CALIBRATION), reason="../shared/data absent")
def test_report_with_a_calibration_of_several_libraries_uses_the_traces_backend(tmp_path):
    """A calibration holding gloo and nccl curves: the gloo trace's latency plot draws the gloo
    model (never an nccl curve, never a crash on the mixed model)."""
    sample = os.path.join(ROOT, "traces", "sample_tp2")
    meas = analysis.load_measurements([sample, CALIBRATION])
    model = analysis.CostModel.fit(meas)
    assert model.libraries == ["gloo", "nccl"]
    out = dashboards.write_report(sample, tmp_path / "r.html", calibration=model)
    with open(out) as fh:
        page = fh.read()
    gloo_ops = sorted({k[0] for k in model.fits if k[3] == "gloo"})
    assert gloo_ops and all(f"{op} n=2 model" in page for op in gloo_ops)
