"""The optional compiled speedups, or None: `native("_chook")`.

The C extensions are built at install when a C compiler is present (pyproject's ext-modules,
`optional`); the C++ tensor reader `_ctensor` after torch is installed (`_build_ctensor`, run by
`make setup`). Without them the pure-Python paths run with the same results.
COMMSCOPE_NO_NATIVE=1 forces the Python paths (benchmarks and tests compare the two).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["native"]

_DISABLED = os.environ.get("COMMSCOPE_NO_NATIVE", "") not in ("", "0")


def native(name: str) -> ModuleType | None:
    """The compiled module `commscope.profiler.<name>`, or None (not built, or disabled)."""
    if _DISABLED:
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None
