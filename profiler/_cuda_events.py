"""CUDA events around calls on CUDA tensors, and their resolution into device times.

Events are recorded on the current stream before a call and after its completion, taken from a
per-device pool (no `torch.cuda.Event` allocation per call once warm), and resolved at flush
time without synchronising the device (an unfinished pair waits for the next flush, except at
the final one); resolved events go back to the pool.

Device times on the host clock: once per device, after one synchronize, a reference event is
recorded and the host wall clock taken around its completion (`ref_host_ns`). An event's time
on the rank's wall clock is then ``ref_host_ns + elapsed(ref, event)``, the same clock as
`t_start_ns` (`gpu_times_ns` does this arithmetic; it is plain integers, tested without a GPU).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._rows import R, X

__all__ = ["start_event", "end_event", "resolve_gpu_times", "cuda_available", "gpu_times_ns",
           "EventPool", "POOL"]

_POOL_MAX = 4096  # idle events kept per device


class EventPool:
    """Timing events per device, reused once resolved; and each device's reference event."""

    def __init__(self) -> None:
        self._free: dict[int, list] = {}
        self.refs: dict[int, tuple[Any, int]] = {}  # device index -> (ref event, ref_host_ns)
        self.lock = threading.Lock()  # resolution of shared rows: one thread at a time
        self.created = 0  # events allocated so far (the pool's misses)

    def get(self, device: int) -> Any:
        free = self._free.get(device)
        if free:
            try:
                return free.pop()
            except IndexError:  # emptied by another thread meanwhile
                pass
        import torch

        self.created += 1
        return torch.cuda.Event(enable_timing=True)

    def put(self, device: int, ev: Any) -> None:
        free = self._free.setdefault(device, [])
        if len(free) < _POOL_MAX:
            free.append(ev)

    def reference(self, device: int) -> tuple[Any, int]:
        """(ref event, its host wall-clock time in ns) of `device`, made on first use."""
        ref = self.refs.get(device)
        if ref is None:
            import torch

            with torch.cuda.device(device):
                torch.cuda.synchronize()  # an empty queue: the event completes when recorded
                ev = torch.cuda.Event(enable_timing=True)
                before = time.time_ns()
                ev.record()
                ev.synchronize()
                after = time.time_ns()
            # The event ran between the two host stamps: the midpoint errs by at most half.
            ref = self.refs.setdefault(device, (ev, (before + after) // 2))
        return ref


POOL = EventPool()


def start_event(tensor: Any) -> Any:
    """A CUDA event recorded now on the current stream, or None for a CPU call."""
    if tensor is None or not tensor.is_cuda:
        return None
    device = tensor.device.index
    if device not in POOL.refs:
        POOL.reference(device)
    ev = POOL.get(device)
    ev.record()
    return ev


def end_event(row: list) -> None:
    """Record the end event of `row` (whose X.GPU holds [start, None])."""
    pair = row[R.X][X.GPU]
    pair[1] = ev = POOL.get(pair[0].device.index)
    ev.record()


def gpu_times_ns(ref_host_ns: int, start_after_ref_ms: float, duration_ms: float
                 ) -> tuple[int, int, int]:
    """(gpu_start_ns, gpu_end_ns, gpu_duration_ns) on the host wall clock, from CUDA's
    millisecond elapsed times: reference -> start event, and start -> end event."""
    start = ref_host_ns + int(round(start_after_ref_ms * 1e6))
    duration = int(round(duration_ms * 1e6))
    return start, start + duration, duration


def resolve_gpu_times(rows: list, final: bool) -> list:
    """Replace CUDA event pairs by (start_ns, end_ns, duration_ns) where resolvable; return the
    rows still waiting on the GPU.

    Never synchronises the device: an unfinished event pair is carried to the next flush, except
    at the final flush, where each remaining end event is waited for once.
    """
    waiting = []
    for row in rows:
        x = row[R.X]
        if x is None or not isinstance(x[X.GPU], list):
            continue
        with POOL.lock:  # rows are shared between sessions: resolve each pair once
            pair = x[X.GPU]
            if not isinstance(pair, list):
                continue
            if len(pair) == 3:  # shared with a row resolved before (a graph replay's rows)
                x[X.GPU] = pair[2]
                continue
            start, end = pair
            if end is None:  # async call never waited: no end event on the stream
                x[X.GPU] = None
                continue
            if not end.query():
                if not final:
                    waiting.append(row)
                    continue
                end.synchronize()
            device = start.device.index if start.device is not None else None
            ref = POOL.refs.get(device)
            duration_ms = start.elapsed_time(end)
            if ref is None:  # events made elsewhere on a device we never referenced
                x[X.GPU] = (None, None, int(round(duration_ms * 1e6)))
            else:
                x[X.GPU] = gpu_times_ns(ref[1], ref[0].elapsed_time(start), duration_ms)
            # Rows sharing this pair take the times from it; the events go back to the pool once.
            pair.append(x[X.GPU])
            POOL.put(device, start)
            POOL.put(device, end)
    return waiting


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False when torch or CUDA is missing)."""
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False
