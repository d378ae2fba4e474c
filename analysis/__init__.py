"""commscope.analysis: turn traces into answers.

Public API::

    analysis.load_events(path, *, columns=None, filters=None)
    analysis.load_metadata(path)
"""

from ._load import TraceFormatError, find_part_files, load_events, load_metadata

__all__ = ["load_events", "load_metadata", "find_part_files", "TraceFormatError"]
