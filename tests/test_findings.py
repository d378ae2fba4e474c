"""The report's Findings: every number in a sentence equals what the analysis API returns for
the same real gloo traces, Findings come first, and each links to a section that exists."""

from __future__ import annotations

import re

import numpy as np
import pytest

from commscope import analysis, dashboards
from commscope.characterize import characterize_traces, heldout_summary
from commscope.dashboards._findings import findings
from commscope.models import llama

W = analysis.Workload(batch=2, prompt_len=8, output_len=3)
SPEC = llama.Config().spec(8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("findings")
    rows = []
    for name, tp, pp in (("tp2", 2, 1), ("pp2", 1, 2), ("tp2pp2", 2, 2)):
        (run_dir, _tokens, timings), = llama.run_prompts(
            tp, pp, [W.prompt_len], out=str(out), run_names=[name], batch=W.batch,
            output=W.output_len, warmup=False)
        rows.append(dict(name=name, tp=tp, pp=pp, prompt_len=W.prompt_len, batch=W.batch,
                         new_tokens=W.output_len, trace=run_dir, timings=timings,
                         tokens_match=True))
    table, _ = characterize_traces(rows)
    cal = analysis.CostModel.fit(analysis.load_measurements([r["trace"] for r in rows]))
    evs = [(r["name"], analysis.load_events(r["trace"]),
            analysis.ParallelConfig(tp=r["tp"], pp=r["pp"])) for r in rows]
    found = {f["key"]: f for f in findings(evs, characterization=table, calibration=cal,
                                           model=SPEC, workload=W)}
    return rows, table, cal, evs, found


def test_communication_share_and_dominant_operation(runs):
    _, _, _, evs, found = runs
    f = found["communication"]
    for name, ev, _ in evs:
        timed = analysis.bandwidth(ev)  # host rows here: duration = t_end - t_start
        assert set(timed["time_basis"]) == {"host"}
        dur = timed["duration_ns"].groupby(ev["rank"]).sum()
        end = ev["t_start_ns"] + timed["duration_ns"]
        span = end.groupby(ev["rank"]).max() - ev.groupby("rank")["t_start_ns"].min()
        share = float(100 * (dur / span).mean())
        assert f["values"][name]["comm_share_pct"] == pytest.approx(share)
        assert f"{share:.1f} % on {name}" in f["text"]
        s = analysis.summarize(ev).groupby(["phase", "op", "pg_dim"])["total_time_us"].sum()
        phase, op, dim = s.idxmax()
        assert (f["values"][name]["phase"], f["values"][name]["op"]) == (phase, op)
        assert f"{phase} {op} on dim {dim}: {100 * s.max() / s.sum():.1f} %" in f["text"]


def test_straggler_sentence_equals_stragglers(runs):
    _, _, _, evs, found = runs
    tables = [(n, analysis.stragglers(ev)) for n, ev, _ in evs]
    worst = max(((n, st.iloc[0]) for n, st in tables if len(st)),  # PP=2: no collectives
                key=lambda x: x[1]["wait_imposed_ns"])
    f = found["straggler"]
    assert f["values"]["run"] == worst[0] and f["values"]["rank"] == worst[1]["rank"]
    assert (f"rank {int(worst[1]['rank'])} of {worst[0]} arrived last at "
            f"{int(worst[1]['times_last'])} of its {int(worst[1]['collectives'])}") in f["text"]
    assert f"{worst[1]['wait_imposed_ns'] / 1e6:,.1f} ms" in f["text"]


def test_bandwidth_sentence_equals_match_collectives(runs):
    _, _, cal, evs, found = runs
    f = found["bandwidth"]["values"]
    name = f["run"]
    m = analysis.match_collectives(dict((n, e) for n, e, _ in evs)[name])
    sel = m[(m["op"] == f["op"]) & (m["bytes"] == f["bytes"])]
    assert f["busbw_GBps"] == pytest.approx(float(sel["busbw_GBps"].median()))
    assert f"{f['busbw_GBps']:.3f} GB/s" in found["bandwidth"]["text"]
    t_us = cal.predict(f["op"], f["nranks"], f["bytes"], warn=False)
    factor = float(analysis.bus_factor([f["op"]], [f["nranks"]])[0])
    assert f["calibrated_GBps"] == pytest.approx(f["bytes"] * factor / (t_us * 1e3))


def test_accuracy_and_advice_sentences_equal_the_api(runs):
    _, table, cal, _, found = runs
    h = heldout_summary(table)
    med = float(h["median_abs_error_pct"].median())
    assert found["accuracy"]["values"]["median_abs_error_pct"] == pytest.approx(med)
    assert f"median |error| {med:.1f} %" in found["accuracy"]["text"]
    for r in h.itertuples():
        assert f"{r.label} {r.decode_error_pct:+.1f} % decode" in found["accuracy"]["text"]
    a = analysis.advise(4, SPEC, W, cal)
    mine = float(a.loc[a["config"] == "TP=2 x PP=2", "decode_us_per_token"].iloc[0])
    alt = a[(a["config"] != "TP=2 x PP=2") & (a["dp"] == 1) & a["rank"].notna()].iloc[0]
    v = found["advice"]["values"]
    assert v["best"] == alt["config"] and v["measured_decode_us_per_token"] == mine
    assert v["best_decode_us_per_token"] == pytest.approx(alt["decode_us_per_token"])
    assert (f"from {mine:,.0f} µs (TP=2 x PP=2, measured) to "
            f"{alt['decode_us_per_token']:,.0f} µs") in found["advice"]["text"]


def test_exposed_communication_of_blocking_calls(runs):
    _, _, _, evs, found = runs
    for name, ev, _ in evs:
        v = found["exposed"]["values"][name]
        if v["how"] == "blocking calls":  # no async work: everything in calls is exposed
            total = (ev["t_end_ns"] - ev["t_start_ns"]).sum() / ev["rank"].nunique() / 1e6
            assert v["exposed_ms_per_rank"] == pytest.approx(total)
            assert v["exposed_pct"] == 100.0


def test_report_opens_with_findings_linking_to_evidence(runs, tmp_path):
    rows, table, cal, evs, found = runs
    out = dashboards.write_report([r["trace"] for r in rows], tmp_path / "r.html",
                                  calibration=cal, model=SPEC, workload=W,
                                  config=[c for _, _, c in evs], characterization=table)
    with open(out, encoding="utf-8") as fh:
        text = fh.read()
    ids = re.findall(r"<section id='([^']+)'>", text)
    assert ids[0] == "findings" and {"whatif", "characterization", "accuracy"} <= set(ids)
    links = re.findall(r"<li data-finding='(\w+)'>.*?<a href='#([^']+)'>evidence</a></li>",
                       text.split("</section>")[0])
    assert {k for k, _ in links} == set(found) and all(a in ids for _, a in links)
    # Time error in percent, as the CLI prints it; the what-if table marks the measured run.
    assert "<th>time_error_pct</th>" in text and "<th>time_error</th>" not in text
    assert "<td class='l'>measured</td>" in text
    # Long tables collapse under their plot.
    assert "<details><summary>table (" in text
    assert np.isfinite(table["ttft_ms"]).all()


def test_communication_share_uses_device_time_where_rows_have_it():
    """NCCL calls return at enqueue: the share must come from device start/end, not host."""
    import pandas as pd

    from commscope.dashboards._findings import comm_share_pct

    base = 1_700_000_000_000_000_000  # epoch ns: float64 would lose ~256 ns here
    ev = pd.DataFrame({
        "run_id": ["r", "r"], "rank": [0, 0], "op": ["all_reduce"] * 2, "bytes": [1024] * 2,
        "pg_size": [2, 2], "t_start_ns": [base, base + 20], "t_end_ns": [base + 10, base + 30],
        "gpu_start_ns": [base + 100, base + 300], "gpu_end_ns": [base + 200, base + 500],
        "gpu_duration_ns": [100, 200]})
    # device: busy 100 + 200 ns over the span 100..500 -> 75 % (host times would give 66.7 %)
    assert comm_share_pct(ev) == pytest.approx(75.0, abs=1e-9)
    assert comm_share_pct(ev.drop(columns=["gpu_start_ns", "gpu_end_ns", "gpu_duration_ns"])) \
        == pytest.approx(100 * 20 / 30, abs=1e-9)
