"""commscope: communication profiling, modelling and reporting for distributed LLM inference.

One import package with three parts, laid out by concern::

    commscope.profiler    records (hooks on torch.distributed, importers, NCCL log parsing)
    commscope.analysis    computes (bandwidth, matching, stragglers, cost models, schedules)
    commscope.dashboards  renders (offline HTML reports)

The everyday API is re-exported here: ``commscope.trace``, ``commscope.phase``,
``commscope.label_group``, ``commscope.load_events``, ``commscope.write_report``. They are
resolved on first use, so ``import commscope`` (and ``commscope.analysis``) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# name -> subpackage that defines it (the same object is returned, not a copy).
_EXPORTS = {
    "trace": "profiler",
    "phase": "profiler",
    "label_group": "profiler",
    "load_events": "analysis",
    "Trace": "analysis",
    "write_report": "dashboards",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'commscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
