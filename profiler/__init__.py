"""commscope.profiler: record every communication call of a PyTorch program.

Public API::

    profiler.trace(out_dir, *, run_name=None, tags=None, capture="default", cuda_timing=True)
    profiler.phase(name, step=None)
    profiler.label_group(group, dim)
"""

from ._phases import current_phase, label_group, phase
from ._schema import COLUMNS, SCHEMA_VERSION, arrow_schema, schema_markdown
from ._session import TraceSession, trace

__all__ = [
    "trace",
    "phase",
    "label_group",
    "current_phase",
    "TraceSession",
    "SCHEMA_VERSION",
    "COLUMNS",
    "arrow_schema",
    "schema_markdown",
]
