"""commscope.profiler: record every communication call of a PyTorch program.

Public API::

    profiler.trace(out_dir, *, run_name=None, tags=None, capture="default", cuda_timing=True)
    profiler.phase(name, step=None)
    profiler.label_group(group, dim)
    profiler.instrument(target, method, *, op, group=None, bytes_of=None)  # custom communicators
    profiler.parse_nccl_logs(paths)      # NCCL_DEBUG=INFO logs -> tables
    profiler.parse_nccl_tests(paths)     # nccl-tests *_perf output -> measurements
    profiler.import_trace(paths, out_dir, *, format="auto", run_name=None)  # Kineto/FR/Inspector
    profiler.sweep(out_dir, ...)         # nccl-tests-like sweep, traced (spawns ranks)

Importing this package does not import torch: the hooks import it when a session opens, and
`sweep` (which runs torch code) is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from ._import import TraceImportError, import_trace
from ._instrument import instrument
from ._nccl_log import NcclLog, NcclLogError, parse_nccl_logs
from ._nccl_tests import parse_nccl_tests
from ._phases import current_phase, label_group, phase
from ._schema import COLUMNS, SCHEMA_VERSION, arrow_schema, schema_markdown
from ._session import TraceSession, trace

__all__ = [
    "trace",
    "phase",
    "label_group",
    "instrument",
    "current_phase",
    "TraceSession",
    "SCHEMA_VERSION",
    "COLUMNS",
    "arrow_schema",
    "schema_markdown",
    "parse_nccl_logs",
    "parse_nccl_tests",
    "NcclLog",
    "NcclLogError",
    "sweep",
    "SWEEP_OPS",
    "import_trace",
    "TraceImportError",
]


def __getattr__(name: str) -> Any:
    if name in ("sweep", "SWEEP_OPS"):
        from . import _bench

        return getattr(_bench, name)
    raise AttributeError(f"module 'commscope.profiler' has no attribute {name!r}")
