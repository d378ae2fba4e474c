"""The hooks: wrappers around torch.distributed and functional collectives, and the shared recorder.

One process-wide `Recorder` owns the installed wrappers and the counters (`seq`, `pg_seq`); every
active `TraceSession` receives each row. The hot path builds one list per call and appends it to
the sessions' buffers; everything derived (names, bytes, labels, Arrow conversion) is computed
at flush time, in bulk.

Re-entry: torch delegates internally (`all_gather_into_tensor` -> `all_gather_single`,
`send` -> `isend`); a thread-local depth flag makes the outermost call the only one recorded.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from time import time_ns
from typing import Any

from ._groups import GroupRegistry
from ._ops import DIST_APIS, FUNCOL_APIS, P2P_RECV, P2P_SEND, ApiSpec
from ._phases import _CURRENT

__all__ = ["RECORDER", "Recorder", "API_TABLE", "R", "X", "DispatchHandle"]

_get_ident = threading.get_ident


class R:
    """Indices of a raw row. Ordinary blocking calls are tuples whose extra field X is None;
    async or unusual calls are lists (mutated once at completion) with X a list (see `X`)."""

    API, T0, TEND, TRET, DTYPE, COUNT, IN, OUT, PG, PGSEQ, SEQ, PHASE, TID, X = range(14)


class X:
    """Indices of a row's extra list."""

    TWAIT, COMPLETION, PEER, ROOT, ASYNC, ERROR, DEVICE, GPU = range(8)


class DispatchHandle:
    """Completion handle of a call recorded by the capture="full" dispatch mode."""

    __slots__ = ("obj", "ns")

    def __init__(self, obj: Any, ns: str) -> None:
        self.obj, self.ns = obj, ns


# API table: index -> (api name, op, capture). Rows store the index.
API_TABLE: list[tuple[str, str, str]] = []
_API_INDEX: dict[str, int] = {}


def _register_api(name: str, op: str, capture: str = "hook") -> int:
    key = f"{name}|{op}"
    if key not in _API_INDEX:
        _API_INDEX[key] = len(API_TABLE)
        API_TABLE.append((name, op, capture))
    return _API_INDEX[key]


_BATCH_SEND = _register_api("batch_isend_irecv", P2P_SEND)
_BATCH_RECV = _register_api("batch_isend_irecv", P2P_RECV)


