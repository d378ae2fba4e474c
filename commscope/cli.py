"""The `commscope` command line. Each subcommand is a thin call into the public Python API."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from commscope import __version__

__all__ = ["main", "build_parser"]


def _cmd_run(args: argparse.Namespace) -> int:
    from profiler._autorun import BOOTSTRAP_DIR

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("commscope run: no command given (usage: commscope run --out DIR -- CMD ...)",
              file=sys.stderr)
        return 2
    if cmd[0].endswith(".py"):
        cmd = [sys.executable, *cmd]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    run_id = args.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    env = dict(os.environ)
    env.update(COMMSCOPE_OUT=out, COMMSCOPE_RUN_ID=run_id, COMMSCOPE_CAPTURE=args.capture)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (BOOTSTRAP_DIR, env.get("PYTHONPATH")) if p)
    before = set(os.listdir(out))
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):  # let the program flush its trace on Ctrl-C / SIGTERM
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    rc = proc.wait()
    created = sorted(set(os.listdir(out)) - before)
    for name in created:
        print(f"commscope: trace written to {os.path.join(out, name)}", file=sys.stderr)
    if not created:
        print(f"commscope: the command recorded no communication (nothing under {out})",
              file=sys.stderr)
    return rc


def _cmd_schema(args: argparse.Namespace) -> int:
    from profiler import schema_markdown

    print(schema_markdown(), end="")
    return 0


def _cmd_nccl_log(args: argparse.Namespace) -> int:
    from profiler import parse_nccl_logs

    log = parse_nccl_logs(args.logs)
    paths = log.write(args.out)
    print(log.summary_text())
    print(f"{len(log.collectives):,} collectives, {len(log.communicators)} communicators, "
          f"{len(log.topology):,} topology rows, {len(log.warnings)} warnings")
    for p in paths:
        print(f"wrote {p}")
    return 0


def _cmd_nccl_tests(args: argparse.Namespace) -> int:
    from profiler import parse_nccl_tests

    df = parse_nccl_tests(args.files)
    if df.empty:
        print("commscope nccl-tests: no nccl-tests result rows found", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    df.to_parquet(args.out, index=False)
    g = df.groupby(["collective", "nranks", "dtype", "placement"], dropna=False).agg(
        sizes=("bytes", "nunique"), min_bytes=("bytes", "min"), max_bytes=("bytes", "max"),
        peak_busbw_GBps=("busbw_GBps", "max"))
    print(g.to_string())
    print(f"wrote {len(df)} measurements to {args.out}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    import analysis

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


def _model(args: argparse.Namespace):
    from analysis import ModelSpec

    name = args.model
    if os.path.exists(name):
        return ModelSpec.from_hf_config(name)
    return ModelSpec.from_preset(name)


def _config(args: argparse.Namespace):
    from analysis import TP2D, ParallelConfig

    tp2d = None
    if getattr(args, "tp2d_rows", None):
        rows = tuple(int(x) for x in args.tp2d_rows.split(","))
        cols = tuple(int(x) for x in args.tp2d_cols.split(",")) if args.tp2d_cols else None
        if cols is None:
            raise ValueError("--tp2d-rows needs --tp2d-cols")
        tp2d = TP2D(rows, cols)
    return ParallelConfig(tp=args.tp, pp=args.pp, dp=args.dp, ep=args.ep,
                          sequence_parallel=args.sp, tp2d=tp2d)


def _workload(args: argparse.Namespace):
    from analysis import Workload

    return Workload(args.batch, args.prompt, args.output)


def _cost_model(args: argparse.Namespace):
    from analysis import CostModel

    return CostModel.load(args.calibration) if args.calibration else None


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import warnings

    from analysis import CostModel, CostModelWarning, load_measurements

    m = load_measurements(args.inputs)
    model = CostModel.fit(m, max_pieces=args.max_pieces)
    model.save(args.out)
    print(f"{len(m):,} measurements from {len(args.inputs)} input(s); "
          f"{len(model.fits)} curves (op x group size x nodes x library)")
    q = model.quality
    print(q.round(2).to_string(index=False))
    o = model.provenance["quality"]
    print(f"fit error on the measured sizes: median {o['median_abs_pct']:.2f} %, "
          f"p90 {o['p90_abs_pct']:.2f} %, max {o['max_abs_pct']:.2f} %")
    if args.holdout:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CostModelWarning)
            h = CostModel.holdout(m, k=args.holdout, max_pieces=args.max_pieces)
        e = h["rel_error"].abs() * 100
        print(f"{args.holdout}-fold held-out error over {len(h)} sizes: median {e.median():.2f} %,"
              f" p90 {e.quantile(0.9):.2f} %, max {e.max():.2f} %")
    print(f"wrote {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from analysis import predict_schedule

    model, cfg, wl = _model(args), _config(args), _workload(args)
    s = predict_schedule(model, wl, cfg, _cost_model(args), pp_sends=args.pp_sends)
    print(f"{model.name}, {cfg.label()}, batch {wl.batch}, prompt {wl.prompt_len}, "
          f"output {wl.output_len}; counts per rank, decode per generated token")
    print(s.drop(columns="what").to_string(index=False))
    for phase in ("prefill", "decode"):
        p = s[s["phase"] == phase]
        print(f"{phase}: {(p['bytes'] * p['count']).sum() / 1e6:,.3f} MB per rank, "
              f"{p['predicted_us'].sum(min_count=1):,.1f} us predicted")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import analysis

    ev = analysis.load_events(args.trace)
    c = analysis.compare(ev, _model(args), _workload(args), _config(args), _cost_model(args),
                         pp_sends=args.pp_sends)
    print(c.drop(columns="what").to_string(index=False))
    matched = c[c["status"] == "matched"]
    exact = (matched["count_error"].abs() < 1e-9).all() and len(matched) == len(c)
    print(f"{len(matched)} of {len(c)} (phase, op, dim, bytes) rows matched; counts "
          + ("agree exactly" if exact else "differ (see count_error and status)"))
    return 0


def _cmd_advise(args: argparse.Namespace) -> int:
    import pandas as pd

    import analysis

    a = analysis.advise(args.devices, _model(args), _workload(args), _cost_model(args),
                        device_memory_gb=args.memory_gb, max_pp=args.max_pp)
    shown = a.drop(columns="why").copy()
    print(shown.to_string(index=False))
    for r in a.itertuples():
        label = "--" if pd.isna(r.rank) else f"#{r.rank}"
        print(f"{label} {r.config}: {r.why}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import dashboards

    model = workload = config = None
    if args.model:
        model, workload = _model(args), _workload(args)
        config = _config(args)
    out = dashboards.write_report(args.traces, args.out, calibration=args.calibration,
                                  model=model, workload=workload, config=config,
                                  nccl_logs=args.nccl_log, title=args.title)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 0


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def _cmd_bench(args: argparse.Namespace) -> int:
    import analysis
    import profiler

    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    print(f"sweeping {', '.join(ops)} on {args.world_size} {args.backend} ranks, "
          f"{args.min_bytes} to {args.max_bytes}, {args.iters} iterations "
          f"(+{args.warmup} warm-up) per size ...", flush=True)
    run = profiler.sweep(args.out, backend=args.backend, world_size=args.world_size, ops=ops,
                         min_bytes=_size(args.min_bytes), max_bytes=_size(args.max_bytes),
                         iters=args.iters, warmup=args.warmup, dtype=args.dtype)
    table = analysis.sweep_table(analysis.load_events(run))
    print(f"#{'op':>15} {'size (B)':>12} {'count':>12} {'type':>9} {'time (us)':>11} "
          f"{'algbw (GB/s)':>13} {'busbw (GB/s)':>13}")
    for r in table.itertuples():
        print(f" {r.op:>15} {r.bytes:>12} {r.count:>12} {r.dtype:>9} {r.time_us:>11.2f} "
              f"{r.algbw_GBps:>13.4f} {r.busbw_GBps:>13.4f}")
    print(f"# busbw: {analysis.BUSBW_DEFINITION}")
    print(f"trace: {run}  (calibrate with: commscope calibrate {run} -o calibration.json)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from commscope.demo import run_demo

    return run_demo(args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="commscope",
        description="Communication profiling for distributed LLM inference on PyTorch.")
    p.add_argument("--version", action="version", version=f"commscope {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    r = sub.add_parser("run", help="trace an unmodified Python program (also under torchrun)",
                       description="Run CMD with every torch.distributed call traced. "
                                   "Example: commscope run --out traces -- torchrun "
                                   "--nproc-per-node 2 infer.py")
    r.add_argument("--out", required=True, help="output folder (one run folder is created in it)")
    r.add_argument("--run-name", help="name of the run folder (default: timestamp + random)")
    r.add_argument("--capture", choices=("default", "full"), default="default",
                   help="'full' also records dispatcher-level collectives (slower)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("schema", help="print the trace schema (columns, units, meaning)")
    s.set_defaults(func=_cmd_schema)

    n = sub.add_parser("nccl-log", help="parse NCCL_DEBUG=INFO logs into Parquet tables",
                       description="Parse NCCL debug logs (plain or gzip; a folder means every "
                                   "file in it) into collectives/communicators/topology/"
                                   "warnings.parquet and print what was recognised.")
    n.add_argument("logs", nargs="+", metavar="LOG")
    n.add_argument("-o", "--out", required=True, help="output folder")
    n.set_defaults(func=_cmd_nccl_log)

    t = sub.add_parser("nccl-tests", help="parse nccl-tests *_perf output into measurements",
                       description="Parse nccl-tests output into one Parquet table of "
                                   "measurements (calibration input).")
    t.add_argument("files", nargs="+", metavar="FILE")
    t.add_argument("-o", "--out", required=True, help="output .parquet file")
    t.set_defaults(func=_cmd_nccl_tests)

    m = sub.add_parser("summary", help="per phase/op/dimension/size table of a trace",
                       description="Calls, total time, p50/p90/p99 latency, median bus "
                                   "bandwidth and share of wall time per (phase, op, pg_dim, "
                                   "pg_size, size bucket).")
    m.add_argument("trace", help="a run folder (or a folder of runs)")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("--top", type=int, default=40, help="rows to print (default 40)")
    m.set_defaults(func=_cmd_summary)

    c = sub.add_parser("calibrate", help="fit a cost model from traces, nccl-tests or tables",
                       description="Fit the piecewise alpha-beta cost model and print its "
                                   "quality (and k-fold held-out error with --holdout K).")
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="commscope trace folders, nccl-tests outputs, .csv/.parquet tables")
    c.add_argument("-o", "--out", required=True, help="calibration JSON to write")
    c.add_argument("--holdout", type=int, default=0, metavar="K", help="k-fold held-out error")
    c.add_argument("--max-pieces", type=int, default=5, help="size ranges per curve (default 5)")
    c.set_defaults(func=_cmd_calibrate)

    def model_args(sp: argparse.ArgumentParser, config: bool = True) -> None:
        sp.add_argument("--model", required=True, help="preset name or a config.json path")
        sp.add_argument("--batch", type=int, default=1)
        sp.add_argument("--prompt", type=int, default=512, help="prompt length (tokens)")
        sp.add_argument("--output", type=int, default=128, help="generated tokens")
        sp.add_argument("--calibration", help="cost model JSON from `commscope calibrate`")
        if config:
            sp.add_argument("--tp", type=int, default=1)
            sp.add_argument("--pp", type=int, default=1)
            sp.add_argument("--dp", type=int, default=1)
            sp.add_argument("--ep", type=int, default=1)
            sp.add_argument("--sp", action="store_true", help="sequence parallelism")
            sp.add_argument("--tp2d-rows", help="2D TP row group sizes, e.g. 4,2")
            sp.add_argument("--tp2d-cols", help="2D TP column group sizes, e.g. 2,2,2")
            sp.add_argument("--pp-sends", choices=("hidden", "hidden+residual"),
                            default="hidden", help="what a PP stage sends (default hidden)")

    pr = sub.add_parser("predict", help="the collectives a configuration must issue",
                        description="Print the predicted per-rank schedule of one prefill and "
                                    "one decode step.")
    model_args(pr)
    pr.set_defaults(func=_cmd_predict)

    co = sub.add_parser("compare", help="a trace against its predicted schedule",
                        description="Predicted vs measured count, bytes and time per (phase, "
                                    "op, pg_dim, bytes).")
    co.add_argument("trace")
    model_args(co)
    co.set_defaults(func=_cmd_compare)

    ad = sub.add_parser("advise", help="rank parallel configurations for N devices",
                        description="Valid configurations ranked by predicted communication "
                                    "time per decoded token and per prefill.")
    ad.add_argument("--devices", type=int, required=True)
    ad.add_argument("--memory-gb", type=float, default=80.0, help="memory per device")
    ad.add_argument("--max-pp", type=int, default=None)
    model_args(ad, config=False)
    ad.set_defaults(func=_cmd_advise)

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

    b = sub.add_parser("bench", help="nccl-tests-like sweep through torch.distributed",
                       description="Sweep collectives over message sizes on spawned ranks, "
                                   "write a commscope trace and print an nccl-tests-style "
                                   "table. This is how you calibrate your own cluster.")
    b.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    b.add_argument("--world-size", type=int, default=2)
    b.add_argument("--ops", default="all_reduce,all_gather,reduce_scatter",
                   help="comma-separated: all_reduce, all_gather, reduce_scatter, all_to_all, "
                        "broadcast, send")
    b.add_argument("--min-bytes", default="1K")
    b.add_argument("--max-bytes", default="4M")
    b.add_argument("--iters", type=int, default=20)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--dtype", default="float32")
    b.add_argument("-o", "--out", required=True, help="output folder for the trace")
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("demo", help="run the end-to-end demo (what `make demo` runs)")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError) as exc:
        print(f"commscope {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
