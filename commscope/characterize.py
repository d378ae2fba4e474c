"""Characterize communication of the packaged Llama decoder under TP, PP and TP x PP over prompt
lengths (the HotI'25 study "Characterizing Communication Patterns in Distributed LLM
Inference"), with the cost model calibrated in situ from the traced runs themselves.

Per (configuration, prompt length) the table holds what was measured (TTFT, TPOT, bytes and calls
per rank, share of time inside communication calls) beside what the schedule and the cost model
predict. Held-out check: leave one configuration out, fit the cost model on the other
configurations' traces (`analysis.load_measurements` + `analysis.CostModel.fit`), predict the
held-out one. The model predicts the transfer (the time once every participant has arrived), so
the measured side is the same quantity from the held-out trace: per call the median transfer time
of its (op, group size, bytes) in that trace, times the schedule's count. The rest of the time
inside calls is split into waiting for late ranks and host scheduling (calls that finish late
because their process was descheduled: in-call time - wait - transfer), so a gap between model
and wall clock is explained rather than reported as a bare error.

Units: times in ms (ttft_ms, tpot_ms) or us per rank (`*_us*`), bytes per rank (nccl-tests size
S), percent (`*_pct`). Decode figures are per decode step ("token": one generated position of
every sequence in the batch), prefill figures per prefill.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["characterize", "characterize_traces", "leave_one_out", "conclusions",
           "parse_configs", "heldout_summary", "DEFAULT_CONFIGS", "DEFAULT_PROMPTS"]

DEFAULT_CONFIGS = ("tp2", "pp2", "tp2pp2")
DEFAULT_PROMPTS = (16, 64, 256)


def parse_configs(configs: str | Iterable[str]) -> list[tuple[str, int, int]]:
    """'tp2,pp2,tp2pp2' (or a list) -> [(name, tp, pp)]; raises ValueError naming a bad entry."""
    import re

    items = configs.split(",") if isinstance(configs, str) else list(configs)
    out = []
    for raw in items:
        name = raw.strip().lower()
        m = re.fullmatch(r"(?:tp(\d+))?(?:pp(\d+))?", name)
        if not name or not m or not (m.group(1) or m.group(2)):
            raise ValueError(f"bad configuration {raw!r}: expected e.g. tp2, pp2, tp2pp2")
        tp, pp = int(m.group(1) or 1), int(m.group(2) or 1)
        if tp * pp < 2:
            raise ValueError(f"configuration {raw!r} has one rank: nothing to communicate")
        out.append((name, tp, pp))
    if len({n for n, _, _ in out}) != len(out):
        raise ValueError(f"configurations repeat: {items}")
    return out


def _label(tp: int, pp: int) -> str:
    from . import analysis

    return analysis.ParallelConfig(tp=tp, pp=pp).label()


def leave_one_out(measurements: dict[str, pd.DataFrame], **fit_options: Any) -> dict[str, Any]:
    """Per configuration name: a `CostModel` fitted on every OTHER configuration's measurements
    (None when the others measured nothing). `measurements`: name -> `load_measurements` table."""
    from . import analysis

    models: dict[str, Any] = {}
    for held in measurements:
        train = [m for name, m in measurements.items() if name != held and len(m)]
        models[held] = analysis.CostModel.fit(pd.concat(train, ignore_index=True),
                                              **fit_options) if train else None
    return models


def _per_call(table: pd.DataFrame | None, model: Any, op: str, n: int, nbytes: int,
              phase: str | None = None) -> float:
    """Time of one call: from a measurements table (median, of `phase` when the table has
    per-phase rows for it) or a model. recv rows use the send curve: a matched send/recv pair
    is one transfer, measured once (load_measurements)."""
    op = "send" if op == "recv" else op
    if model is not None:
        try:
            return float(model.predict(op, n, nbytes))
        except (KeyError, ValueError):
            return float("nan")
    hit = table[(table["collective"] == op) & (table["nranks"] == n) & (table["bytes"] == nbytes)]
    if phase is not None and "phase" in hit and (hit["phase"] == phase).any():
        hit = hit[hit["phase"] == phase]
    # A transfer too short to see (a buffered send done before its recv was posted) is 0.
    return float(hit["time_us"].median()) if len(hit) else 0.0


def _phase_times(ev: pd.DataFrame, world: int, steps: int) -> pd.DataFrame:
    """Per phase, per rank (decode: per step): time in calls, waiting, calls and bytes."""
    from .analysis._matching import row_waits

    ev = ev[ev["phase"].isin(["prefill", "decode"])]
    wait = row_waits(ev).astype("float64").fillna(0) / 1e3
    d = pd.DataFrame({"phase": ev["phase"], "bytes": ev["bytes"].astype("float64"),
                      "in_call_us": (ev["t_end_ns"] - ev["t_start_ns"]).astype("float64") / 1e3,
                      "wait_us": wait})
    g = d.groupby("phase").agg(calls=("bytes", "size"), bytes=("bytes", "sum"),
                               in_call_us=("in_call_us", "sum"), wait_us=("wait_us", "sum"))
    g = g.reindex(["prefill", "decode"]).fillna(0.0)
    norm = pd.Series({"prefill": world, "decode": world * max(steps, 1)})
    return g.div(norm, axis=0)


def _timing(ev: pd.DataFrame, timings: dict) -> tuple[float, float, float]:
    """(TTFT ms, TPOT ms) on rank 0 and the share of time in calls (%, mean over ranks)."""
    r0 = timings["ranks"][0]
    step_ms = np.diff([r0["first_token_ns"], *r0["step_end_ns"]]) / 1e6
    in_call = (ev["t_end_ns"] - ev["t_start_ns"]).groupby(ev["rank"]).sum()
    wall = pd.Series({r: t["end_ns"] - t["start_ns"] for r, t in enumerate(timings["ranks"])})
    return ((r0["first_token_ns"] - r0["start_ns"]) / 1e6,
            float(step_ms.mean()) if len(step_ms) else float("nan"),
            float(100 * (in_call / wall.reindex(in_call.index)).mean()))


def _traces(run: dict) -> list[str]:
    """A run dict's trace folders: the run's, then its repeats'."""
    return [run["trace"], *run.get("repeats", [])]


