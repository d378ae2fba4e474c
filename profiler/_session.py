"""`profiler.trace`: a tracing session that buffers rows and writes one Parquet dataset per run."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from ._clock import Agreement, agree
from ._columns import ColumnBuffer, K
from ._cuda_events import resolve_gpu_times
from ._metadata import collect_metadata
from ._recorder import RECORDER
from ._rows import R, marked
from ._rundir import new_run_id, reserve_run_dir, write_metadata_file
from ._schema import SCHEMA_VERSION
from ._signals import OPEN as _OPEN
from ._signals import install_exit_handlers, signals_deferred
from ._writer import Identity, columns_to_table, rows_to_table, write_part
from ._writer_thread import WriterThread

__all__ = ["TraceSession", "trace", "CAPTURE_MODES"]

CAPTURE_MODES = ("default", "full")


class TraceSession:
    """One tracing session of one process. Use through `profiler.trace(...)`.

    Rows are buffered in memory and written as Parquet part files under
    ``<out_dir>/<run_id>/rank_<NNNNN>/`` whenever `flush_events` rows are buffered, every
    `flush_interval_s` seconds from the writer thread (even while the traced thread is blocked),
    on leaving the block, at interpreter exit and on SIGTERM. Parts are encoded on the writer
    thread (at most two in flight). Calls in flight (entered and not returned, or async and not
    yet waited on) are kept in ``part-<pid>-inflight.parquet`` with completion 'started', replaced
    at every flush: a SIGKILL during a hang leaves the hung call on disk. A SIGKILL loses at most
    the rows recorded since the last flush plus the parts still being written.
    """

    def __init__(self, out_dir: str | os.PathLike, *, run_name: str | None = None,
                 tags: dict[str, Any] | None = None, capture: str = "default",
                 cuda_timing: bool = True, flush_events: int = 65536,
                 flush_interval_s: float = 2.0) -> None:
        if capture not in CAPTURE_MODES:
            raise ValueError(f"capture must be one of {CAPTURE_MODES}, got {capture!r}")
        if run_name is not None and (not run_name or "/" in run_name or run_name.startswith(".")):
            raise ValueError(f"run_name must be a plain folder name, got {run_name!r}")
        if flush_events < 1 or flush_interval_s <= 0:
            raise ValueError("flush_events and flush_interval_s must be positive")
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.capture = capture
        self.cuda_timing = bool(cuda_timing)
        self.flush_events = int(flush_events)
        self.flush_interval_s = float(flush_interval_s)
        self.events_written = 0
        self.parts = 0
        self._buf: list = []  # raw rows (`_rows.R`): async, unusual and engine calls
        self._cols = ColumnBuffer()  # packed records of ordinary calls
        # The length of the packed buffer (in int64 values) at which the hot path flushes: the
        # flush_events budget less the raw rows buffered (each raw row lowers it by K), so the
        # hot path compares one number, kept on the buffer itself.
        self._cols.ints.flush_at = self.flush_events * K
        self._carry: list = []
        self._lock = threading.Lock()         # one flush at a time
        self._close_lock = threading.Lock()   # a second close waits for the first
        self._ident_lock = threading.RLock()  # one agreement per session
        self._candidate = run_name or os.environ.get("COMMSCOPE_RUN_ID") or new_run_id()
        self._agreement: Agreement | None = None
        self._ident: Identity | None = None
        self._mode: Any = None
        self._open = False
        self._closed = False
        self._t_open_ns: int | None = None
        self._writer: WriterThread | None = None
        self._inflight_on_disk = False
        self._pending_writes: list = []
        self._write_errors: list[str] = []

    # -- public -------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """The run id: rank 0's choice once the default process group exists."""
        return self._agreement.run_id if self._agreement else self._candidate

    @property
    def run_dir(self) -> str:
        """Folder of this run's dataset (`<out_dir>/<run_id>`)."""
        return os.path.join(self.out_dir, self.run_id)

    @property
    def rank_dir(self) -> str:
        """Folder this rank writes to."""
        return os.path.join(self.run_dir, f"rank_{self._identity().rank:05d}")

    def __enter__(self) -> TraceSession:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> TraceSession:
        if self._open:
            raise RuntimeError("this trace session is already open")
        if self._closed:
            raise RuntimeError("a trace session cannot be reopened; create a new one")
        import torch.distributed as dist

        self._open = True
        self._t_open_ns = time.time_ns()
        self._writer = WriterThread(self.flush_interval_s, self._on_timer)
        # NVML and version probing take tens of ms: done on the writer thread, never on a
        # traced call (a rank paying for it at its first flush would look like a straggler).
        self._writer.submit(collect_metadata)
        RECORDER.attach(self)
        _OPEN.append(self)
        install_exit_handlers()
        if self.capture == "full":
            from ._dispatch import CommDispatchMode

            self._mode = CommDispatchMode()
            self._mode.__enter__()
        if dist.is_available() and dist.is_initialized():
            self._on_init_process_group()
        return self

    def pause(self) -> None:
        """Stop recording until `resume()`; the hooks stay installed (a paused call costs one
        check). For tracing a window of a long run, like torch.profiler's schedule."""
        if self._open and not self._closed:
            RECORDER.pause(self)

    def resume(self) -> None:
        """Record again after `pause()`."""
        if self._open and not self._closed:
            RECORDER.resume(self)

    def flush(self, blocking: bool = True, final: bool = False) -> int:
        """Write buffered, completed rows to a new part file; returns the number written."""
        with signals_deferred():  # a SIGTERM now is handled after the lock is released
            if not self._lock.acquire(blocking):
                return 0
            try:
                return self._flush_locked(final)
            finally:
                self._lock.release()

    def _on_timer(self) -> None:
        if self._open and not self._closed:
            self.flush(blocking=False)

    def _flush_locked(self, final: bool) -> int:
        packed = self._cols.take()
        keys = RECORDER.keys.snapshot()  # after take(): every code in `packed` is in it
        buf = self._buf
        n = len(buf)
        chunk = self._carry + buf[:n]
        del buf[:n]  # rows appended meanwhile by other threads stay in the buffer
        self._cols.ints.flush_at = (self.flush_events - len(buf)) * K
        ready, pending = [], []
        for row in chunk:
            if row[R.TEND] is not None:
                ready.append(row)
            elif final:
                ready.append(marked(row, "unobserved", end=row[R.TRET]))
            else:
                pending.append(row)
        waiting = resolve_gpu_times(ready, final)
        if waiting:
            ids = {id(r) for r in waiting}
            ready = [r for r in ready if id(r) not in ids]
        self._carry = pending + waiting
        started = RECORDER.started_rows()
        sync = final or (self._writer is not None and self._writer.on_thread())
        if final:
            self._wait_writer()  # queued jobs first: the in-flight file is removed last
            ready += started  # calls still blocked at close (e.g. SIGTERM during a hang)
            inflight = []
        else:
            inflight = started + [marked(r, "started", end=None) for r in pending]
        if ready or len(packed):
            self._write(ready, packed, keys, sync=sync)
        if inflight or self._inflight_on_disk:
            self._submit(self._write_inflight, (inflight,), sync)
            self._inflight_on_disk = bool(inflight)
        return len(ready) + len(packed)

    def close(self) -> None:
        """Stop recording and write everything; safe to call more than once, from any thread
        (a second caller waits until the first has written everything)."""
        with signals_deferred(), self._close_lock:
            if self._closed or not self._open:
                return
            self._close()

    def _close(self) -> None:
        self._closed = True
        if self._mode is not None:
            try:
                self._mode.__exit__(None, None, None)
            except Exception:
                pass  # exited from another thread or out of order: recording stops anyway
            self._mode = None
        RECORDER.detach(self)
        if self in _OPEN:
            _OPEN.remove(self)
        self.flush(final=True)  # waits for a flush running on another thread
        self._drain_writes()
        if self._writer is not None:
            self._writer.stop()
        if self.events_written or self._agreement is not None:
            self._write_metadata(final=True)

    # -- internals ----------------------------------------------------------------------------
    def _on_init_process_group(self) -> None:
        """The default group exists: agree on the run id and clocks with the other ranks, on
        the writer thread through the group's store (never collectives, never on the caller's
        thread, so nothing runs inside init_process_group)."""
        if self._agreement is None and self._writer is not None:
            self._writer.submit(self._ensure_agreement)

    def _ensure_agreement(self) -> None:
        with self._ident_lock:
            if self._agreement is not None:
                return
            named = self.run_name is not None
            try:
                with RECORDER.unrecorded():
                    self._agreement = agree(
                        self._candidate,
                        lambda c: reserve_run_dir(self.out_dir, c, named))
            except Exception as exc:  # a store gone or timed out: keep tracing on our own
                self._agreement = Agreement(
                    reserve_run_dir(self.out_dir, self._candidate, named), 0, 0,
                    f"failed: {exc!r}"[:200])
            self._ident = None

    def _identity(self) -> Identity:
        with self._ident_lock:
            if self._ident is None:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    self._ensure_agreement()
                    rank, world = dist.get_rank(), dist.get_world_size()
                    world_pg = dist.GroupMember.WORLD.group_name
                else:
                    if self._agreement is None:
                        self._candidate = reserve_run_dir(self.out_dir, self._candidate,
                                                          self.run_name is not None)
                    rank = int(os.environ.get("RANK", 0))
                    world = int(os.environ.get("WORLD_SIZE", 1))
                    world_pg = None
                self._ident = Identity(self.run_id, rank, world, socket.gethostname(),
                                       os.getpid(), world_pg)
            return self._ident

    def _write(self, rows: list, packed: Any, keys: list, sync: bool) -> None:
        # Group infos as of this flush, for rows that name their group (the hooks' rows carry
        # their GroupInfo); identity and folder are resolved on the writer thread.
        groups = dict(RECORDER.groups.infos)
        part, first = self.parts, self.parts == 0
        self.parts += 1
        self.events_written += len(rows) + len(packed)
        self._submit(self._write_part, (rows, packed, keys, groups, part, first), sync)
        if len(self._pending_writes) > 2:  # bound memory: at most two tables in flight
            self._drain_writes(keep=2)

    def _submit(self, fn: Any, args: tuple, sync: bool) -> None:
        fut = None
        if not sync and self._writer is not None:
            fut = self._writer.submit(fn, *args)
        else:
            fut = Future()
            try:
                fut.set_result(fn(*args))
            except Exception as exc:
                fut.set_exception(exc)
        self._pending_writes.append(fut)

    def _wait_writer(self) -> None:
        """Wait until every job submitted so far (agreement, parts) has run."""
        if self._writer is not None and not self._writer.on_thread() and \
                self._writer.thread.is_alive():
            self._writer.submit(lambda: None).result()
        self._drain_writes()

    def _write_part(self, rows: list, packed: Any, keys: list, groups: dict, part: int,
                    first: bool) -> str:
        ident = self._identity()
        table = columns_to_table(packed, keys, ident, groups)
        if rows:
            # Packed and raw rows interleave in time: one part in call order (seq).
            table = pa.concat_tables([table, rows_to_table(rows, ident, groups)])
            if len(packed):
                table = table.sort_by("seq")
        path = write_part(table, self.rank_dir, f"part-{ident.pid}-{part:05d}.parquet")
        if first:
            self._write_metadata(final=False)
        return path

    def _write_inflight(self, rows: list) -> None:
        ident = self._identity()
        name = f"part-{ident.pid}-inflight.parquet"
        if rows:
            write_part(rows_to_table(rows, ident, dict(RECORDER.groups.infos)), self.rank_dir,
                       name)
        else:
            try:
                os.remove(os.path.join(self.rank_dir, name))
            except FileNotFoundError:
                pass

    def _drain_writes(self, keep: int = 0) -> None:
        while len(self._pending_writes) > keep:
            fut = self._pending_writes.pop(0)
            try:
                fut.result()
            except Exception as exc:  # a full disk must not kill the traced program
                self._write_errors.append(repr(exc))
                print(f"commscope: failed to write a trace part under {self.rank_dir}: {exc!r}",
                      file=sys.stderr)

    def _write_metadata(self, final: bool) -> None:
        ident = self._identity()
        ag = self._agreement
        meta = {
            "schema_version": SCHEMA_VERSION,
            "run_id": ident.run_id,
            "run_name": self.run_name,
            "rank": ident.rank,
            "world_size": ident.world_size,
            **collect_metadata(),  # cached per process; first collected on the writer at open
            "tags": self.tags,
            "capture": self.capture,
            "cuda_timing": self.cuda_timing,
            "clock_offset_ns": ag.clock_offset_ns if ag else 0,
            "clock_offset_spread_ns": ag.clock_offset_spread_ns if ag else 0,
            "clock_sync": ag.method if ag else "none",
            "t_open_ns": self._t_open_ns,
            "t_close_ns": time.time_ns() if final else None,
            "events_written": self.events_written,
            "parts": self.parts,
            "write_errors": self._write_errors,
            "flush_events": self.flush_events,
            "flush_interval_s": self.flush_interval_s,
        }
        write_metadata_file(self.rank_dir, ident.pid, meta)


def trace(out_dir: str | os.PathLike, *, run_name: str | None = None,
          tags: dict[str, Any] | None = None, capture: str = "default",
          cuda_timing: bool = True, **options: Any) -> TraceSession:
    """Record every communication call of this process into a Parquet dataset.

    Use as a context manager; it yields the session, whose `.run_dir` is this run's folder::

        with profiler.trace("traces", run_name="tp2") as session:
            model.generate(...)

    Every rank enters it (before or after `init_process_group`); ranks agree on one run id and
    write their own `rank_<NNNNN>/` folder. `capture="full"` also records collectives issued
    through the dispatcher directly (slower; see README). `cuda_timing` records CUDA events around
    calls on CUDA tensors. Extra options: `flush_events`, `flush_interval_s`.
    """
    return TraceSession(out_dir, run_name=run_name, tags=tags, capture=capture,
                        cuda_timing=cuda_timing, **options)
