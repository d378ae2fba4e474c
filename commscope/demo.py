"""`make demo`: characterize TP vs PP vs TP x PP over prompt lengths with real inference,
calibrate the cost model from those traces (leave one configuration out), report."""

from __future__ import annotations

import os
import shutil
import time

__all__ = ["run_demo"]

BATCH, NEW_TOKENS, REPEATS, DTYPE = 2, 8, 2, "float64"


class _Progress:
    def __init__(self, steps: int) -> None:
        self.steps, self.k, self.t0 = steps, 0, time.time()

    def __call__(self, msg: str) -> None:
        self.k += 1
        print(f"\n[{self.k}/{self.steps}] {msg}  (t+{time.time() - self.t0:.0f} s)", flush=True)


def run_demo(out: str = "demo_out") -> int:
    """Run the demo into `out` and print where everything is and the headline numbers.
    Returns 1 when a configuration generated different tokens than one process."""
    from commscope import analysis, dashboards
    from commscope.characterize import DEFAULT_CONFIGS as CONFIGS
    from commscope.characterize import DEFAULT_PROMPTS as PROMPTS
    from commscope.characterize import characterize, parse_configs
    from commscope.cli._characterize import format_summary, format_table
    from commscope.models import llama

    step = _Progress(3)
    out = os.path.abspath(out)
    shutil.rmtree(out, ignore_errors=True)

    labels = [analysis.ParallelConfig(tp=tp, pp=pp).label() for _, tp, pp in
              parse_configs(CONFIGS)]
    step(f"Llama decoder under {', '.join(labels[:-1])} and {labels[-1]} (gloo), "
         f"prompts {list(PROMPTS)}, "
         f"batch {BATCH}, {NEW_TOKENS} new tokens, {REPEATS} traced runs each "
         f"(commscope characterize)")
    try:
        table = characterize(out, configs=CONFIGS, prompts=PROMPTS, batch=BATCH,
                             new_tokens=NEW_TOKENS, repeats=REPEATS, dtype=DTYPE,
                             progress=lambda m: print("  " + m, flush=True))
    except RuntimeError as exc:  # a rank failed: say so, not a traceback of the spawner
        print(f"commscope demo: error: {exc}")
        return 1
    same = "every configuration generated the same tokens as one process" \
        if table["tokens_match"].all() else "TOKENS DIFFER (see tokens_match)"
    print(f"  {same}")

    step("characterization, with the cost model calibrated in situ (held out per configuration)")
    print("Per rank; KB = 1e3 bytes; decode per generated token; meas/pred: transfer time of "
          "the communication (us), pred from a model fitted on the OTHER configurations.")
    print(format_table(table))
    print(format_summary(table))

    step("one HTML report: Findings first (commscope report)")
    longest = max(PROMPTS)
    sel = table[table["prompt_len"] == longest]
    wl = analysis.Workload(BATCH, longest, NEW_TOKENS)
    report = dashboards.write_report(
        list(sel["trace"]), os.path.join(out, "report.html"),
        calibration=os.path.join(out, "calibration.json"),
        model=llama.Config().spec(llama.dtype_bytes(DTYPE)), workload=wl,
        config=[analysis.ParallelConfig(tp=int(r.tp), pp=int(r.pp)) for r in sel.itertuples()],
        characterization=table, title="commscope demo: TP vs PP vs TPxPP, calibrated in situ")
    print(f"  {report} ({os.path.getsize(report) / 1e6:.1f} MB, opens offline)")

    print(f"\nDone in {time.time() - step.t0:.0f} s. Everything is under {out}:")
    print("  characterization.csv  one row per (configuration, prompt length)")
    print("  traces/               one trace per row (analysis.load_events)")
    print("  calibration.json      cost model fitted on every trace (analysis.CostModel.load);"
          " heldout/ the leave-one-out models")
    print(f"  report.html           the report; also try: commscope summary {sel['trace'].iloc[-1]}")
    return 0 if table["tokens_match"].all() else 1
