"""Trace commands: `summary` (terminal table) and `report` (HTML)."""

from __future__ import annotations

import argparse
import os

from ._model import _config, _model, _workload, model_args


def _cmd_summary(args: argparse.Namespace) -> int:
    from commscope import analysis

    # A path: DuckDB computes the table out of core, so traces of any size work.
    table = analysis.summarize(args.trace)
    if args.json:
        print(table.to_json(orient="records", indent=1))
        return 0
    shown = table.copy()
    for c in ("total_time_us", "p50_us", "p90_us", "p99_us"):
        shown[c] = shown[c].map(lambda v: f"{v:,.1f}")
    shown["median_busbw_GBps"] = shown["median_busbw_GBps"].map(lambda v: f"{v:.3f}")
    shown["share_of_wall"] = shown["share_of_wall"].map(lambda v: f"{100 * v:.1f}%")
    print(f"{int(table['calls'].sum()):,} events under {args.trace}")
    print(shown.head(args.top).to_string(index=False))
    print(f"busbw: {analysis.BUSBW_DEFINITION}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from commscope import dashboards

    model = workload = config = None
    if args.model:
        model, workload = _model(args), _workload(args)
        config = _config(args)
    out = dashboards.write_report(args.traces, args.out, calibration=args.calibration,
                                  model=model, workload=workload, config=config,
                                  nccl_logs=args.nccl_log, title=args.title)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("summary", help="per phase/op/dimension/size table of a trace",
                       description="Calls, total time, p50/p90/p99 latency, median bus "
                                   "bandwidth and share of wall time per (phase, op, pg_dim, "
                                   "pg_size, size bucket).")
    m.add_argument("trace", help="a run folder (or a folder of runs)")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("--top", type=int, default=40, help="rows to print (default 40)")
    m.set_defaults(func=_cmd_summary)

    rp = sub.add_parser("report", help="write a self-contained HTML report of traces",
                        description="One offline HTML page for one or several traces (several "
                                    "are compared side by side).")
    rp.add_argument("traces", nargs="+", metavar="TRACE")
    rp.add_argument("-o", "--out", required=True, help="HTML file to write")
    rp.add_argument("--nccl-log", nargs="+", help="NCCL debug logs of the same run")
    rp.add_argument("--title")
    model_args(rp)
    for a in rp._actions:  # the model is optional here
        if a.dest == "model":
            a.required = False
    rp.set_defaults(func=_cmd_report)
