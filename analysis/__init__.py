"""commscope.analysis: turn traces into answers.

Public API::

    analysis.load_events(path, *, columns=None, filters=None)
    analysis.load_metadata(path)
    analysis.join_nccl(events, nccl_log)
    analysis.bandwidth(events)            # + algbw_GBps, busbw_GBps (nccl-tests definitions)
    analysis.match_collectives(events)    # one row per collective instance: skew vs transfer
    analysis.collective_waits(events)     # per rank and instance: time waiting for late ranks
    analysis.stragglers(events)           # per rank: arrived last, wait imposed, wait suffered
    analysis.overlap(events)              # async calls: window, exposed, hidden fraction
    analysis.find_mismatches(events)      # first disagreement per group (hangs)
    analysis.summarize(events)            # per phase/op/dim/size: latency percentiles, busbw
"""

from ._bandwidth import BUSBW_DEFINITION, bandwidth, bus_factor
from ._load import TraceFormatError, find_part_files, load_events, load_metadata
from ._matching import collective_waits, match_collectives, stragglers
from ._mismatch import find_mismatches
from ._nccl_join import NcclJoin, join_nccl
from ._overlap import overlap
from ._summary import size_bucket, summarize

__all__ = ["load_events", "load_metadata", "find_part_files", "TraceFormatError", "join_nccl",
           "NcclJoin", "bandwidth", "bus_factor", "BUSBW_DEFINITION", "match_collectives",
           "collective_waits", "stragglers", "overlap", "find_mismatches", "summarize",
           "size_bucket"]
