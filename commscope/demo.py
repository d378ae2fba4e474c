"""`make demo`: sweep, calibrate, run real TP/PP inference, compare with predictions, report."""

from __future__ import annotations

import os
import shutil
import time
import warnings

__all__ = ["run_demo"]

CONFIGS = ((2, 1), (1, 2), (2, 2))  # (tp, pp)
BATCH, PROMPT, OUTPUT = 2, 16, 8


class _Progress:
    def __init__(self, steps: int) -> None:
        self.steps, self.k, self.t0 = steps, 0, time.time()

    def __call__(self, msg: str) -> None:
        self.k += 1
        print(f"\n[{self.k}/{self.steps}] {msg}  (t+{time.time() - self.t0:.0f} s)", flush=True)


def run_demo(out: str = "demo_out") -> int:
    """Run the demo into `out` and print where everything is and the headline numbers."""
    import pandas as pd

    from commscope import analysis, dashboards, profiler
    from commscope.models import llama

    warnings.simplefilter("ignore", FutureWarning)
    step = _Progress(5)
    out = os.path.abspath(out)
    shutil.rmtree(out, ignore_errors=True)
    traces = os.path.join(out, "traces")
    os.makedirs(traces)

    step("collective sweep on 2 gloo ranks (commscope bench)")
    sweep = profiler.sweep(traces, world_size=2, ops=("all_reduce", "all_gather", "send"),
                           min_bytes=512, max_bytes=256 << 10, iters=10, warmup=2,
                           run_name="sweep")
    table = analysis.sweep_table(analysis.load_events(sweep))
    print(table[["op", "bytes", "time_us", "algbw_GBps", "busbw_GBps"]]
          .to_string(index=False, float_format=lambda v: f"{v:,.3f}"))

    step("calibrate the cost model from the sweep (commscope calibrate)")
    meas = analysis.load_measurements(sweep)
    model = analysis.CostModel.fit(meas)
    cal = os.path.join(out, "calibration.json")
    model.save(cal)
    q = model.provenance["quality"]
    print(f"{len(model.fits)} curves from {len(meas)} measured sizes; fit error median "
          f"{q['median_abs_pct']:.1f} %, p90 {q['p90_abs_pct']:.1f} % (gloo on 2 shared cores "
          f"is noisy; GPUs with NCCL fit to a few %)")

    step("Llama decoder inference under TP=2, PP=2 and TP=2 x PP=2 (4 ranks), traced")
    _, reference = llama.run(1, 1, batch=BATCH, prompt=PROMPT, output=OUTPUT)
    runs = []
    for tp, pp in CONFIGS:
        run_dir, tokens = llama.run(tp, pp, out=traces, batch=BATCH, prompt=PROMPT,
                                    output=OUTPUT)
        same = "same tokens as 1 process" if tokens == reference else "TOKENS DIFFER"
        print(f"  TP={tp} PP={pp}: {tp * pp} ranks, {same}, trace {run_dir}")
        runs.append((tp, pp, run_dir))

    step("compare each run with its predicted schedule (commscope compare)")
    spec = llama.Config().spec(8)
    wl = analysis.Workload(BATCH, PROMPT, OUTPUT)
    rows, configs = [], []
    for tp, pp, run_dir in runs:
        ev = analysis.load_events(run_dir)
        cfg = analysis.ParallelConfig(tp=tp, pp=pp)
        configs.append(cfg)
        c = analysis.compare(ev, spec, wl, cfg, model)
        steps = ev.loc[ev["phase"] == "decode", "step"].nunique()
        w = c["phase"].map({"prefill": 1, "decode": steps}).fillna(0)
        meas_ms = float((c["measured_us"].fillna(0) * w).sum()) / 1e3
        pred_ms = float((c["predicted_us"].fillna(0) * w).sum()) / 1e3
        calls = float((c["measured_count"].fillna(0) * w).sum())
        pcalls = float((c["predicted_count"].fillna(0) * w).sum())
        vol = float((c["measured_count"].fillna(0) * c["bytes"] * w).sum())
        rows.append({"config": cfg.label(), "ranks": tp * pp, "calls/rank": calls,
                     "predicted calls": pcalls, "MB/rank": vol / 1e6,
                     "measured ms/rank": meas_ms, "predicted ms/rank": pred_ms,
                     "time error %": 100 * (pred_ms - meas_ms) / meas_ms if meas_ms else None,
                     "counts": "exact" if (c["status"] == "matched").all() and
                     (c["count_error"].abs() < 1e-9).all() else "differ"})
    headline = pd.DataFrame(rows)
    print(headline.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))

    step("one HTML report comparing the runs (commscope report)")
    report = dashboards.write_report([r[2] for r in runs], os.path.join(out, "report.html"),
                                     calibration=model, model=spec, workload=wl,
                                     config=configs, title="commscope demo: TP vs PP vs TPxPP")
    print(f"  {report} ({os.path.getsize(report) / 1e6:.1f} MB, opens offline)")

    print(f"\nDone in {time.time() - step.t0:.0f} s. Everything is under {out}:")
    print("  traces/       sweep + one trace per configuration (analysis.load_events)")
    print("  calibration.json   the fitted cost model (analysis.CostModel.load)")
    print(f"  report.html   the report; also try: commscope summary {runs[-1][2]}")
    return 0
