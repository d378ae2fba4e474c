"""torch.profiler (Kineto) Chrome traces -> one commscope row per communication kernel.

What a row knows depends on the trace's generation (see shared notes, gpu-artifacts A.4-A.7):
collective metadata copied onto the kernel (2024+), or on its `record_param_comms` CPU op, or
nothing but the CPU op's input dims (2023 and earlier, vLLM custom/symmetric-memory kernels).
Kernels are tied to CPU ops through the launch's CUPTI correlation id: the runtime launch event
sits inside the CPU ops that issued it on the same thread. Kernels replayed from a CUDA graph
link only to the graph launch; they are still one row each, with what the kernel name says.
"""

from __future__ import annotations

import bisect
import re
from typing import IO, Any, NamedTuple

import numpy as np

from ._nccl_formats import GATHER_LIKE, OP_NAMES
from ._trace_json import read_chrome_trace

__all__ = ["KinetoRank", "read_kineto", "comm_kernel_op", "cpu_op_name_to_op", "C10_DTYPES"]

#: c10 ScalarType names (collective metadata) and profiler `Input type` names -> (torch name, bytes).
C10_DTYPES: dict[str, tuple[str, int]] = {
    "Float": ("float32", 4), "float": ("float32", 4), "BFloat16": ("bfloat16", 2),
    "c10::BFloat16": ("bfloat16", 2), "Half": ("float16", 2), "c10::Half": ("float16", 2),
    "Double": ("float64", 8), "double": ("float64", 8), "Long": ("int64", 8),
    "long int": ("int64", 8), "long": ("int64", 8), "Int": ("int32", 4), "int": ("int32", 4),
    "Short": ("int16", 2), "short int": ("int16", 2), "Char": ("int8", 1),
    "signed char": ("int8", 1), "Byte": ("uint8", 1), "unsigned char": ("uint8", 1),
    "Bool": ("bool", 1), "bool": ("bool", 1), "Float8_e4m3fn": ("float8_e4m3fn", 1),
    "c10::Float8_e4m3fn": ("float8_e4m3fn", 1), "Float8_e5m2": ("float8_e5m2", 1),
    "c10::Float8_e5m2": ("float8_e5m2", 1),
}
_ESIZE = {name: size for name, size in C10_DTYPES.values()}
_NCCL_KERNEL_RE = re.compile(r"^nccl(?:Dev)?Kernel_([A-Za-z]+)")
# Communication kernels that are not NCCL's (gpu-artifacts A.6): torch symmetric memory,
# vLLM/SGLang custom all-reduce, one-/two-shot all-reduce.
_OTHER_COMM_RE = re.compile(
    r"(multimem_\w*all_reduce|one_shot_all_reduce|two_shot_all_reduce|cross_device_reduce_\dstage"
    r"|multimem_\w*all_gather|quickreduce\w*|allreduce_kernel)")
# CPU ops that issue communication: c10d ops, their profiling ranges and framework wrappers.
_COMM_CPU_RE = re.compile(r"^(record_param_comms$|c10d::|nccl:|xccl:|symm_mem::|_C_custom_ar::"
                          r"|vllm::all_|vllm::reduce_scatter|sgl_kernel::all_reduce)")
_CPU_OP = [  # substring of a CPU op name -> op (first match wins; order matters)
    ("reduce_scatter", "reduce_scatter"), ("allreduce", "all_reduce"),
    ("all_reduce", "all_reduce"), ("alltoall", "all_to_all"), ("all_to_all", "all_to_all"),
    ("allgather", "all_gather"), ("all_gather", "all_gather"), ("broadcast", "broadcast"),
    ("barrier", "barrier"), ("gather", "gather"), ("scatter", "scatter"), ("reduce", "reduce"),
    ("send", "send"), ("recv", "recv")]
_GRAPH_LAUNCH = ("cudaGraphLaunch", "hipGraphLaunch", "cuGraphLaunch")


def comm_kernel_op(name: str) -> tuple[bool, str | None]:
    """(is a communication kernel, op from the name or None when only metadata can tell)."""
    m = _NCCL_KERNEL_RE.match(name)
    if m:
        return True, OP_NAMES.get(m.group(1))   # SendRecv / Generic: from the CPU op
    m = _OTHER_COMM_RE.search(name)
    if m:
        return True, "all_gather" if "all_gather" in m.group(1) else "all_reduce"
    return False, None


def cpu_op_name_to_op(name: str) -> str | None:
    """The op a c10d / framework op name or profiling name stands for (substring match)."""
    low = name.lower()
    return next((op for key, op in _CPU_OP if key in low), None)