class Recorder:
    def __init__(self) -> None:
        self.sessions: list[Any] = []
        self.paused: list[Any] = []  # open sessions not recording: they keep the hooks installed
        # Threads inside a recorded call (thread ident -> True): inner calls torch makes are not
        # recorded again. A dict keyed by get_ident() is cheaper than threading.local here.
        self.busy: dict[int, bool] = {}
        self.groups = GroupRegistry()
        self.seq = itertools.count()
        self.counters: dict[Any, itertools.count] = {}
        self.pending: dict[int, tuple[Any, list]] = {}      # id(Work) -> (work, rows)
        self.pending_tensors: dict[int, tuple[Any, list]] = {}  # id(tensor) -> (tensor, rows)
        self.sibling_keys: dict[int, list[int]] = {}  # id(rows) -> pending_tensors keys
        self.cuda_timing = False
        self.rank: int | None = None
        self._patches: list[tuple[Any, str, Any]] = []
        self._work_types: dict[type, tuple[Any, Any]] = {}
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self, session: Any) -> None:
        with self._lock:
            if not self.sessions and not self.paused:
                self._reset_counters()
                self._install()
            self.sessions.append(session)
            self.cuda_timing = any(s.cuda_timing for s in self.sessions) and _cuda_available()

    def detach(self, session: Any) -> None:
        with self._lock:
            for lst in (self.sessions, self.paused):
                if session in lst:
                    lst.remove(session)
            if not self.sessions and not self.paused:
                self._uninstall()
                self._complete_all_unobserved()
            self.cuda_timing = any(s.cuda_timing for s in self.sessions) and _cuda_available()

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
        self.seq = itertools.count()
        self.counters.clear()  # cleared in place: the wrappers hold the dict
        self.groups.clear()
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

    def _patch(self, owner: Any, attr: str, new: Any) -> None:
        self._patches.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    def _patch_where_bound(self, owners: tuple, attr: str, orig: Any, new: Any) -> None:
        """Replace `orig` in every module that binds it under `attr` (torch.distributed
        re-exports distributed_c10d's functions)."""
        for owner in owners:
            if getattr(owner, attr, None) is orig:
                self._patch(owner, attr, new)

    def _install(self) -> None:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        owners = (dist, c10d)
        for spec in DIST_APIS:
            orig = getattr(c10d, spec.attr, None)
            if orig is None:
                continue
            # Point-to-point and rooted ops carry peer/root: they take the general path.
            simple = spec.op not in (P2P_SEND, P2P_RECV, "broadcast", "reduce", "gather", "scatter")
            self._patch_where_bound(owners, spec.attr, orig, self._make_wrapper(
                _register_api(spec.name, spec.op), spec, orig, simple))
        orig = c10d.batch_isend_irecv
        self._patch_where_bound(owners, "batch_isend_irecv", orig,
                                self._make_batch_wrapper(orig))
        for attr in ("init_process_group", "destroy_process_group"):
            orig = getattr(c10d, attr)
            self._patch_where_bound(owners, attr, orig, self._make_lifecycle_wrapper(orig, attr))
        try:
            from torch.distributed import _functional_collectives as funcol
        except Exception:  # torch without functional collectives
            funcol = None
        if funcol is not None:
            for spec in FUNCOL_APIS:
                orig = getattr(funcol, spec.attr, None)
                if orig is None:
                    continue
                self._patch(funcol, spec.attr,
                            self._make_wrapper(_register_api(spec.name, spec.op), spec, orig,
                                               False))
            self._patch(funcol, "wait_tensor", self._make_wait_tensor(funcol.wait_tensor))

    def _uninstall(self) -> None:
        for owner, attr, orig in reversed(self._patches):
            setattr(owner, attr, orig)
        self._patches.clear()
        for typ, (wait, is_completed) in self._work_types.items():
            typ.wait = wait
            typ.is_completed = is_completed
        self._work_types.clear()

    # -- wrappers ----------------------------------------------------------------------------
    def _make_wrapper(self, api_idx: int, spec: ApiSpec, orig: Any, simple: bool) -> Any:
        """Wrap one API. `simple`: an unrooted collective whose group argument is hashable,
        eligible for the inlined fast path when it runs blocking on CPU tensors."""
        # `info` below is a tuple in CallInfo's field order (see _ops): 0 dtype, 1-3 counts,
        # 4 group, 5 peer, 6 root, 7 async_op, 8 tensor, 9 group-relative peer/root.
        extract = spec.extract
        busy = self.busy
        record = self.record
        rec = self
        sessions = self.sessions
        names_get = self.groups._names.get
        resolve = self.groups.resolve
        counters = self.counters
        phase_get = _CURRENT.get

        @functools.wraps(orig)
        def wrapper(*args, **kwargs):
            tid = _get_ident()
            if tid in busy or not sessions:
                return orig(*args, **kwargs)
            t0 = time_ns()
            try:
                info = extract(*args, **kwargs)
            except Exception:
                # Arguments we cannot read: let torch handle (and reject) them untouched.
                return orig(*args, **kwargs)
            ev = rec.start_event(info[8]) if rec.cuda_timing else None
            busy[tid] = True
            try:
                res = orig(*args, **kwargs)
            except BaseException as exc:
                del busy[tid]
                record(api_idx, info, t0, None, exc, ev)
                raise
            del busy[tid]
            if simple and ev is None and not info[7] and info[9] is None:
                # Fast path (the common case), inlined: ~1 us instead of ~3 us per call.
                t1 = time_ns()
                g = info[4]
                name = names_get(g)
                if name is None:
                    name = resolve(g)
                c = counters.get(name)
                if c is None:
                    c = counters.setdefault(name, itertools.count())
                row = (api_idx, t0, t1, t1, info[0], info[1], info[2], info[3], name, next(c),
                       next(rec.seq), phase_get(), tid, None)
                for s in sessions:
                    buf = s._buf
                    buf.append(row)
                    if len(buf) >= s.flush_events or t1 >= s._flush_deadline_ns:
                        s.flush(blocking=False)
                return res
            record(api_idx, info, t0, res, None, ev)
            return res

        wrapper.__commscope_original__ = orig
        return wrapper

    def _make_batch_wrapper(self, orig: Any) -> Any:
        busy = self.busy
        rec = self

        @functools.wraps(orig)
        def batch_isend_irecv(p2p_op_list, *args, **kwargs):
            tid = _get_ident()
            if tid in busy or not rec.sessions:
                return orig(p2p_op_list, *args, **kwargs)
            t0 = time_ns()
            try:
                infos = [_p2p_op_info(p) for p in p2p_op_list]
            except Exception:
                return orig(p2p_op_list, *args, **kwargs)
            ev = rec.start_event(infos[0][1][8]) if (rec.cuda_timing and infos) else None
            busy[tid] = True
            try:
                res = orig(p2p_op_list, *args, **kwargs)
            except BaseException as exc:
                del busy[tid]
                rec.record_batch(infos, t0, None, exc, ev)
                raise
            del busy[tid]
            rec.record_batch(infos, t0, res, None, ev)
            return res

        batch_isend_irecv.__commscope_original__ = orig
        return batch_isend_irecv

    def _make_lifecycle_wrapper(self, orig: Any, attr: str) -> Any:
        rec = self

        @functools.wraps(orig)
        def lifecycle(*args, **kwargs):
            if attr == "destroy_process_group":
                # Flush while group info can still be resolved and before the store goes away.
                for s in rec.sessions + rec.paused:
                    s.flush()
            res = orig(*args, **kwargs)
            rec.on_process_group_change()
            if attr == "init_process_group":
                for s in rec.sessions + rec.paused:
                    s._on_init_process_group()
            return res

        lifecycle.__commscope_original__ = orig
        return lifecycle

    def _make_wait_tensor(self, orig: Any) -> Any:
        rec = self

        @functools.wraps(orig)
        def wait_tensor(tensor):
            ent = rec.pending_tensors.pop(id(tensor), None) if rec.pending_tensors else None
            if ent is None:
                return orig(tensor)
            rows = ent[1]
            _mark_wait(rows)
            try:
                out = orig(tensor)
            except BaseException as exc:
                rec._complete(rows, "wait_tensor", exc)
                raise
            rec._complete(rows, "wait_tensor", None)
            return out

        wait_tensor.__commscope_original__ = orig
        return wait_tensor

    def _patch_work_type(self, typ: type) -> None:
        rec = self
        orig_wait = typ.wait
        orig_is_completed = typ.is_completed

        def wait(self, *args, **kwargs):
            ent = rec.pending.get(id(self))
            if ent is None:
                return orig_wait(self, *args, **kwargs)
            rows = ent[1]
            _mark_wait(rows)
            try:
                out = orig_wait(self, *args, **kwargs)
            except BaseException as exc:
                rec.pending.pop(id(self), None)
                rec._complete(rows, "wait", exc)
                raise
            rec.pending.pop(id(self), None)
            rec._complete(rows, "wait", None)
            return out

        def is_completed(self):
            done = orig_is_completed(self)
            if done:
                ent = rec.pending.pop(id(self), None)
                if ent is not None:
                    rec._complete(ent[1], "is_completed", None)
            return done

        self._work_types[typ] = (orig_wait, orig_is_completed)
        typ.wait = wait
        typ.is_completed = is_completed

    # -- recording ---------------------------------------------------------------------------
    def start_event(self, tensor: Any) -> Any:
        if tensor is None or not tensor.is_cuda:
            return None
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def _my_rank(self) -> int:
        if self.rank is None:
            import torch.distributed as dist

            self.rank = dist.get_rank() if dist.is_initialized() else 0
        return self.rank

    def _row(self, api_idx: int, info: tuple, t0: int, t1: int, name: str, pg_seq: int,
             peer: int | None, root: int | None, is_async: bool, exc: BaseException | None,
             ev: Any) -> list:
        x = [None, "pending" if is_async else "return", peer, root, bool(info[7]),
             None if exc is None else _format_exc(exc),
             None if ev is None else f"cuda:{info[8].device.index}",
             None if ev is None else [ev, None]]
        return [api_idx, t0, None if is_async else t1, t1, info[0], info[1], info[2], info[3],
                name, pg_seq, next(self.seq), _CURRENT.get(), _get_ident(), x]

    def _next_pg_seq(self, key: Any) -> int:
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters.setdefault(key, itertools.count())
        return next(counter)

    def record(self, api_idx: int, info: tuple, t0: int, res: Any, exc: BaseException | None,
               ev: Any) -> None:
        """Build the row of one call (general path) and hand it to every active session."""
        t1 = time_ns()
        name = self.groups.resolve(info[4])
        op = API_TABLE[api_idx][1]
        peer, root = info[5], info[6]
        if info[9] is not None and peer is None and root is None:
            g = self.groups.global_rank(name, info[9])
            if op in (P2P_SEND, P2P_RECV):
                peer = g
            else:
                root = g
        if op == P2P_RECV and peer is None and isinstance(res, int):
            peer = res  # recv from any source returns the sender
        if op == P2P_SEND:
            key = (name, self._my_rank(), peer)
        elif op == P2P_RECV:
            key = (name, peer, self._my_rank())
        else:
            key = name
        is_async = bool(info[7]) and exc is None and res is not None
        row = self._row(api_idx, info, t0, t1, name, self._next_pg_seq(key), peer, root,
                        is_async, exc, ev)
        if is_async:
            self._register_async(res, [row])
        elif ev is not None:
            self._end_event(row)
        self._emit(row)

    def record_batch(self, infos: list, t0: int, res: Any, exc: BaseException | None,
                     ev: Any) -> None:
        """One row per P2POp of a batch_isend_irecv; completion is the batch's wait."""
        t1 = time_ns()
        me = self._my_rank()
        is_async = exc is None and bool(res)
        rows = []
        for i, (is_send, info) in enumerate(infos):
            name = self.groups.resolve(info[4])
            peer = info[5]
            if peer is None and info[9] is not None:
                peer = self.groups.global_rank(name, info[9])
            key = (name, me, peer) if is_send else (name, peer, me)
            rows.append(self._row(_BATCH_SEND if is_send else _BATCH_RECV, info, t0, t1, name,
                                  self._next_pg_seq(key), peer, None, is_async, exc,
                                  ev if i == 0 else None))
        if is_async:
            # Coalesced batches return one work for all ops; otherwise one per op.
            works = list(res)
            if len(works) == len(rows):
                for w, row in zip(works, rows):
                    self._register_async(w, [row])
            else:
                for w in works:
                    self._register_async(w, rows)
        elif ev is not None and rows:
            self._end_event(rows[0])
        for row in rows:
            self._emit(row)

    def _register_async(self, res: Any, rows: list) -> None:
        from torch import Tensor

        if isinstance(res, DispatchHandle):
            if res.ns == "_c10d_functional":  # output tensors, completed by wait_tensor
                outs = res.obj if isinstance(res.obj, list) else [res.obj]
                self._pend_tensors([t for t in outs if isinstance(t, Tensor)], rows)
                return
            res = res.obj
        if isinstance(res, (Tensor, list, tuple)):
            tensors = res if isinstance(res, (list, tuple)) else (res,)
            elems = [e for e in (getattr(t, "elem", None) for t in tensors)  # AsyncCollectiveTensor
                     if isinstance(e, Tensor)]
            if elems:
                self._pend_tensors(elems, rows)
            else:  # plain tensors: the functional collective already waited
                self._complete(rows, "return", None)
            return
        typ = type(res)
        if typ not in self._work_types and hasattr(typ, "wait"):
            try:
                self._patch_work_type(typ)
            except (TypeError, AttributeError):
                self._complete(rows, "unobserved", None)
                return
        self.pending[id(res)] = (res, rows)

    def _pend_tensors(self, tensors: list, rows: list) -> None:
        """Rows complete at the first wait_tensor on any of `tensors` (one coalesced work)."""
        keys = [id(t) for t in tensors]
        for k, t in zip(keys, tensors):
            self.pending_tensors[k] = (t, rows)
        if len(keys) > 1:  # the siblings are dropped when one of them completes
            self.sibling_keys[id(rows)] = keys

    def _complete(self, rows: list, how: str, exc: BaseException | None) -> None:
        t = time_ns()
        for row in rows:
            if row[R.TEND] is None:
                x = row[R.X]
                if x[X.GPU] is not None and x[X.GPU][1] is None:
                    self._end_event(row)
                row[R.TEND] = t
                x[X.COMPLETION] = how
                if exc is not None and x[X.ERROR] is None:
                    x[X.ERROR] = _format_exc(exc)
        # Tensors of a coalesced functional call share rows: drop the siblings too.
        for key in self.sibling_keys.pop(id(rows), ()):
            self.pending_tensors.pop(key, None)

    def _end_event(self, row: list) -> None:
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        row[R.X][X.GPU][1] = ev

    def _complete_all_unobserved(self) -> None:
        for _, rows in list(self.pending.values()) + list(self.pending_tensors.values()):
            for row in rows:
                if row[R.TEND] is None:
                    row[R.TEND] = row[R.TRET]
                    row[R.X][X.COMPLETION] = "unobserved"
        self.pending.clear()
        self.pending_tensors.clear()
        self.sibling_keys.clear()

    def _emit(self, row: list) -> None:
        for s in self.sessions:
            buf = s._buf
            buf.append(row)
            if len(buf) >= s.flush_events or row[R.TRET] >= s._flush_deadline_ns:
                s.flush(blocking=False)


def _mark_wait(rows: list) -> None:
    """Record when waiting on these async rows began (the first wait only)."""
    tw = time_ns()
    for row in rows:
        x = row[R.X]
        if x[X.TWAIT] is None:
            x[X.TWAIT] = tw


def _p2p_op_info(p: Any) -> tuple[bool, tuple]:
    fn = getattr(p.op, "__commscope_original__", p.op)
    is_send = getattr(fn, "__name__", "") in ("isend", "send")
    t = p.tensor
    n = t.numel()
    return is_send, (t.dtype, n, n, n, p.group, getattr(p, "peer", None), None, True, t,
                     getattr(p, "group_peer", None))


def _format_exc(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:2000]


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


RECORDER = Recorder()
