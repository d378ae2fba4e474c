"""The `commscope` command line. Each subcommand is a thin call into the public Python API;
one module per group of subcommands registers its own parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from commscope._version import __version__

from . import _bench, _characterize, _io, _model, _nccl, _run, _traces

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="commscope",
        description="Communication profiling for distributed LLM inference on PyTorch.")
    p.add_argument("--version", action="version", version=f"commscope {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for module in (_run, _nccl, _traces, _model, _bench, _characterize, _io):
        module.register(sub)
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