def _load(runs: Sequence[dict]) -> dict[str, pd.DataFrame]:
    """`load_measurements` of every trace of `runs`, each path loaded once."""
    from . import analysis

    return {t: analysis.load_measurements(t) for r in runs for t in _traces(r)}


def _pool(loaded: dict[str, pd.DataFrame], paths: Sequence[str]) -> pd.DataFrame:
    """The measurements of `paths` from `_load`: the table `load_measurements(paths)` returns
    (the same rows in the same order), without reading the traces again."""
    from . import analysis

    frames = [loaded[p] for p in paths if len(loaded[p])]
    return pd.concat(frames, ignore_index=True) if frames else analysis.load_measurements([])


def _row(run: dict, spec: Any, model: Any, loaded: dict[str, pd.DataFrame]) -> dict:
    """One table row from a run dict (see characterize_traces); repeats are pooled: medians of
    the timings, time in calls averaged, transfer medians over every repeat's calls. `loaded`:
    the traces' measurements (`_load`)."""
    from . import analysis

    traces = _traces(run)
    timings = [run["timings"], *run.get("repeat_timings", [])]
    events = [analysis.load_events(t) for t in traces]
    ev = events[0]
    world = int(ev["rank"].nunique())
    steps = int(ev.loc[ev["phase"] == "decode", "step"].nunique())
    wl = analysis.Workload(run["batch"], run["prompt_len"], run["new_tokens"])
    sched = analysis.predict_schedule(spec, wl, analysis.ParallelConfig(tp=run["tp"],
                                                                        pp=run["pp"]))
    meas = _pool(loaded, traces)
    sched["measured_us"] = [_per_call(meas, None, r.op, r.pg_size, r.bytes, r.phase) * r.count
                            for r in sched.itertuples()]
    # Predicting a held-out configuration extrapolates by design; its error is what the table
    # reports, so the per-curve range warnings would only repeat it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", analysis.CostModelWarning)
        sched["predicted_us"] = [_per_call(None, model, r.op, r.pg_size, r.bytes) * r.count
                                 for r in sched.itertuples()] if model is not None else np.nan
    by = sched.assign(vol=sched["bytes"] * sched["count"]).groupby("phase").agg(
        calls=("count", "sum"), vol=("vol", "sum"), measured_us=("measured_us", "sum"),
        predicted_us=("predicted_us", lambda s: s.sum(min_count=len(s))))
    per_run = [_phase_times(e, world, steps) for e in events]
    got = per_run[0]
    got[["in_call_us", "wait_us"]] = sum(p[["in_call_us", "wait_us"]]
                                         for p in per_run) / len(per_run)
    times = np.array([_timing(e, t) for e, t in zip(events, timings)])
    row = {"config": run["name"], "label": _label(run["tp"], run["pp"]), "tp": run["tp"],
           "pp": run["pp"], "ranks": world, "prompt_len": run["prompt_len"],
           "batch": run["batch"], "new_tokens": run["new_tokens"], "repeats": len(traces),
           "tokens_match": bool(run["tokens_match"]),
           "ttft_ms": float(np.median(times[:, 0])), "tpot_ms": float(np.median(times[:, 1])),
           "comm_share_pct": float(times[:, 2].mean()),
           "time_basis": ",".join(sorted(map(str, meas["time_basis"].dropna().unique())))
           if "time_basis" in meas else "host"}
    for phase in ("prefill", "decode"):
        m = got.loc[phase]
        pre = phase == "prefill"
        row["prefill_calls_per_rank" if pre else "decode_calls_per_token"] = float(m["calls"])
        row["prefill_bytes_per_rank" if pre else "decode_bytes_per_token_per_rank"] = \
            float(m["bytes"])
        row["predicted_prefill_bytes" if pre else "predicted_decode_per_token_bytes"] = \
            float(by.loc[phase, "vol"])
        row[f"counts_exact_{phase}"] = bool(abs(m["calls"] - by.loc[phase, "calls"]) < 1e-9)
        transfer, pred = float(by.loc[phase, "measured_us"]), float(by.loc[phase, "predicted_us"])
        suffix = "prefill" if pre else "per_token"
        row[f"measured_comm_us_{suffix}"] = transfer
        row[f"predicted_comm_us_{suffix}"] = pred
        err = 100 * (pred - transfer) / transfer if transfer > 0 else float("nan")
        row["heldout_error_prefill_pct" if pre else "heldout_error_pct"] = err
        row[f"{phase}_in_call_us"] = float(m["in_call_us"])
        row[f"{phase}_wait_us"] = float(m["wait_us"])
        row[f"{phase}_host_us"] = float(m["in_call_us"] - m["wait_us"] - transfer)
    row["trace"] = run["trace"]
    return row


