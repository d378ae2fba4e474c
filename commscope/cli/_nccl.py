"""`commscope nccl-log` and `commscope nccl-tests`: NCCL output into Parquet tables."""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_nccl_log(args: argparse.Namespace) -> int:
    from commscope.profiler import parse_nccl_logs

    log = parse_nccl_logs(args.logs)
    paths = log.write(args.out)
    print(log.summary_text())
    print(f"{len(log.collectives):,} collectives, {len(log.communicators)} communicators, "
          f"{len(log.topology):,} topology rows, {len(log.warnings)} warnings")
    for p in paths:
        print(f"wrote {p}")
    return 0


def _cmd_nccl_tests(args: argparse.Namespace) -> int:
    from commscope.profiler import parse_nccl_tests

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


def register(sub: argparse._SubParsersAction) -> None:
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
