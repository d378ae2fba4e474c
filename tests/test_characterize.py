"""`commscope characterize`: real gloo runs of the Llama decoder; the table is checked against
the traces (bytes, counts, timings), the leave-one-configuration-out fit against what it was fed,
and the paper's conclusions against the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from commscope import analysis
from commscope.characterize import conclusions, heldout_summary, leave_one_out, parse_configs
from commscope.models import llama

PROMPTS = (8, 24)
BATCH, NEW = 2, 4
CONTRACT = ["config", "tp", "pp", "ranks", "prompt_len", "batch", "ttft_ms", "tpot_ms",
            "prefill_bytes_per_rank", "decode_bytes_per_token_per_rank", "comm_share_pct",
            "measured_comm_us_per_token", "predicted_comm_us_per_token", "heldout_error_pct"]
H, B, V = 64, 8, 256   # the packaged model: hidden size, float64 bytes, vocab


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CLI run (the contract), three configurations x two prompt lengths."""
    out = tmp_path_factory.mktemp("char")
    exe = os.path.join(os.path.dirname(sys.executable), "commscope")
    r = subprocess.run([exe, "characterize", "--out", str(out), "--configs", "tp2,pp2,tp2pp2",
                        "--prompts", ",".join(map(str, PROMPTS)), "--batch", str(BATCH),
                        "--new-tokens", str(NEW), "--repeats", "1"], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, pd.read_csv(out / "characterization.csv"), r.stdout + r.stderr


def test_csv_has_the_contract_columns_and_one_row_per_pair(run):
    _, t, _ = run
    assert set(CONTRACT) <= set(t.columns)
    assert sorted(zip(t["config"], t["prompt_len"])) == sorted(
        (c, p) for c in ("tp2", "pp2", "tp2pp2") for p in PROMPTS)
    assert t["tokens_match"].all() and (t["batch"] == BATCH).all()
    assert list(t.drop_duplicates("config")["ranks"]) == [2, 2, 4]


def test_bytes_and_counts_equal_the_traces_and_the_schedule(run):
    _, t, _ = run
    for r in t.itertuples():
        ev = analysis.load_events(r.trace)
        world = ev["rank"].nunique()
        steps = ev.loc[ev["phase"] == "decode", "step"].nunique()
        assert steps == NEW - 1 and world == r.ranks
        pre, dec = ev[ev["phase"] == "prefill"], ev[ev["phase"] == "decode"]
        assert r.prefill_bytes_per_rank == pre["bytes"].sum() / world
        assert r.decode_bytes_per_token_per_rank == dec["bytes"].sum() / world / steps
        assert r.prefill_calls_per_rank == len(pre) / world
        assert r.decode_calls_per_token == len(dec) / world / steps
        s = analysis.predict_schedule(llama.Config().spec(8),
                                      analysis.Workload(BATCH, r.prompt_len, NEW),
                                      analysis.ParallelConfig(tp=r.tp, pp=r.pp))
        assert r.prefill_calls_per_rank == pytest.approx(s.loc[s["phase"] == "prefill",
                                                               "count"].sum())
        assert r.counts_exact_prefill and r.counts_exact_decode
        # By hand (module doc of analysis._schedule): activations T*h*b, T = batch*prompt.
        act = BATCH * r.prompt_len * H * B
        logits = BATCH * V * B
        expected = {"tp2": 9 * act + logits,                       # 2L+1 all_reduce, gather
                    "pp2": act + BATCH * 8,                        # send+recv, token return
                    "tp2pp2": 4.5 * act + logits / 2 + act + BATCH * 8}[r.config]
        assert r.prefill_bytes_per_rank == expected


def test_timings_and_measured_transfer_come_from_the_run(run):
    _, t, _ = run
    for r in t.itertuples():
        with open(os.path.join(r.trace, "timings.json")) as fh:
            r0 = json.load(fh)["ranks"][0]
        assert r.ttft_ms == pytest.approx((r0["first_token_ns"] - r0["start_ns"]) / 1e6)
        steps = np.diff([r0["first_token_ns"], *r0["step_end_ns"]]) / 1e6
        assert len(steps) == NEW - 1 and r.tpot_ms == pytest.approx(steps.mean())
    # Measured decode transfer of TP=2: per rank 2L+1 all_reduce of batch*h*b and one
    # all_gather of the logits, each at the median transfer of its instances in that phase.
    r = t[t["config"] == "tp2"].iloc[0]
    m = analysis.match_collectives(analysis.load_events(r["trace"]))
    d = m[m["phase"] == "decode"]
    ar = d.loc[(d["op"] == "all_reduce") & (d["bytes"] == BATCH * H * B), "transfer_ns"]
    ag = d.loc[(d["op"] == "all_gather") & (d["bytes"] == BATCH * V * B), "transfer_ns"]
    expected = 9 * ar.astype(float).median() / 1e3 + ag.astype(float).median() / 1e3
    assert r["measured_comm_us_per_token"] == pytest.approx(expected, rel=1e-9)
    # Waiting for late ranks, per decode step and rank, from analysis' per-call waits.
    from commscope.analysis._matching import row_waits

    ev = analysis.load_events(r["trace"])
    dec = ev[ev["phase"] == "decode"]
    wait_us = row_waits(dec).astype(float).sum() / 1e3 / r["ranks"] / (NEW - 1)
    assert r["decode_wait_us"] == pytest.approx(wait_us)


def test_leave_one_out_never_fits_the_held_out_configuration(run):
    out, t, _ = run
    meas = {c: analysis.load_measurements(list(g["trace"])) for c, g in t.groupby("config")}
    models = leave_one_out(meas)
    # Make the held-out configuration's own measurements absurd: its model must not move,
    # while every other configuration's model (which trains on them) must.
    for held in meas:
        bent = {c: (m.assign(time_us=m["time_us"] * 1000) if c == held else m)
                for c, m in meas.items()}
        again = leave_one_out(bent)
        probe = [("all_reduce", 2, BATCH * H * B), ("send", 2, BATCH * H * B)]
        for c in meas:
            a = [models[c].predict(op, n, s, warn=False) for op, n, s in probe
                 if any(k[0] == op for k in models[c].fits)]
            b = [again[c].predict(op, n, s, warn=False) for op, n, s in probe
                 if any(k[0] == op for k in again[c].fits)]
            if c == held:
                assert a == b
            else:
                assert a != b, (held, c)
        assert models[held].provenance["rows"] == sum(len(m) for c, m in meas.items()
                                                     if c != held)
        held_runs = {os.path.basename(p) for p in t.loc[t["config"] == held, "trace"]}
        for prov in getattr(models[held], "curve_provenance", {}).values():
            runs = prov.get("runs", [])
            runs = runs.split(",") if isinstance(runs, str) else list(runs)
            assert runs and not held_runs & {str(x).strip() for x in runs}
    # The held-out predictions in the table are those models' (error in percent).
    r = t[t["config"] == "pp2"].iloc[0]
    assert r["heldout_error_pct"] == pytest.approx(
        100 * (r["predicted_comm_us_per_token"] - r["measured_comm_us_per_token"])
        / r["measured_comm_us_per_token"])
    assert os.path.exists(out / "heldout" / "tp2.json") and os.path.exists(
        out / "calibration.json")


def test_cli_prints_table_conclusions_and_errors(run):
    _, t, text = run
    assert "err % decode" in text and "median |error| across configurations" in text
    for c in conclusions(t):
        assert c["claim"] in text
    h = heldout_summary(t)
    assert f"{h['median_abs_error_pct'].median():.1f} %" in text


def test_conclusions_follow_the_numbers():
    base = dict(batch=1, new_tokens=3, prefill_bytes_per_rank=0.0)
    rows = []
    for cfg, tp, pp, label in (("tp2", 2, 1, "TP=2"), ("pp2", 1, 2, "PP=2"),
                               ("tp2pp2", 2, 2, "TP=2 x PP=2")):
        for p in (16, 256):
            rows.append(dict(base, config=cfg, tp=tp, pp=pp, label=label, prompt_len=p,
                             decode_bytes_per_token_per_rank={"tp2": 9e3, "pp2": 1e3,
                                                              "tp2pp2": 5e3}[cfg],
                             ttft_ms={"tp2": 10, "pp2": 20, "tp2pp2": 30}[cfg] * p / 16,
                             tpot_ms={"tp2": 1.0, "pp2": 2.0, "tp2pp2": 3.0}[cfg]))
    t = pd.DataFrame(rows)
    assert [c["holds"] for c in conclusions(t)] == [True, True, True]
    t.loc[t["config"] == "tp2pp2", "tpot_ms"] = 0.5        # the hybrid wins decode
    t.loc[(t["config"] == "pp2") & (t["prompt_len"] == 16), "ttft_ms"] = 5.0
    t.loc[t["config"] == "pp2", "tpot_ms"] = 0.8            # PP no slower than TP
    c = conclusions(t)
    assert [x["holds"] for x in c] == [False, False, False]
    assert "PP=2 (5.0 ms)" in c[0]["evidence"] and "in 2 of 4" in c[2]["evidence"]
    assert [x["holds"] for x in conclusions(t[t["config"] == "tp2"])] == [None, None, None]


def test_bad_configurations_are_refused():
    assert parse_configs("tp2,PP2 , tp2pp2") == [("tp2", 2, 1), ("pp2", 1, 2),
                                                  ("tp2pp2", 2, 2)]
    for bad in ("tp", "dp2", "tp1", "tp2,tp2"):
        with pytest.raises(ValueError):
            parse_configs(bad)
    exe = os.path.join(os.path.dirname(sys.executable), "commscope")
    r = subprocess.run([exe, "characterize", "--out", "/nonexistent/x", "--configs", "tp0x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "bad configuration 'tp0x'" in r.stderr
    assert "Traceback" not in r.stderr