def characterize_traces(runs: Sequence[dict], *, model: Any = None, dtype: str = "float64",
                        **fit_options: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The characterization table from traces already recorded (nothing is run again).

    `runs`: dicts with name, tp, pp, prompt_len, batch, new_tokens, trace (run folder), timings
    (`timings.json` content), tokens_match and optionally repeats / repeat_timings (more runs of
    the same configuration and prompt length, pooled). `model`: the `analysis.ModelSpec` the
    traces ran; None: the packaged Llama decoder in `dtype` (a torch dtype name). Returns
    (table, held-out models by configuration name); the models' training data never includes
    the configuration they predict."""
    if model is None:
        from .models import llama  # the model the traces ran (its module imports torch)

        model = llama.Config().spec(llama.dtype_bytes(dtype))
    return _characterize(runs, model, _load(runs), fit_options)


def _characterize(runs: Sequence[dict], spec: Any, loaded: dict[str, pd.DataFrame],
                  fit_options: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """characterize_traces with the model spec and the traces' measurements (`_load`) given."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    measured = {n: _pool(loaded, [t for r in runs if r["name"] == n for t in _traces(r)])
                for n in names}
    models = leave_one_out(measured, **fit_options)
    rows = [_row(r, spec, models[r["name"]], loaded) for r in runs]
    return pd.DataFrame(rows), models


