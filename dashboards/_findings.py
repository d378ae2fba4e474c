"""Findings: the handful of sentences a report opens with, computed from the data.

Each finding is a dict: key, text (the sentence), anchor (the report section with the evidence)
and values (the numbers in the sentence, as the analysis API returned them), so a test can check
the sentence against the API.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from .. import analysis

__all__ = ["findings", "comm_share_pct", "what_if"]


def comm_share_pct(ev: pd.DataFrame) -> float:
    """Time inside communication calls over wall time (first call to last completion), per
    rank, averaged over ranks (percent). Device time where the rows have it (an NCCL call
    returns at enqueue), host time otherwise; NaN without completed calls."""
    timed = analysis.bandwidth(ev)
    # Integer nanoseconds throughout: epoch times in float64 lose ~256 ns.
    start = timed["t_start_ns"].astype("Int64")
    if "gpu_start_ns" in timed:
        start = timed["gpu_start_ns"].astype("Int64").where(
            timed["time_basis"].eq("device") & timed["gpu_start_ns"].notna(), start)
    dur = timed["duration_ns"].astype("Int64")
    done = dur.notna() & start.notna()
    if not done.any():
        return float("nan")
    start, dur, rank = start[done], dur[done], timed.loc[done, "rank"]
    spans = (start + dur).groupby(rank).max() - start.groupby(rank).min()
    busy = dur.groupby(rank).sum()
    return float(100 * (busy / spans.clip(lower=1)).mean())


def _dominant(ev: pd.DataFrame) -> dict:
    s = analysis.summarize(ev)
    g = s.groupby(["phase", "op", "pg_dim"], dropna=False)["total_time_us"].sum()
    top = g.idxmax()
    return {"phase": str(top[0]), "op": str(top[1]), "dim": str(top[2]),
            "share_pct": float(100 * g.max() / g.sum()) if g.sum() > 0 else 0.0}


def _comm(runs: list) -> dict:
    parts, values = [], {}
    for label, ev, _ in runs:
        share = comm_share_pct(ev)
        if pd.isna(share):
            parts.append(f"nothing on {label} (no completed communication call recorded)")
            continue
        dom = _dominant(ev)
        values[label] = {"comm_share_pct": share, **dom}
        parts.append(f"{share:.1f} % on {label} (most of it {dom['phase']} {dom['op']} on "
                     f"dim {dom['dim']}: {dom['share_pct']:.1f} % of its communication time)")
    return {"key": "communication", "anchor": "time", "values": values,
            "text": "Communication calls take " + "; ".join(parts) + "."}


def _busbw(runs: list, calibration: Any) -> dict | None:
    rows = []
    for label, ev, _ in runs:
        m = analysis.match_collectives(ev)
        m = m[(m["bytes"] > 0) & (m["op"] != "barrier") & m["busbw_GBps"].notna()]
        if len(m):
            med = m.groupby(["op", "pg_size", "bytes"])["busbw_GBps"].median().reset_index()
            rows.append(med.assign(run=label))
    if not rows:
        return None
    med = pd.concat(rows, ignore_index=True)
    # The op moving the largest messages, at its largest size, in the run where it was slowest.
    big = med[med["bytes"] == med["bytes"].max()].sort_values("busbw_GBps").iloc[0]
    same = med[med["op"] == big["op"]]
    peak = float(same["busbw_GBps"].max())
    v = {"op": big["op"], "nranks": int(big["pg_size"]), "bytes": int(big["bytes"]),
         "run": big["run"], "busbw_GBps": float(big["busbw_GBps"]), "peak_GBps": peak,
         "pct_of_peak": float(100 * big["busbw_GBps"] / peak) if peak > 0 else float("nan")}
    text = (f"The largest messages ({big['op']} of {v['bytes'] / 1e3:,.1f} KB on "
            f"{v['nranks']} ranks, {big['run']}) reached a median bus bandwidth of "
            f"{v['busbw_GBps']:.3f} GB/s, {v['pct_of_peak']:.0f} % of the best median measured "
            f"for {big['op']} in these runs ({peak:.3f} GB/s)")
    if calibration is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", analysis.CostModelWarning)
            try:
                t_us = float(calibration.predict(big["op"], v["nranks"], v["bytes"]))
                factor = float(analysis.bus_factor([big["op"]], [v["nranks"]])[0])
                v["calibrated_GBps"] = v["bytes"] * factor / (t_us * 1e3)
                text += (f"; the calibrated model expects {v['calibrated_GBps']:.3f} GB/s at "
                         f"that size")
            except (KeyError, ValueError):
                pass
    return {"key": "bandwidth", "anchor": "latency", "values": v, "text": text + "."}


def _straggler(runs: list) -> dict | None:
    best = None
    for label, ev, _ in runs:
        st = analysis.stragglers(ev)
        if len(st) and (best is None or st.iloc[0]["wait_imposed_ns"] > best[1]["wait_imposed_ns"]):
            in_call = float((ev["t_end_ns"] - ev["t_start_ns"]).sum())
            best = (label, st.iloc[0], in_call)
    if best is None or best[1]["wait_imposed_ns"] <= 0:
        return None
    label, r, in_call = best
    v = {"run": label, "rank": int(r["rank"]), "times_last": int(r["times_last"]),
         "collectives": int(r["collectives"]), "wait_imposed_ms": r["wait_imposed_ns"] / 1e6,
         "share_of_comm_pct": 100 * float(r["wait_imposed_ns"]) / in_call if in_call else 0.0}
    return {"key": "straggler", "anchor": "skew", "values": v, "text": (
        f"Worst straggler: rank {v['rank']} of {label} arrived last at {v['times_last']} of "
        f"its {v['collectives']} collectives and made the other ranks wait "
        f"{v['wait_imposed_ms']:,.1f} ms in total ({v['share_of_comm_pct']:.1f} % of all time "
        f"in communication calls of that run).")}


def _exposed(runs: list) -> dict:
    values, parts = {}, []
    for label, ev, _ in runs:
        t = analysis.exposed_communication(ev)
        if len(t) and t["comm_ns"].sum() > 0:
            exp, tot = float(t["exposed_ns"].sum()), float(t["comm_ns"].sum())
            how = "analysis.exposed_communication"
        else:
            ov = analysis.overlap(ev)
            if len(ov) and "exposed_ns" in ov:  # async calls: exposed = blocked in wait()
                exp, tot = float(ov["exposed_ns"].sum()), float(ov["total_ns"].sum())
                how = "async calls (analysis.overlap)"
            else:  # every call blocking: the caller waits for all of it
                exp = tot = float((ev["t_end_ns"] - ev["t_start_ns"]).sum())
                how = "blocking calls"
        n = max(int(ev["rank"].nunique()), 1)
        values[label] = {"exposed_ms_per_rank": exp / n / 1e6, "comm_ms_per_rank": tot / n / 1e6,
                         "exposed_pct": 100 * exp / tot if tot else 0.0, "how": how}
        parts.append(f"{label} {exp / n / 1e6:,.1f} of {tot / n / 1e6:,.1f} ms per rank "
                     f"({values[label]['exposed_pct']:.0f} %, {how})")
    return {"key": "exposed", "anchor": "overlap", "values": values,
            "text": "Exposed communication: " + "; ".join(parts) + "."}


def _accuracy(characterization: pd.DataFrame | None, runs: list, model: Any, workload: Any,
              calibration: Any) -> dict | None:
    if characterization is not None and len(characterization):
        from ..characterize import heldout_summary

        h = heldout_summary(characterization)
        med = float(h["median_abs_error_pct"].median())
        parts = [f"{r.label} {r.decode_error_pct:+.1f} % decode / {r.prefill_error_pct:+.1f} % "
                 f"prefill" for r in h.itertuples()]
        worst = h.sort_values("median_abs_error_pct").iloc[-1]
        return {"key": "accuracy", "anchor": "accuracy", "values": {
            "median_abs_error_pct": med, "per_config": h.set_index("label").to_dict("index"),
            "worst": worst["label"]}, "text": (
            f"Model accuracy on this run (calibrated in situ, each configuration predicted by "
            f"a model fitted on the others' traces): median |error| {med:.1f} % across "
            f"configurations ({'; '.join(parts)}); the worst is {worst['label']}, see the "
            f"transfer / wait / host-scheduling split.")}
    if calibration is None or model is None or workload is None:
        return None
    errs = {}
    for label, ev, cfg in runs:
        if cfg is None:
            continue
        c = analysis.compare(ev, model, workload, cfg, calibration)
        meas, pred = c["measured_us"].sum(), c["predicted_us"].sum()
        errs[label] = float(100 * (pred - meas) / meas) if meas else float("nan")
    if not errs:
        return None
    return {"key": "accuracy", "anchor": "compare", "values": errs, "text": (
        "Model accuracy (predicted vs measured transfer time per rank, prefill + one decode "
        "step): " + "; ".join(f"{k} {v:+.1f} %" for k, v in errs.items()) + ".")}


def what_if(devices: int, model: Any, workload: Any, calibration: Any, measured: str,
            top: int = 5) -> pd.DataFrame:
    """The advisor's top configurations for `devices` plus the measured one (marked)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", analysis.CostModelWarning)
        a = analysis.advise(devices, model, workload, calibration)
    a = a[a["rank"].notna()]
    keep = a.head(top)
    if measured in set(a["config"]) and measured not in set(keep["config"]):
        keep = pd.concat([keep, a[a["config"] == measured]])
    keep = keep.assign(measured=np.where(keep["config"] == measured, "measured", ""))
    return keep.reset_index(drop=True)


