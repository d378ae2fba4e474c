"""commscope.analysis: turn traces into answers.

Public API::

    analysis.load_events(path, *, columns=None, filters=None)
    analysis.load_metadata(path)
    analysis.join_nccl(events, nccl_log)
"""

from ._load import TraceFormatError, find_part_files, load_events, load_metadata
from ._nccl_join import NcclJoin, join_nccl

__all__ = ["load_events", "load_metadata", "find_part_files", "TraceFormatError", "join_nccl",
           "NcclJoin"]
