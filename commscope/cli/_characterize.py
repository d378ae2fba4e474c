"""`commscope characterize`: TP vs PP vs TP x PP over prompt lengths, calibrated in situ."""

from __future__ import annotations

import argparse
import sys

# Columns printed (the CSV has them all); headers say the units.
SHOWN = {"label": "config", "prompt_len": "prompt", "ttft_ms": "TTFT ms", "tpot_ms": "TPOT ms",
         "prefill_bytes_per_rank": "prefill KB/rank",
         "decode_bytes_per_token_per_rank": "decode KB/tok/rank", "comm_share_pct": "comm %",
         "measured_comm_us_per_token": "meas us/tok", "predicted_comm_us_per_token": "pred us/tok",
         "heldout_error_pct": "err % decode", "heldout_error_prefill_pct": "err % prefill"}


def format_table(table) -> str:
    """The characterization table as printed by the CLI and the demo (KB = 1e3 bytes)."""
    t = table[list(SHOWN)].copy()
    for c in ("prefill_bytes_per_rank", "decode_bytes_per_token_per_rank"):
        t[c] = t[c] / 1e3
    return t.rename(columns=SHOWN).to_string(index=False, float_format=lambda v: f"{v:,.1f}")


def format_summary(table) -> str:
    """Held-out error per configuration, conclusions and token check, as printed."""
    from commscope.characterize import conclusions, heldout_summary

    h = heldout_summary(table)
    ranks = table.drop_duplicates("config").set_index("config")["ranks"]
    cores = int(table["cpu_cores"].iloc[0]) if "cpu_cores" in table else None
    lines = ["", "In-situ calibration, leave one configuration out (fit on the others' traces, "
             "predict this one's transfer time):"]
    lines += [f"  {r.label:<12} decode {r.decode_error_pct:+7.1f} %   prefill "
              f"{r.prefill_error_pct:+7.1f} %   median |error| {r.median_abs_error_pct:5.1f} %"
              + (f"   ({ranks[r.config]} ranks on {cores} cores)" if cores else "")
              for r in h.itertuples()]
    lines.append(f"  median |error| across configurations: "
                 f"{h['median_abs_error_pct'].median():.1f} %")
    lines += ["", "The paper's conclusions on this run:"]
    for c in conclusions(table):
        verdict = {True: "holds", False: "does not hold", None: "not tested"}[c["holds"]]
        lines.append(f"  - {c['claim']}: {verdict} ({c['evidence']})")
    return "\n".join(lines)


def _cmd_characterize(args: argparse.Namespace) -> int:
    import os

    from commscope.characterize import DEFAULT_CONFIGS, DEFAULT_PROMPTS, characterize

    configs = DEFAULT_CONFIGS if args.configs is None else args.configs
    prompts = DEFAULT_PROMPTS if args.prompts is None else \
        [int(p) for p in args.prompts.split(",") if p.strip()]
    try:
        table = characterize(args.out, configs=configs, prompts=prompts,
                             batch=args.batch, new_tokens=args.new_tokens,
                             backend=args.backend, repeats=args.repeats,
                             progress=lambda m: print(m, flush=True))
    except RuntimeError as exc:  # a rank failed: its error, not a traceback of the spawner
        print(f"commscope characterize: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(table))
    print(format_summary(table))
    print(f"\nwrote {os.path.join(os.path.abspath(args.out), 'characterization.csv')}")
    bad = table.loc[~table["tokens_match"], ["label", "prompt_len"]]
    if len(bad):
        for r in bad.itertuples():
            print(f"commscope characterize: {r.label} at prompt {r.prompt_len} generated "
                  f"different tokens than one process", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("characterize", help="TP vs PP vs TPxPP over prompt lengths (HotI'25)",
                       description="Run the packaged Llama decoder under each configuration and "
                                   "prompt length (traced), calibrate the cost model from the "
                                   "traces (leave one configuration out) and write "
                                   "characterization.csv.")
    c.add_argument("--out", required=True, help="output folder")
    # Defaults (None): characterize's DEFAULT_CONFIGS / DEFAULT_PROMPTS, resolved when the
    # command runs (building the parser imports no pandas).
    c.add_argument("--configs", help="e.g. tp2,pp2,tp2pp2")
    c.add_argument("--prompts", help="prompt lengths, e.g. 16,64,256")
    c.add_argument("--batch", type=int, default=2)
    c.add_argument("--new-tokens", type=int, default=8, help="generated tokens per sequence")
    c.add_argument("--repeats", type=int, default=2,
                   help="traced runs per (config, prompt), pooled (default 2)")
    c.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    c.set_defaults(func=_cmd_characterize)
