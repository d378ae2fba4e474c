"""`profiler.trace`: a tracing session that buffers rows and writes one Parquet dataset per run."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ._clock import Agreement, agree, exchanges
from ._metadata import collect_metadata
from ._recorder import RECORDER, R, X
from ._schema import SCHEMA_VERSION
from ._writer import Identity, resolve_gpu_times, rows_to_table, write_part

__all__ = ["TraceSession", "trace", "CAPTURE_MODES"]

CAPTURE_MODES = ("default", "full")
_OPEN: list[TraceSession] = []
_signal_state: dict[str, Any] = {}


class TraceSession:
    """One tracing session of one process. Use through `profiler.trace(...)`.

    Rows are buffered in memory and written as Parquet part files under
    ``<out_dir>/<run_id>/rank_<NNNNN>/`` whenever `flush_events` rows are buffered or the first
    call after `flush_interval_s` seconds; on leaving the block, at interpreter exit and on
    SIGTERM. Parts are encoded on a writer thread (at most two in flight). A SIGKILL therefore
    loses at most the rows recorded since the last flush plus the parts still being written:
    at most 3 x `flush_events` rows.
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
        self._buf: list = []
        self._carry: list = []
        self._flush_deadline_ns = time.time_ns() + int(self.flush_interval_s * 1e9)
        self._lock = threading.Lock()
        self._candidate = run_name or os.environ.get("COMMSCOPE_RUN_ID") or _new_run_id()
        self._agreement: Agreement | None = None
        self._ident: Identity | None = None
        self._meta: dict[str, Any] | None = None
        self._mode: Any = None
        self._open = False
        self._closed = False
        self._t_open_ns: int | None = None
        self._executor: ThreadPoolExecutor | None = None
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
        RECORDER.attach(self)
        _OPEN.append(self)
        _install_exit_handlers()
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
        if not self._lock.acquire(blocking):
            return 0
        try:
            with _signals_deferred():
                return self._flush_locked(final)
        finally:
            self._lock.release()

    def _flush_locked(self, final: bool) -> int:
        buf = self._buf
        n = len(buf)
        chunk = self._carry + buf[:n]
        del buf[:n]  # rows appended meanwhile by other threads stay in the buffer
        self._flush_deadline_ns = time.time_ns() + int(self.flush_interval_s * 1e9)
        if not chunk:
            return 0
        ready, pending = [], []
        for row in chunk:
            if row[R.TEND] is not None:
                ready.append(row)
            elif final:
                x = list(row[R.X])
                x[X.COMPLETION] = "unobserved"
                row = list(row)  # shared with other sessions: do not mutate
                row[R.TEND] = row[R.TRET]
                row[R.X] = x
                ready.append(row)
            else:
                pending.append(row)
        waiting = resolve_gpu_times(ready, final)
        if waiting:
            ids = {id(r) for r in waiting}
            ready = [r for r in ready if id(r) not in ids]
        self._carry = pending + waiting
        if ready:
            self._write(ready, sync=final)
        return len(ready)

    def close(self) -> None:
        """Stop recording and write everything; safe to call more than once."""
        if self._closed or not self._open:
            return
        with _signals_deferred():
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
        self.flush(blocking=False, final=True)
        self._drain_writes()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.events_written or self._agreement is not None:
            self._write_metadata(final=True)

    # -- internals ----------------------------------------------------------------------------
    def _on_init_process_group(self) -> None:
        """Called when the default group exists: agree on the run id and clocks with the others."""
        if self._agreement is not None:
            return
        import torch.distributed as dist

        with RECORDER.unrecorded():  # the agreement's own collectives are not user traffic
            candidate = self._candidate
            if dist.get_rank() == 0 or not exchanges():
                candidate = _reserve_run_dir(self.out_dir, candidate, self.run_name is not None)
            self._agreement = agree(candidate)
        self._ident = None

    def _identity(self) -> Identity:
        if self._ident is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                if self._agreement is None:
                    self._on_init_process_group()
                rank, world = dist.get_rank(), dist.get_world_size()
                world_pg = dist.GroupMember.WORLD.group_name
            else:
                if self._agreement is None:
                    self._candidate = _reserve_run_dir(self.out_dir, self._candidate,
                                                       self.run_name is not None)
                rank = int(os.environ.get("RANK", 0))
                world = int(os.environ.get("WORLD_SIZE", 1))
                world_pg = None
            self._ident = Identity(self.run_id, rank, world, socket.gethostname(), os.getpid(),
                                   world_pg)
        return self._ident

    def _write(self, rows: list, sync: bool) -> None:
        ident = self._identity()  # on the caller's thread: it may agree with the other ranks
        # Group infos as of this flush (the registry keeps growing while the writer works).
        job = (rows, ident, dict(RECORDER.groups.infos), self.rank_dir,
               f"part-{ident.pid}-{self.parts:05d}.parquet")
        fut = None
        if not sync:
            # Building and encoding the part on a writer thread keeps a flush from stalling the
            # traced call for tens of milliseconds; Parquet encoding also runs without the GIL.
            try:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="commscope-writer")
                fut = self._executor.submit(_build_and_write, *job)
            except RuntimeError:  # interpreter shutting down: no new threads
                fut = None
        if fut is None:
            fut = Future()
            try:
                fut.set_result(_build_and_write(*job))
            except Exception as exc:
                fut.set_exception(exc)
        self._pending_writes.append(fut)
        self.parts += 1
        self.events_written += len(rows)
        if self.parts == 1:
            self._write_metadata(final=False)
        if len(self._pending_writes) > 2:  # bound memory: at most two tables in flight
            self._drain_writes(keep=2)

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
        if self._meta is None:
            self._meta = collect_metadata()
        ag = self._agreement
        meta = {
            "schema_version": SCHEMA_VERSION,
            "run_id": ident.run_id,
            "run_name": self.run_name,
            "rank": ident.rank,
            "world_size": ident.world_size,
            **self._meta,
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
        os.makedirs(self.rank_dir, exist_ok=True)
        path = os.path.join(self.rank_dir, "metadata.json")
        tmp = os.path.join(self.rank_dir, f".metadata-{ident.pid}.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=1, default=str)
        os.replace(tmp, path)


def _build_and_write(rows: list, ident: Identity, groups: dict, directory: str,
                     name: str) -> str:
    return write_part(rows_to_table(rows, ident, groups), directory, name)


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


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _reserve_run_dir(out_dir: str, run_id: str, named: bool) -> str:
    """Claim `<out_dir>/<run_id>` (adding -2, -3, ... to a reused run name) by creating it."""
    os.makedirs(out_dir, exist_ok=True)
    candidate, k = run_id, 1
    while True:
        try:
            os.mkdir(os.path.join(out_dir, candidate))
            return candidate
        except FileExistsError:
            if not named and k > 100:
                raise
            k += 1
            candidate = f"{run_id}-{k}"


def _close_all() -> None:
    for s in reversed(list(_OPEN)):
        try:
            s.close()
        except Exception:
            pass


@contextlib.contextmanager
def _signals_deferred():
    """While writing, a SIGTERM is held back until the write is done (else the part is lost)."""
    _signal_state["flushing"] = _signal_state.get("flushing", 0) + 1
    try:
        yield
    finally:
        _signal_state["flushing"] -= 1
        if not _signal_state["flushing"] and _signal_state.get("deferred"):
            _on_sigterm(*_signal_state.pop("deferred"))


def _on_sigterm(signum: int, frame: Any) -> None:
    if _signal_state.get("flushing"):
        # A flush is being written on this thread: dying now would lose it. Finish it first;
        # its `finally` re-delivers the signal.
        _signal_state["deferred"] = (signum, frame)
        return
    _close_all()
    prev = _signal_state.get("prev")
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install_exit_handlers() -> None:
    if _signal_state.get("atexit") is None:
        atexit.register(_close_all)
        _signal_state["atexit"] = True
    if "prev" not in _signal_state and threading.current_thread() is threading.main_thread():
        try:
            _signal_state["prev"] = signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            pass