class KinetoRank(NamedTuple):
    rank: int | None
    world_size: int | None
    top: dict[str, Any]              # top-level keys (distributedInfo, baseTimeNanoseconds ...)
    rows: list[dict[str, Any]]       # one row per communication kernel (schema column names)
    busy: list[dict[str, Any]]       # GPU busy time per step and device
    notes: list[str]
    kernels: int                     # all kernels in the trace
    graph_launches: int
    capture_calls: int               # *StreamGetCaptureInfo* calls: a graph-capture trace


class _Collect:
    """Keeps only what the import needs from each event batch (bounded memory)."""

    def __init__(self) -> None:
        self.k_ts: list = []
        self.k_dur: list = []
        self.k_dev: list = []
        self.k_stream: list = []
        self.k_corr: list = []
        self.k_comm: list = []           # index into self.comm or -1
        self.comm: list = []             # (name, op-from-name, args)
        self.launch: dict = {}           # correlation -> (ts, pid, tid, is_graph)
        self.cpu: dict = {}              # (pid, tid) -> list of (ts, end, name, args)
        self.steps: list = []            # (ts, end, step)
        self.graph_launches = 0
        self.capture_calls = 0

    def __call__(self, batch: list) -> None:
        for e in batch:
            cat = e.get("cat")
            if cat == "kernel":
                args = e.get("args") or {}
                name = e.get("name") or ""
                is_comm, op = comm_kernel_op(name)
                self.k_ts.append(e.get("ts", 0))
                self.k_dur.append(e.get("dur", 0))
                self.k_dev.append(args.get("device", e.get("pid")))
                self.k_stream.append(args.get("stream", e.get("tid")))
                self.k_corr.append(args.get("correlation"))
                if is_comm:
                    self.k_comm.append(len(self.comm))
                    self.comm.append((name, op, args))
                else:
                    self.k_comm.append(-1)
            elif cat in ("cuda_runtime", "cuda_driver"):
                name = e.get("name") or ""
                if "Launch" in name:
                    is_graph = name.startswith(_GRAPH_LAUNCH)
                    self.graph_launches += is_graph
                    corr = (e.get("args") or {}).get("correlation")
                    self.launch[corr] = (e.get("ts", 0), e.get("pid"), e.get("tid"), is_graph)
                elif "GetCaptureInfo" in name:
                    self.capture_calls += 1
            elif cat in ("cpu_op", "user_annotation"):
                name = e.get("name") or ""
                if _COMM_CPU_RE.match(name):
                    ts = e.get("ts", 0)
                    self.cpu.setdefault((e.get("pid"), e.get("tid")), []).append(
                        (ts, ts + e.get("dur", 0), name, e.get("args") or {}))
                elif name.startswith("ProfilerStep#"):
                    ts = e.get("ts", 0)
                    try:
                        self.steps.append((ts, ts + e.get("dur", 0), int(name[13:])))
                    except ValueError:
                        pass


def _to_ns(us: list, base_ns: int) -> np.ndarray:
    """Microsecond timestamps (ints, or floats with ns decimals) -> int64 ns, exact for ints."""
    a = np.nan_to_num(np.asarray(us, dtype=np.float64))
    whole = np.floor(a)
    return (whole.astype(np.int64) * 1000 + np.round((a - whole) * 1000).astype(np.int64)
            + base_ns)


def _chain(c: _Collect, starts: dict, launch: tuple | None) -> list:
    """CPU comm ops enclosing the launch on its thread, innermost first."""
    if launch is None:
        return []
    ts, pid, tid, _ = launch
    ops = c.cpu.get((pid, tid))
    if not ops:
        return []
    i = bisect.bisect_right(starts[(pid, tid)], ts)
    out = []
    # Ops on one thread nest, so the enclosing ones are among the latest that started before
    # the launch; 64 steps back covers any realistic nesting with siblings in between.
    for j in range(i - 1, max(-1, i - 65), -1):
        if ops[j][1] >= ts:
            out.append(ops[j])
    return out


def _dims_count(dims: Any) -> int | None:
    if isinstance(dims, list) and dims and all(isinstance(x, int) for x in dims):
        return int(np.prod(dims, dtype=np.int64))
    return None


def _bytes_from_cpu(chain: list) -> tuple[int | None, str | None]:
    """(count, dtype) from the input dims of the CPU ops around the kernel (no metadata)."""
    for _ts, _end, name, args in chain:
        dims = args.get("Input Dims") or []
        types = args.get("Input type") or []
        # c10d::alltoall_base_ / _allgather_base_ take (output, input): the input is second.
        idx = 1 if name.startswith("c10d::") and "_base_" in name else 0
        if len(dims) > idx and len(types) > idx and types[idx] in C10_DTYPES:
            n = _dims_count(dims[idx])
            if n is not None:
                return n, types[idx]
    return None, None