def heldout_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: median held-out time error (%) per phase and overall |error| (%)."""
    t = table.assign(abs_d=table["heldout_error_pct"].abs(),
                     abs_p=table["heldout_error_prefill_pct"].abs())
    g = t.groupby(["config", "label"], sort=False).agg(
        decode_error_pct=("heldout_error_pct", "median"),
        prefill_error_pct=("heldout_error_prefill_pct", "median"))
    g["median_abs_error_pct"] = t.groupby(["config", "label"], sort=False).apply(
        lambda x: float(np.nanmedian(np.r_[x["abs_d"], x["abs_p"]])), include_groups=False)
    return g.reset_index()


def conclusions(table: pd.DataFrame) -> list[dict]:
    """The paper's three conclusions, each checked on `table`: dicts with claim, holds (True,
    False or None when the table lacks the configurations) and evidence (a sentence with the
    numbers used)."""
    t = table.assign(volume=table["prefill_bytes_per_rank"]
                     + table["decode_bytes_per_token_per_rank"] * (table["new_tokens"] - 1))
    kind = np.where(t["pp"] == 1, "TP", np.where(t["tp"] == 1, "PP", "hybrid"))
    t = t.assign(kind=kind)
    out = []
    tp, pp, hy = (t[t["kind"] == k] for k in ("TP", "PP", "hybrid"))
    prompts = sorted(t["prompt_len"].unique())
    short = prompts[0] if prompts else None

    def ranked(col: str, p: int) -> pd.DataFrame:
        return t[t["prompt_len"] == p].sort_values(col)

    def best(col: str, p: int) -> pd.Series:
        return ranked(col, p).iloc[0]

    claim = "TP moves the most data but gives the best response time for short sequences"
    if len(tp) and len(t["kind"].unique()) > 1:
        most = all(ranked("volume", p).iloc[-1]["kind"] == "TP" for p in prompts)
        fastest = best("ttft_ms", short)
        holds = bool(most and fastest["kind"] == "TP")
        vols = ", ".join(f"{r.label} {r.volume / 1e6:.2f} MB" for r in
                         t[t["prompt_len"] == prompts[-1]].itertuples())
        out.append({"claim": claim, "holds": holds, "evidence": (
            f"most bytes per rank: {'TP' if most else 'not TP'} at every prompt length "
            f"(prompt {prompts[-1]}: {vols}); shortest TTFT at prompt {short}: "
            f"{fastest['label']} ({fastest['ttft_ms']:.1f} ms)")})
    else:
        out.append({"claim": claim, "holds": None, "evidence": "needs a TP-only configuration "
                    "and another one"})
    claim = "PP moves the least data but adds latency"
    if len(pp) and len(tp):
        least = all(best("volume", p)["kind"] == "PP" for p in prompts)
        tpot_pp, tpot_tp = float(pp["tpot_ms"].median()), float(tp["tpot_ms"].median())
        holds = bool(least and tpot_pp > tpot_tp)
        out.append({"claim": claim, "holds": holds, "evidence": (
            f"least bytes per rank: {'PP' if least else 'not PP'} at every prompt length; "
            f"median TPOT {pp['label'].iloc[0]} {tpot_pp:.2f} ms vs {tp['label'].iloc[0]} "
            f"{tpot_tp:.2f} ms")})
    else:
        out.append({"claim": claim, "holds": None, "evidence": "needs a PP-only and a TP-only "
                    "configuration"})
    claim = "hybrids (TP x PP) need tuning: they are not the fastest out of the box"
    if len(hy) and len(t["kind"].unique()) > 1:
        wins = sum(best(c, p)["kind"] == "hybrid" for p in prompts for c in ("ttft_ms", "tpot_ms"))
        total = 2 * len(prompts)
        out.append({"claim": claim, "holds": wins == 0, "evidence": (
            f"{hy['label'].iloc[0]} had the shortest TTFT or TPOT in {wins} of {total} "
            f"(prompt length, metric) cases")})
    else:
        out.append({"claim": claim, "holds": None, "evidence": "needs a TP x PP configuration "
                    "and another one"})
    return out


def characterize(out: str | os.PathLike, configs: str | Iterable[str] = DEFAULT_CONFIGS,
                 prompts: Iterable[int] = DEFAULT_PROMPTS, batch: int = 2, new_tokens: int = 8,
                 backend: str = "gloo", *, repeats: int = 2, dtype: str = "float64",
                 model: Any = None, progress: Any = None) -> pd.DataFrame:
    """Run the Llama decoder under each configuration x prompt length (traced, one trace per
    pair, under `out`/traces), check its tokens equal one process's, calibrate in situ with
    leave-one-configuration-out, and write `out`/characterization.csv, `out`/calibration.json
    (fitted on every configuration) and `out`/heldout/<config>.json. `repeats` traced runs per
    pair are pooled (more samples of each message size: steadier medians). Returns the table
    (one row per configuration and prompt length; `tokens_match` False marks a configuration
    whose tokens differ)."""
    from . import analysis
    from .models import llama

    parsed = parse_configs(configs)
    prompts = sorted({int(p) for p in prompts})
    if not prompts or min(prompts) < 1 or batch < 1 or new_tokens < 2 or repeats < 1:
        raise ValueError("need prompt lengths >= 1, batch >= 1, new_tokens >= 2, repeats >= 1")
    cfg = model or llama.Config()
    out = os.path.abspath(os.fspath(out))
    traces = os.path.join(out, "traces")
    shutil.rmtree(traces, ignore_errors=True)
    os.makedirs(traces)
    say = progress or (lambda msg: None)
    reference = {p: llama.run(1, 1, batch=batch, prompt=p, output=new_tokens, dtype=dtype,
                              model=cfg)[1] for p in prompts}
    runs = []
    for name, tp, pp in parsed:
        say(f"{_label(tp, pp)}: {tp * pp} {backend} ranks, prompts {prompts}")
        plan = [(p, f"{name}_p{p}" + (f"_r{k}" if k else "")) for p in prompts
                for k in range(repeats)]
        res = llama.run_prompts(tp, pp, [p for p, _ in plan], out=traces, batch=batch,
                                output=new_tokens, run_names=[n for _, n in plan],
                                dtype=dtype, model=cfg, backend=backend)
        for p in prompts:
            mine = [r for (q, _), r in zip(plan, res) if q == p]
            runs.append(dict(name=name, tp=tp, pp=pp, prompt_len=p, batch=batch,
                             new_tokens=new_tokens, trace=mine[0][0], timings=mine[0][2],
                             repeats=[r[0] for r in mine[1:]],
                             repeat_timings=[r[2] for r in mine[1:]],
                             tokens_match=all(r[1] == reference[p] for r in mine)))
    loaded = _load(runs)
    table, models = _characterize(runs, cfg.spec(llama.dtype_bytes(dtype)), loaded, {})
    # More ranks than cores slows every transfer of a configuration (host scheduling): say so.
    table["cpu_cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    os.makedirs(os.path.join(out, "heldout"), exist_ok=True)
    for name, m in models.items():
        if m is not None:
            m.save(os.path.join(out, "heldout", f"{name}.json"))
    analysis.CostModel.fit(_pool(loaded, [t for r in runs for t in _traces(r)])).save(
        os.path.join(out, "calibration.json"))
    table.to_csv(os.path.join(out, "characterization.csv"), index=False)
    with open(os.path.join(out, "conclusions.json"), "w") as fh:
        json.dump(conclusions(table), fh, indent=1)
    return table
