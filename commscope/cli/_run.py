"""`commscope run` (zero-code tracing of a program) and `commscope schema`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def _cmd_run(args: argparse.Namespace) -> int:
    from commscope.profiler._autorun import BOOTSTRAP_DIR

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
    from commscope.profiler import schema_markdown

    print(schema_markdown(), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