def _parse_ranks(text: Any) -> list[int] | None:
    if isinstance(text, list):
        return [int(x) for x in text]
    if not isinstance(text, str) or "..." in text:
        return None
    try:
        return [int(x) for x in text.strip("[] ").split(",") if x.strip()]
    except ValueError:
        return None


def _row(c: _Collect, k: int, starts: dict, pg_config: dict, world: int | None) -> dict:
    name, op, kargs = c.comm[c.k_comm[k]]
    launch = c.launch.get(c.k_corr[k])
    chain = _chain(c, starts, launch)
    md = kargs if "Collective name" in kargs else next(
        (a for _t, _e, _n, a in chain if a.get("Collective name") not in (None, "wait")), None)
    row: dict[str, Any] = {"kernel": name, "cuda_graph": None, "api": None, "link": "kernel"}
    if launch is not None and launch[3]:
        row["cuda_graph"] = "replay"
    if chain:
        outer = chain[-1]
        row.update(host_ts=outer[0], host_end=outer[1], api=outer[2], link="cpu_op")
    elif launch is not None:
        row.update(host_ts=launch[0], host_end=launch[0], link="graph_launch" if launch[3]
                   else "launch")
    if md is not None:
        op = cpu_op_name_to_op(str(md["Collective name"])) or op
        dt = C10_DTYPES.get(str(md.get("dtype")))
        n_in, n_out = md.get("In msg nelems"), md.get("Out msg nelems")
        size = md.get("Group size")
        row.update(pg_name=str(md.get("Process Group Name", "0")), pg_size=size,
                   pg_ranks=_parse_ranks(md.get("Process Group Ranks")),
                   pg_desc=md.get("Process Group Description"), pg_seq=md.get("Seq"))
        count = n_out if op in ("reduce_scatter", "scatter", "recv") else n_in
        esize = dt[1] if dt else None
        row.update(dtype=dt[0] if dt else None, count=count,
                   in_bytes=n_in * esize if esize and n_in is not None else None,
                   out_bytes=n_out * esize if esize and n_out is not None else None)
        row["metadata"] = "kernel" if md is kargs else "record_param_comms"
    else:
        if op is None:
            op = next((o for o in (cpu_op_name_to_op(n) for _t, _e, n, _a in chain) if o), None)
        count, tname = _bytes_from_cpu(chain)
        dt = C10_DTYPES.get(tname) if tname else None
        row.update(dtype=dt[0] if dt else None, count=count,
                   in_bytes=count * dt[1] if dt and count is not None else None,
                   out_bytes=None, metadata="input_dims" if count is not None else "none")
        fw = next((n for _t, _e, n, _a in reversed(chain) if not n.startswith(
            ("c10d::", "record_param_comms", "nccl:"))), None)
        if fw is not None:      # vLLM/SGLang/symm-mem: the framework's TP group, unnamed
            row.update(pg_name=fw, pg_size=world, pg_ranks=None, pg_dim="tp")
        else:                   # old c10d traces name no group: assume the default one
            row.update(pg_name="0", pg_size=world,
                       pg_ranks=list(range(world)) if world else None)
        row.setdefault("pg_seq", None)
    if row.get("pg_ranks") is None and row.get("pg_name") in pg_config:
        row["pg_ranks"] = pg_config[row["pg_name"]].get("ranks")
    row["op"] = op
    esize = _ESIZE.get(row.get("dtype"))
    n = row.get("pg_size") or 1
    row["bytes"] = (row["count"] * esize * (n if op in GATHER_LIKE else 1)
                    if row.get("count") is not None and esize else None)
    return row


