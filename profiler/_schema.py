"""The commscope trace schema: one row per communication call per rank.

This module is the single source of truth for the columns of a trace; `docs/schema.md` is
generated from it (`python -m commscope.profiler._schema > docs/schema.md`) and a test keeps both in step.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

__all__ = ["SCHEMA_VERSION", "COLUMNS", "Column", "arrow_schema", "schema_markdown", "OPS",
           "SCHEMA_VERSION_KEY", "RUN_ID_KEY", "RANK_KEY", "RECORDED_REQUIRED"]

#: Bump the minor number for added columns, the major one for changed meaning or removed columns.
SCHEMA_VERSION = "1.1"

#: Parquet key-value metadata keys written into every part file.
SCHEMA_VERSION_KEY = b"commscope.schema_version"
RUN_ID_KEY = b"commscope.run_id"
RANK_KEY = b"commscope.rank"

#: Canonical torch-style operation names (the `op` column).
OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "gather", "scatter",
       "all_to_all", "send", "recv", "barrier")


class Column(NamedTuple):
    name: str
    type: pa.DataType
    unit: str
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("run_id", pa.string(), "", "Run identifier, equal on every rank of one run; also the run folder's name."),
    Column("rank", pa.int32(), "", "Global rank of the process that recorded the row (0 without torch.distributed)."),
    Column("world_size", pa.int32(), "", "Size of the default process group (1 without torch.distributed)."),
    Column("host", pa.string(), "", "Host name of the recording process."),
    Column("pid", pa.int32(), "", "Process id of the recording process."),
    Column("tid", pa.int64(), "", "Python thread identifier (threading.get_ident) of the thread that issued the call; the kernel's native id costs a system call per call here."),
    Column("seq", pa.int64(), "", "Per-rank call index, 0-based, in issue order across all groups."),
    Column("pg_name", pa.string(), "", "Process group name as torch.distributed knows it (`group.group_name`; '0' is the default group)."),
    Column("pg_dim", pa.string(), "", "Parallel dimension of the group from `profiler.label_group` ('tp', 'pp', 'dp', 'ep', ...); 'world' for the default group; null if unlabelled."),
    Column("pg_size", pa.int32(), "", "Number of ranks in the process group (n in the bus-bandwidth factors)."),
    Column("pg_ranks", pa.list_(pa.int32()), "", "Global ranks of the group's members, in group-rank order."),
    Column("pg_seq", pa.int64(), "", "Per-group ordinal, 0-based. Collectives: counts collective calls on the group, equal on every member for the same logical collective. Point-to-point: counts calls per (group, source, destination), so the k-th send A->B matches the k-th recv on B from A."),
    Column("op", pa.string(), "", "Operation, torch-style: " + ", ".join(OPS) + "."),
    Column("api", pa.string(), "", "Function that was called, e.g. `all_gather_into_tensor`, `funcol.all_reduce`, `batch_isend_irecv`, `c10d.allreduce_` (full capture)."),
    Column("dtype", pa.string(), "", "Element type, torch name without prefix (float32, bfloat16, ...); null for barrier."),
    Column("count", pa.int64(), "elements", "Per-rank element count as NCCL's API takes it (and NCCL logs print it): the buffer for all_reduce/broadcast/reduce/send/recv, the per-rank send count for all_gather/gather, the per-rank receive count for reduce_scatter/scatter, the per-rank send total for all_to_all."),
    Column("bytes", pa.int64(), "bytes", "nccl-tests size S: count x element size, times pg_size for all_gather, reduce_scatter, gather and scatter (the full array); the per-rank send total for all_to_all. algbw = bytes / time."),
    Column("in_bytes", pa.int64(), "bytes", "Bytes of this rank's input buffer(s)."),
    Column("out_bytes", pa.int64(), "bytes", "Bytes of this rank's output buffer(s)."),
    Column("peer", pa.int32(), "", "Point-to-point: global rank of the other side (destination of a send, source of a recv); null otherwise."),
    Column("root", pa.int32(), "", "Rooted collectives (broadcast, reduce, gather, scatter): global rank of the root; null otherwise."),
    Column("async_op", pa.bool_(), "", "True when the call returned a handle (async_op=True, isend/irecv, batch_isend_irecv, functional collectives)."),
    Column("backend", pa.string(), "", "Backend of the process group (gloo, nccl, fake, ...)."),
    Column("device", pa.string(), "", "Device of the tensors: 'cpu' or 'cuda:N'."),
    Column("t_start_ns", pa.int64(), "ns, epoch", "Wall clock when the call was entered (time.time_ns on the recording rank, not clock-aligned)."),
    Column("t_end_ns", pa.int64(), "ns, epoch", "Wall clock at completion: when a blocking call returned, or when completion of an async call was observed (wait(), is_completed() returning True, wait_tensor). Equals t_return_ns when completion was never observed (see `completion`)."),
    Column("t_return_ns", pa.int64(), "ns, epoch", "Wall clock when the call itself returned (for async calls: end of issue)."),
    Column("t_wait_ns", pa.int64(), "ns, epoch", "Async calls: wall clock when wait() was first entered; null for blocking calls or when never waited. t_end_ns - t_wait_ns is the time blocked in wait (exposed)."),
    Column("completion", pa.string(), "", "How t_end_ns was observed: 'return' (blocking call), 'wait', 'is_completed', 'wait_tensor' (functional collectives), 'unobserved' (async handle never waited on before the trace ended, or let go after too many never-waited handles), 'started' (not completed when the trace was last written: a call that had not returned, t_end_ns and t_return_ns null, or an async call not yet waited on; kept in part-<pid>-inflight.parquet, rewritten at every flush, so a hung call is on disk before a SIGKILL)."),
    Column("gpu_duration_ns", pa.int64(), "ns", "Device time of the call: CUDA-event time between events recorded on the current stream before the call and after its completion (after wait() for async calls), or the communication kernel's duration in an imported GPU trace; null without device timing (CPU tensors, cuda_timing=False)."),
    Column("gpu_start_ns", pa.int64(), "ns, epoch", "Device start of the call on the same clock as t_start_ns (CUDA event or kernel start mapped to this rank's wall clock); null without device timing. Analyses use device times wherever a row has them."),
    Column("gpu_end_ns", pa.int64(), "ns, epoch", "Device end of the call, same clock as gpu_start_ns; null without device timing."),
    Column("gpu_hidden_ns", pa.int64(), "ns", "Part of the call's device time during which compute kernels ran on other streams of the same device (hidden communication; exposed = gpu_duration_ns - gpu_hidden_ns); null where compute kernels are not known (hooks), set by the Kineto importer."),
    Column("source", pa.string(), "", "Where the row came from: 'hooks' (recorded live), 'engine' (an inference engine's communicator), 'kineto' (torch.profiler trace), 'flight_recorder', 'nccl_inspector' (imported)."),
    Column("cuda_graph", pa.string(), "", "Null for eager calls; 'capture' for a call recorded while a CUDA graph was being captured (the graph's template, not executed then), 'replay' for a row emitted when the graph was replayed."),
    Column("phase", pa.string(), "", "Innermost `profiler.phase` name active when the call was issued; null outside any phase."),
    Column("phase_path", pa.string(), "", "All active phase names, outermost first, joined by '/'."),
    Column("step", pa.int64(), "", "Step of the innermost phase that has one; null if none."),
    Column("capture", pa.string(), "", "Which mechanism recorded the row: 'hook' (wrapped Python API) or 'dispatch' (capture='full' dispatcher mode)."),
    Column("error", pa.string(), "", "Null unless the call raised: exception type and message. The row is recorded and the exception re-raised unchanged."),
)


#: Columns the recording writer fills on every row by construction (identity, values looked up
#: per API or group, extra fields with defaults): recorded part files store them as required
#: Parquet columns. Everything else, and every column of imported parts, is optional.
RECORDED_REQUIRED = frozenset({"run_id", "rank", "world_size", "host", "pid", "pg_size", "op",
                               "api", "capture", "completion", "async_op", "device", "source"})


def arrow_schema(metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    """The Arrow schema of a trace part file, with optional key-value metadata."""
    meta = {SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()}
    meta.update(metadata or {})
    return pa.schema([pa.field(c.name, c.type) for c in COLUMNS], metadata=meta)


def schema_markdown() -> str:
    """The column reference as a Markdown table (docs/schema.md is generated from this)."""
    lines = [
        "# Trace schema",
        "",
        f"Schema version **{SCHEMA_VERSION}** (stored in every Parquet part file under the key "
        f"`{SCHEMA_VERSION_KEY.decode()}`). Generated from `profiler/_schema.py` (`commscope.profiler._schema`); do not edit by hand.",
        "",
        "One row per communication call per rank. A run is a folder `<out_dir>/<run_id>/` holding one",
        "folder per rank, `rank_<NNNNN>/`, with Parquet part files `part-<pid>-<NNNNN>.parquet` and",
        "`metadata.json` (run metadata of that rank).",
        "",
        "Bandwidth conventions follow nccl-tests: algbw = bytes / time, busbw = algbw x factor with",
        "factor 2(n-1)/n for all_reduce, (n-1)/n for all_gather, reduce_scatter and all_to_all, 1 for",
        "broadcast, reduce and send/recv; n = pg_size; 1 GB = 1e9 bytes.",
        "",
        "Every column may be null in general; part files recorded by the hooks store "
        + ", ".join(f"`{c.name}`" for c in COLUMNS if c.name in RECORDED_REQUIRED)
        + " as required Parquet columns (never null there); imported parts store every column"
        " as optional (an import may not know the host, pid or capture). A folder holding both"
        " reads as one: `analysis.Trace` merges the part schemas, and a reader that takes the"
        " first file's schema (pyarrow's dataset discovery) may label those fields `not null`"
        " while reading the values as stored (such a table cannot be written back to Parquet"
        " as it is: cast it to `arrow_schema()` first).",
        "",
        "| column | type | unit | meaning |",
        "|---|---|---|---|",
    ]
    for c in COLUMNS:
        lines.append(f"| `{c.name}` | {c.type} | {c.unit} | {c.meaning} |")
    lines += [
        "",
        "## Run metadata (`rank_<NNNNN>/metadata.json`)",
        "",
        "| key | meaning |",
        "|---|---|",
        "| `schema_version` | as above |",
        "| `run_id`, `run_name`, `rank`, `world_size`, `host`, `pid` | identity of the recording process |",
        "| `tags` | the `tags` passed to `profiler.trace` |",
        "| `versions` | python, torch, commscope, CUDA and NCCL (when present) |",
        "| `gpus` | from pynvml: name, uuid, PCI bus id, memory, and NVLink links (state, remote bus id) per GPU; `{\"available\": false, \"reason\": ...}` without a GPU |",
        "| `env` | every `NCCL_*` and `TORCH_NCCL_*` variable, plus the launcher's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` |",
        "| `clock_offset_ns` | this rank's wall clock minus rank 0's, estimated when tracing starts (median over rounds of barrier-released timestamps); `analysis.load_events` subtracts it |",
        "| `clock_offset_spread_ns` | max - min of the per-round estimates: an upper bound on the offset's error |",
        "| `capture`, `cuda_timing` | the options the trace ran with |",
        "| `t_open_ns`, `t_close_ns` | when tracing started and stopped on this rank |",
        "| `events_written`, `parts` | totals at close |",
        "| `flush_events`, `flush_interval_s` | the buffer bound: a SIGKILL loses at most the events of the last `flush_events` calls or `flush_interval_s` seconds |",
        "| `clock_sync` | how the clock offset was obtained (same host, store barrier, or for imports the alignment of matched collectives' device ends) |",
        "| `source`, `import` | imported datasets: where the rows came from (`kineto`, `flight_recorder`, `nccl_inspector`) and the import's format, files and skipped files |",
        "| `import_notes` | imported datasets: assumptions and gaps of the import (e.g. kernels without metadata, CUDA-graph kernels, empty dumps) |",
        "| `gpu_busy` | Kineto imports: GPU busy and compute time per step/phase (the denominator of exposed communication) |",
        "| `kineto`, `flight_recorder`, `nccl_inspector` | format-specific details of an import (Flight Recorder: dump version and per-group status) |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(schema_markdown(), end="")
