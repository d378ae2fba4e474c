"""The shared recorder: one per process, fanning every recorded call out to the open sessions.

One process-wide `Recorder` owns the installed wrappers (`_patching`, `_wrappers`), the counters
(`seq`, `pg_seq`) and the async completion tracker (`_work`); every active `TraceSession`
receives each call. An ordinary blocking call becomes one packed int64 record in each session's
`ColumnBuffer` (`_columns`); other calls (async, rooted, CUDA-timed, engine methods) a raw row
(`_rows.R`). Everything derived (names, bytes, labels, Arrow conversion) is computed at flush.

Re-entry: torch delegates internally (`all_gather_into_tensor` -> `all_gather_single`,
`send` -> `isend`); a per-thread busy flag makes the outermost call the only one recorded.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from time import time_ns
from typing import Any

from ._columns import K, KeyTable, _chook
from ._cuda_events import cuda_available, end_event, start_event
from ._groups import GroupRegistry
from ._ops import P2P_RECV, P2P_SEND
from ._patching import Patches
from ._phases import _CURRENT
from ._rows import API_TABLE, R, X, format_exc, marked, new_extra, register_api
from ._work import WorkTracker
from ._wrappers import entry_row

__all__ = ["RECORDER", "Recorder"]

_get_ident = threading.get_ident
# The compiled busy map and counter where the hook is built; the same interfaces as these.
_Busy = _chook.Busy if _chook is not None else dict
_Counter = _chook.Counter if _chook is not None else itertools.count

_BATCH_SEND = register_api("batch_isend_irecv", P2P_SEND)
_BATCH_RECV = register_api("batch_isend_irecv", P2P_RECV)


class Recorder:
    """Process-wide hook state: installed patches, counters, pending async work, sessions."""

    # Read by the compiled hook on every call straight from the instance (no dict lookup).
    __slots__ = ("cuda_timing", "seq", "__dict__")

    #: A fresh seq/pg_seq counter: 0, 1, 2, ... (the compiled hook reads a `Counter` unboxed).
    new_counter = _Counter

    def __init__(self) -> None:
        self.sessions: list[Any] = []
        self.paused: list[Any] = []  # open sessions not recording: they keep the hooks installed
        # Threads inside a recorded call (thread ident -> the call's row or entry tuple, or True
        # for calls not recorded at entry): inner calls torch makes are not recorded again, and
        # a timed flush writes the rows of calls that have not returned. A map keyed by
        # get_ident() is cheaper than threading.local here; the compiled one keeps the compiled
        # hook's entries unboxed.
        self.busy: dict[int, Any] = _Busy()
        self.groups = GroupRegistry(_Counter)
        self.seq = self.new_counter()
        self.counters: dict[Any, Any] = {}  # pg_seq counter key -> new_counter()
        self.work = WorkTracker()
        self.keys = KeyTable()  # interned fields of packed records (never reset: codes persist)
        self.pending_tensors = self.work.pending_tensors  # id(tensor) -> (tensor, rows)
        self.cuda_timing = False
        self.rank: int | None = None
        self._patches = Patches()
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self, session: Any) -> None:
        with self._lock:
            if not self.sessions and not self.paused:
                self._reset_counters()
                self._patches.install(self)
            self.sessions.append(session)
            self.cuda_timing = any(s.cuda_timing for s in self.sessions) and cuda_available()

    def detach(self, session: Any) -> None:
        with self._lock:
            for lst in (self.sessions, self.paused):
                if session in lst:
                    lst.remove(session)
            if not self.sessions and not self.paused:
                self._patches.uninstall()
                self.work.restore_work_types()
                self.work.complete_all_unobserved()
            self.cuda_timing = any(s.cuda_timing for s in self.sessions) and cuda_available()

    def pause(self, session: Any) -> None:
        with self._lock:
            if session in self.sessions:
                self.sessions.remove(session)
                self.paused.append(session)

    def resume(self, session: Any) -> None:
        with self._lock:
            if session in self.paused:
                self.paused.remove(session)
                self.sessions.append(session)

    def _reset_counters(self) -> None:
        self.seq = self.new_counter()
        self.counters.clear()  # cleared in place: the wrappers hold the dict
        self.groups.clear()  # last: its epoch tells the compiled hook both maps were cleared
        self.rank = None

    def on_process_group_change(self) -> None:
        self.groups.clear()
        self.rank = None

    @contextlib.contextmanager
    def unrecorded(self):
        """Calls made by this thread inside the block are not recorded (commscope's own)."""
        tid = _get_ident()
        had = tid in self.busy
        self.busy[tid] = True
        try:
            yield
        finally:
            if not had:
                self.busy.pop(tid, None)

    @property
    def installed(self) -> bool:
        return bool(self._patches)

    # -- recording ---------------------------------------------------------------------------
    start_event = staticmethod(start_event)

    def _complete(self, rows: list, how: str, exc: BaseException | None) -> None:
        self.work.complete(rows, how, exc)

    def _my_rank(self) -> int:
        if self.rank is None:
            import torch.distributed as dist

            self.rank = dist.get_rank() if dist.is_initialized() else 0
        return self.rank

    def pg_seq_key(self, op: str, name: str, peer: int | None) -> Any:
        """Key of a call's pg_seq counter: (group, src, dst) for point-to-point, else group."""
        if op == P2P_SEND:
            return (name, self._my_rank(), peer)
        if op == P2P_RECV:
            return (name, peer, self._my_rank())
        return name

    def _next_pg_seq(self, key: Any) -> int:
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters.setdefault(key, self.new_counter())
        return next(counter)

    def begin(self, api_idx: int, info: tuple, t0: int, ev: Any) -> list:
        """The row of a call at entry (general path): everything but its return and completion,
        which `finish` fills. While the call runs, the row is the thread's entry in `busy`, so a
        timed flush can write a call that never returns (completion 'started')."""
        gi = self.groups.resolve_info(info[4])
        name = gi.name
        op = API_TABLE[api_idx][1]
        peer, root = info[5], info[6]
        if info[9] is not None and peer is None and root is None:
            g = self.groups.global_rank(gi, info[9])
            if op in (P2P_SEND, P2P_RECV):
                peer = g
            else:
                root = g
        # A recv from any source is counted once the sender is known (finish).
        pg_seq = None if op == P2P_RECV and peer is None else \
            self._next_pg_seq(self.pg_seq_key(op, name, peer))
        x = [None, "started", peer, root, bool(info[7]), None,
             None if ev is None else f"cuda:{info[8].device.index}",
             None if ev is None else [ev, None]]
        return [api_idx, t0, None, None, info[0], info[1], info[2], info[3], gi, pg_seq,
                next(self.seq), _CURRENT.get(), _get_ident(), x]

    def finish(self, row: list, res: Any, exc: BaseException | None) -> None:
        """Complete a row built at entry once the call returned (`res`) or raised (`exc`)."""
        t1 = time_ns()
        x = row[R.X]
        if x is None:  # a fast-path row whose call raised
            x = row[R.X] = new_extra("return")
        if row[R.PGSEQ] is None:  # recv from any source returns the sender
            if isinstance(res, int):
                x[X.PEER] = res
            row[R.PGSEQ] = self._next_pg_seq(self.pg_seq_key(P2P_RECV, row[R.PG].name, x[X.PEER]))
        is_async = x[X.ASYNC] and exc is None and res is not None
        row[R.TRET] = t1
        if exc is not None:
            x[X.ERROR] = format_exc(exc)
        if is_async:
            x[X.COMPLETION] = "pending"
            self.work.register_async(res, [row])
        else:
            row[R.TEND] = t1
            x[X.COMPLETION] = "return"
            if x[X.GPU] is not None:
                end_event(row)
        self.emit(row)

    def record(self, api_idx: int, info: tuple, t0: int, res: Any, exc: BaseException | None,
               ev: Any) -> None:
        """Record one call after it returned (callers that do not record at entry)."""
        self.finish(self.begin(api_idx, info, t0, ev), res, exc)

    def record_batch(self, infos: list, t0: int, res: Any, exc: BaseException | None,
                     ev: Any) -> None:
        """One row per P2POp of a batch_isend_irecv; completion is the batch's wait."""
        t1 = time_ns()
        is_async = exc is None and bool(res)
        phase, tid = _CURRENT.get(), _get_ident()  # one call: the same for every op
        rows = []
        for i, (is_send, info) in enumerate(infos):
            gi = self.groups.resolve_info(info[4])
            peer = info[5]
            if peer is None and info[9] is not None:
                peer = self.groups.global_rank(gi, info[9])
            x = [None, "pending" if is_async else "return", peer, None, True,
                 None if exc is None else format_exc(exc),
                 None if ev is None or i else f"cuda:{info[8].device.index}",
                 None if ev is None or i else [ev, None]]
            rows.append([_BATCH_SEND if is_send else _BATCH_RECV, t0, None if is_async else t1,
                         t1, info[0], info[1], info[2], info[3], gi,
                         self._next_pg_seq(self.pg_seq_key(P2P_SEND if is_send else P2P_RECV,
                                                           gi.name, peer)),
                         next(self.seq), phase, tid, x])
        if is_async:
            # Coalesced batches return one work for all ops; otherwise one per op.
            works = list(res)
            if len(works) == len(rows):
                for w, row in zip(works, rows):
                    self.work.register_async(w, [row])
            else:
                for w in works:
                    self.work.register_async(w, rows)
        elif ev is not None and rows:
            end_event(rows[0])
        for row in rows:
            self.emit(row)

    def started_rows(self) -> list:
        """Snapshot of the calls in flight right now (entered, not returned), as 'started' rows."""
        out = []
        for tid, row in list(self.busy.items()):
            if type(row) is tuple:  # a fast-path call's entry tuple
                row = entry_row(row, tid)
            elif row is True or row[R.TRET] is not None:
                continue
            out.append(marked(row, "started", None))  # not returned: no end, no device time
        return out

    def emit(self, row: list) -> None:
        """Hand a completed or pending raw row to every recording session."""
        for s in self.sessions:
            s._buf.append(row)
            ints = s._cols.ints
            ints.flush_at -= K  # one raw row: one event less for the packed records
            if len(ints) >= ints.flush_at:  # the hot path's test: flush_events in all
                s.flush(blocking=False)


RECORDER = Recorder()