def _union_overlap(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """For each interval [a0, a1): length covered by the union of intervals [b0, b1)."""
    if len(b0) == 0 or len(a0) == 0:
        return np.zeros(len(a0), np.int64)
    order = np.argsort(b0, kind="stable")
    s, e = b0[order], b1[order]
    run_end = np.maximum.accumulate(e)
    new = np.r_[True, s[1:] > run_end[:-1]]        # start of a merged block
    starts = s[new]
    ends = np.r_[run_end[np.flatnonzero(new)[1:] - 1], run_end[-1]]
    cum = np.r_[0, np.cumsum(ends - starts)]

    def covered(t: np.ndarray) -> np.ndarray:       # union length in (-inf, t)
        i = np.searchsorted(starts, t, side="right")
        prev = np.maximum(i - 1, 0)
        part = np.where(i > 0, np.clip(t - starts[prev], 0, ends[prev] - starts[prev]), 0)
        return cum[prev] * (i > 0) + part

    return covered(a1) - covered(a0)


def read_kineto(fh: IO[str]) -> KinetoRank:
    """Stream one rank's Kineto trace; comm rows, GPU busy time and hidden communication."""
    c = _Collect()
    top = read_chrome_trace(fh, c)
    info = top.get("distributedInfo") or {}
    rank, world = info.get("rank"), info.get("world_size")
    rank = int(rank) if rank is not None else None
    world = int(world) if world is not None else None
    pg_config = {str(p.get("pg_name")): p for p in info.get("pg_config") or []}
    base = int(top.get("baseTimeNanoseconds") or 0)
    notes: list[str] = []
    nk = len(c.k_ts)
    k0 = _to_ns(c.k_ts, base)
    kdur = np.round(np.asarray(c.k_dur, np.float64) * 1000).astype(np.int64)
    k1 = k0 + kdur
    dev = np.asarray([int(d) if d is not None else -1 for d in c.k_dev], np.int64)
    stream = np.asarray([int(s) if isinstance(s, (int, float)) else -1 for s in c.k_stream],
                        np.int64)
    is_comm = np.asarray(c.k_comm, np.int64) >= 0 if nk else np.zeros(0, bool)
    for ops in c.cpu.values():
        ops.sort(key=lambda o: o[0])
    starts = {key: [o[0] for o in ops] for key, ops in c.cpu.items()}
    comm_idx = np.flatnonzero(is_comm)
    rows = [_row(c, int(k), starts, pg_config, world) for k in comm_idx]
    # Hidden = comm kernel time covered by compute kernels on other streams of the device.
    hidden = np.zeros(len(comm_idx), np.int64)
    for d in np.unique(dev[comm_idx]) if len(comm_idx) else []:
        for s in np.unique(stream[comm_idx][dev[comm_idx] == d]):
            sel = comm_idx[(dev[comm_idx] == d) & (stream[comm_idx] == s)]
            comp = (~is_comm) & (dev == d) & (stream != s)
            hidden[np.isin(comm_idx, sel)] = _union_overlap(k0[sel], k1[sel], k0[comp], k1[comp])
    # Step of each kernel: the ProfilerStep# window its launch (or itself) falls in.
    launch_ts = [c.launch.get(x, (None,))[0] for x in c.k_corr]
    lts = _to_ns([t if t is not None else np.nan for t in launch_ts], base) if nk else k0
    lts = np.where(np.isnan(np.asarray(launch_ts, np.float64)), k0, lts) if nk else lts
    step = np.full(nk, -1, np.int64)
    for s0, s1, n in c.steps:
        w0, w1 = _to_ns([s0, s1], base)
        step[(lts >= w0) & (lts < w1)] = n
    busy = []
    for d in np.unique(dev):
        for n in np.unique(step):
            sel = (dev == d) & (step == n)
            if not sel.any():
                continue
            lo, hi = int(k0[sel].min()), int(k1[sel].max())
            union = int(_union_overlap(np.array([lo]), np.array([hi]), k0[sel], k1[sel])[0])
            comm_sel = sel & is_comm
            busy.append({"step": int(n) if n >= 0 else None, "phase": None, "device": int(d),
                         "gpu_busy_ns": union, "gpu_window_ns": hi - lo,
                         "kernels": int(sel.sum()), "comm_kernels": int(comm_sel.sum())})
    if len(comm_idx):
        # Plain Python values only: this runs in forked workers, which must not touch pandas
        # or Arrow (their thread pools are not fork-safe); the parent builds the DataFrame.
        has = [r.get("host_ts") is not None for r in rows]
        t0 = _to_ns([r.get("host_ts") or 0 for r in rows], base)
        t1 = _to_ns([r.get("host_end") or 0 for r in rows], base)
        for i, (r, k) in enumerate(zip(rows, comm_idx)):
            r.update(gpu_start_ns=int(k0[k]), gpu_end_ns=int(k1[k]),
                     gpu_duration_ns=int(kdur[k]), gpu_hidden_ns=int(hidden[i]),
                     device=f"cuda:{int(dev[k])}", stream=int(stream[k]),
                     step=int(step[k]) if step[k] >= 0 else None,
                     t_start_ns=int(t0[i]) if has[i] else int(k0[k]),
                     t_end_ns=int(t1[i]) if has[i] else int(k1[k]))
            r.pop("host_ts", None)
            r.pop("host_end", None)
        unlinked = sum(r["link"] == "kernel" for r in rows)
        if unlinked:
            notes.append(f"{unlinked} communication kernels have no launch in the trace "
                         "(launched before the profiler window or events dropped)")
    elif nk:
        notes.append(f"no communication kernels among {nk} kernels"
                     + (f" ({c.graph_launches} CUDA graph launches)" if c.graph_launches else ""))
    else:
        notes.append("no GPU kernels in the trace (CPU-only profile)")
    return KinetoRank(rank, world, top, rows, busy, notes, nk, c.graph_launches, c.capture_calls)
