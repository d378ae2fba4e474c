"""commscope.analysis: turn traces into answers.

Public API::

    analysis.Trace(path)                  # open once: .summary() .stragglers() .match() .waits()
                                          #   .overlap() .mismatches() .events() .sql()
    analysis.load_events(path, *, columns=None, filters=None)
    analysis.load_metadata(path)
    analysis.join_nccl(events, nccl_log)
    analysis.bandwidth(events)            # + algbw_GBps, busbw_GBps (nccl-tests definitions)
    analysis.match_collectives(events)    # one row per collective instance: skew vs transfer
    analysis.collective_waits(events)     # per rank and instance: time waiting for late ranks
    analysis.stragglers(events)           # per rank: arrived last, wait imposed, wait suffered
    analysis.overlap(events)              # async calls: window, exposed, hidden fraction
    analysis.find_mismatches(events)      # first disagreement per group (hangs)
    analysis.attribute_hang(path)         # Flight Recorder import: ranks that never issued/completed
    analysis.exposed_communication(events)  # GPU comm hidden vs exposed per rank and step
    analysis.summarize(events)            # per phase/op/dim/size: latency percentiles, busbw
    analysis.load_measurements(paths)     # calibration input (traces, nccl-tests, tables)
    analysis.trace_measurements(events)   # calibration input from events (per run, phase)
    analysis.CostModel.fit(measurements)  # piecewise alpha-beta; .predict/.save/.load/.quality
    analysis.predict_schedule(model, workload, config, cost_model)
    analysis.compare(events, model, workload, config, cost_model)
    analysis.advise(devices, model, workload, cost_model)
    analysis.advise_tp2d(devices, model, workload, cost_models)  # 2D TP layouts, uneven groups
"""

from ._advise2d import advise_tp2d
from ._bandwidth import BUSBW_DEFINITION, bandwidth, bus_factor
from ._costmodel import CostModel, CostModelWarning, nsteps
from ._exposed import exposed_communication
from ._hang import attribute_hang
from ._load import TraceFormatError, find_part_files, load_events, load_metadata
from ._matching import collective_waits, match_collectives, stragglers
from ._measurements import load_measurements, trace_measurements
from ._mismatch import find_mismatches
from ._nccl_join import NcclJoin, join_nccl
from ._overlap import overlap
from ._schedule import advise, compare, predict_schedule
from ._summary import size_bucket, summarize
from ._sweep import sweep_table
from ._trace import Trace
from ._workload import PRESETS, TP2D, ModelSpec, ParallelConfig, Workload

__all__ = ["load_events", "load_metadata", "find_part_files", "TraceFormatError", "join_nccl",
           "NcclJoin", "bandwidth", "bus_factor", "BUSBW_DEFINITION", "match_collectives",
           "collective_waits", "stragglers", "overlap", "find_mismatches", "summarize",
           "size_bucket", "load_measurements", "trace_measurements", "CostModel",
           "CostModelWarning", "nsteps",
           "ModelSpec", "Workload", "ParallelConfig", "TP2D", "PRESETS", "predict_schedule",
           "compare", "advise", "advise_tp2d", "sweep_table", "Trace",
           "exposed_communication", "attribute_hang"]
