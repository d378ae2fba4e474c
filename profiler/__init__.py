"""commscope.profiler: record every communication call of a PyTorch program.

Public API::

    profiler.trace(out_dir, *, run_name=None, tags=None, capture="default", cuda_timing=True)
    profiler.phase(name, step=None)
    profiler.label_group(group, dim)
    profiler.parse_nccl_logs(paths)      # NCCL_DEBUG=INFO logs -> tables
    profiler.parse_nccl_tests(paths)     # nccl-tests *_perf output -> measurements
"""

from ._bench import SWEEP_OPS, sweep
from ._nccl_log import NcclLog, NcclLogError, parse_nccl_logs
from ._nccl_tests import parse_nccl_tests
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
    "parse_nccl_logs",
    "parse_nccl_tests",
    "NcclLog",
    "NcclLogError",
    "sweep",
    "SWEEP_OPS",
]
