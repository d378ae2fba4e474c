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
    rc = _run_forwarding_signals(cmd, env)
    created = sorted(set(os.listdir(out)) - before)
    for name in created:
        print(f"commscope: trace written to {os.path.join(out, name)}", file=sys.stderr)
    if not created:
        print(f"commscope: the command recorded no communication (nothing under {out})",
              file=sys.stderr)
    return rc


_FORWARDED = (signal.SIGINT, signal.SIGTERM)
_SI_KERNEL = 0x80  # siginfo si_code of a signal the kernel generated (a terminal's Ctrl-C)


def _run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    """Run `cmd` and return its exit status; SIGINT/SIGTERM sent to this process are passed on
    so that the program can flush its trace, unless the child already got the same signal.

    A terminal's Ctrl-C (or Ctrl-\\) is sent by the kernel to the whole foreground process group,
    which includes the child (it shares ours): forwarding it again would interrupt the child
    twice and can abort its own clean-up. Such signals are recognised by their siginfo (code
    SI_KERNEL); a signal sent with kill() to this process is forwarded.
    """
    # Signals stay blocked here and are taken with sigtimedwait (which reports who sent them);
    # the child starts with them unblocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    try:
        proc = subprocess.Popen(
            cmd, env=env,
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED))
        while True:
            info = signal.sigtimedwait(_FORWARDED, 0.2)
            if info is None:
                if proc.poll() is not None:
                    return proc.returncode
                continue
            if info.si_code == _SI_KERNEL and os.getpgid(proc.pid) == os.getpgrp():
                continue  # from the terminal to our process group: the child has it too
            try:
                proc.send_signal(info.si_signo)
            except ProcessLookupError:
                pass
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)


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