def _advice(runs: list, model: Any, workload: Any, calibration: Any) -> dict | None:
    cfgs = [(label, cfg) for label, _, cfg in runs if cfg is not None]
    if not cfgs or model is None or workload is None or calibration is None:
        return None
    label, cfg = max(cfgs, key=lambda x: x[1].tp * x[1].pp * x[1].dp)
    devices = cfg.tp * cfg.pp * cfg.dp
    w = what_if(devices, model, workload, calibration, cfg.label(), top=100)
    mine = w[w["config"] == cfg.label()]
    alt = w[(w["config"] != cfg.label()) & (w["dp"] == 1)]  # model-parallel alternatives
    if mine.empty or alt.empty:
        return None
    a, m = alt.iloc[0], mine.iloc[0]
    x, y = float(m["decode_us_per_token"]), float(a["decode_us_per_token"])
    v = {"devices": devices, "measured": cfg.label(), "best": a["config"],
         "measured_decode_us_per_token": x, "best_decode_us_per_token": y,
         "gain_pct": 100 * (x - y) / x if x else float("nan"),
         "first_overall": w.iloc[0]["config"]}
    verb = "cut" if y < x else "raise"
    text = (f"Advisor: on {devices} devices {a['config']} would {verb} predicted decode "
            f"communication per token from {x:,.0f} µs ({cfg.label()}, measured) to {y:,.0f} µs "
            f"({abs(v['gain_pct']):.0f} % {'less' if y < x else 'more'})")
    if v["first_overall"] != a["config"]:
        text += f"; overall the advisor ranks {v['first_overall']} first (no model parallelism)"
    return {"key": "advice", "anchor": "whatif", "values": v, "text": text + "."}


def findings(runs: list[tuple[str, pd.DataFrame, Any]], *, characterization: Any = None,
             calibration: Any = None, model: Any = None, workload: Any = None) -> list[dict]:
    """The report's Findings from `runs` [(label, events, ParallelConfig or None)] and, when
    given, the characterization table, the cost model, the model spec and the workload."""
    out = [_comm(runs), _busbw(runs, calibration), _straggler(runs), _exposed(runs),
           _accuracy(characterization, runs, model, workload, calibration),
           _advice(runs, model, workload, calibration)]
    return [f for f in out if f is not None]
