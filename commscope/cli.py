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
