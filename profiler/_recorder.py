"""The hooks: wrappers around torch.distributed and functional collectives, and the shared recorder.

One process-wide `Recorder` owns the installed wrappers and the counters (`seq`, `pg_seq`); every
active `TraceSession` receives each row. The hot path builds one list per call and appends it to
the sessions' buffers; everything derived (names, bytes, labels, Arrow conversion) is computed
at flush time, in bulk.

Re-entry: torch delegates internally (`all_gather_into_tensor` -> `all_gather_single`,
`send` -> `isend`); a thread-local depth flag makes the outermost call the only one recorded.
"""

from __future__ import annotations

import functools
import itertools
import threading
from time import time_ns
from typing import Any

from ._groups import GroupRegistry
from ._ops import DIST_APIS, FUNCOL_APIS, P2P_RECV, P2P_SEND, ApiSpec, CallInfo
from ._phases import _CURRENT

__all__ = ["RECORDER", "Recorder", "API_TABLE", "R", "DispatchHandle"]

_get_tid = threading.get_native_id


class R:
    """Indices of the fields of a raw row (a list, mutated once when an async call completes)."""

    API, T0, TEND, TRET, TWAIT, COMPLETION, DTYPE, COUNT, IN, OUT, PG, PGSEQ, SEQ, PEER, ROOT, \
        ASYNC, PHASE, ERROR, DEVICE, GPU, TID = range(21)


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


class _TLS(threading.local):
    depth = 0


class Recorder:
    def __init__(self) -> None:
        self.sessions: list[Any] = []
        self.tls = _TLS()
        self.groups = GroupRegistry()
        self.seq = itertools.count()
        self.counters: dict[Any, itertools.count] = {}
        self.pending: dict[int, tuple[Any, list]] = {}      # id(Work) -> (work, rows)
        self.pending_tensors: dict[int, tuple[Any, list]] = {}  # id(tensor) -> (tensor, rows)
        self.cuda_timing = False
        self.rank: int | None = None
        self._patches: list[tuple[Any, str, Any]] = []
        self._work_types: dict[type, tuple[Any, Any]] = {}
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self, session: Any) -> None:
        with self._lock:
            if not self.sessions:
                self._reset_counters()
                self._install()
            self.sessions.append(session)
            self.cuda_timing = any(s.cuda_timing for s in self.sessions) and _cuda_available()

    def detach(self, session: Any) -> None:
        with self._lock:
            if session in self.sessions:
                self.sessions.remove(session)
            if not self.sessions:
                self._uninstall()
                self._complete_all_unobserved()
            self.cuda_timing = any(s.cuda_timing for s in self.sessions) and _cuda_available()

    def _reset_counters(self) -> None:
        self.seq = itertools.count()
        self.counters = {}
        self.groups.clear()
        self.rank = None

    def on_process_group_change(self) -> None:
        self.groups.clear()
        self.rank = None

    @property
    def installed(self) -> bool:
        return bool(self._patches)

    def _patch(self, owner: Any, attr: str, new: Any) -> None:
        self._patches.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    def _install(self) -> None:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        owners = (dist, c10d)
        for spec in DIST_APIS:
            orig = getattr(c10d, spec.attr, None)
            if orig is None:
                continue
            wrapper = self._make_wrapper(_register_api(spec.name, spec.op), spec, orig)
            for owner in owners:
                if getattr(owner, spec.attr, None) is orig:
                    self._patch(owner, spec.attr, wrapper)
        orig_batch = c10d.batch_isend_irecv
        batch = self._make_batch_wrapper(orig_batch)
        for owner in owners:
            if getattr(owner, "batch_isend_irecv", None) is orig_batch:
                self._patch(owner, "batch_isend_irecv", batch)
        for attr in ("init_process_group", "destroy_process_group"):
            orig = getattr(c10d, attr)
            wrapped = self._make_lifecycle_wrapper(orig, attr)
            for owner in owners:
                if getattr(owner, attr, None) is orig:
                    self._patch(owner, attr, wrapped)
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
                            self._make_wrapper(_register_api(spec.name, spec.op), spec, orig))
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
    def _make_wrapper(self, api_idx: int, spec: ApiSpec, orig: Any) -> Any:
        extract = spec.extract
        tls = self.tls
        record = self.record
        rec = self

        @functools.wraps(orig)
        def wrapper(*args, **kwargs):
            if tls.depth or not rec.sessions:
                return orig(*args, **kwargs)
            t0 = time_ns()
            try:
                info = extract(args, kwargs)
            except Exception:
                # Arguments we cannot read: let torch handle (and reject) them untouched.
                return orig(*args, **kwargs)
            ev = rec.start_event(info.tensor) if rec.cuda_timing else None
            tls.depth = 1
            try:
                res = orig(*args, **kwargs)
            except BaseException as exc:
                tls.depth = 0
                record(api_idx, info, t0, None, exc, ev)
                raise
            tls.depth = 0
            record(api_idx, info, t0, res, None, ev)
            return res

        wrapper.__commscope_original__ = orig
        return wrapper

    def _make_batch_wrapper(self, orig: Any) -> Any:
        tls = self.tls
        rec = self

        @functools.wraps(orig)
        def batch_isend_irecv(p2p_op_list, *args, **kwargs):
            if tls.depth or not rec.sessions:
                return orig(p2p_op_list, *args, **kwargs)
            t0 = time_ns()
            try:
                infos = [_p2p_op_info(p) for p in p2p_op_list]
            except Exception:
                return orig(p2p_op_list, *args, **kwargs)
            ev = rec.start_event(infos[0][1].tensor) if (rec.cuda_timing and infos) else None
            tls.depth = 1
            try:
                res = orig(p2p_op_list, *args, **kwargs)
            except BaseException as exc:
                tls.depth = 0
                rec.record_batch(infos, t0, None, exc, ev)
                raise
            tls.depth = 0
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
                for s in list(rec.sessions):
                    s.flush()
            res = orig(*args, **kwargs)
            rec.on_process_group_change()
            if attr == "init_process_group":
                for s in list(rec.sessions):
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
            tw = time_ns()
            for row in rows:
                if row[R.TWAIT] is None:
                    row[R.TWAIT] = tw
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
            tw = time_ns()
            for row in rows:
                if row[R.TWAIT] is None:
                    row[R.TWAIT] = tw
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

    def record(self, api_idx: int, info: CallInfo, t0: int, res: Any, exc: BaseException | None,
               ev: Any) -> None:
        """Build the row of one call and hand it to every active session."""
        t1 = time_ns()
        name = self.groups.resolve(info.group)
        op = API_TABLE[api_idx][1]
        peer, root = info.peer, info.root
        if info.group_peer is not None and peer is None and root is None:
            g = self.groups.global_rank(name, info.group_peer)
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
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters.setdefault(key, itertools.count())
        is_async = info.async_op and exc is None and res is not None
        row = [api_idx, t0, None if is_async else t1, t1, None,
               "pending" if is_async else "return", info.dtype, info.count, info.in_numel,
               info.out_numel, name, next(counter), next(self.seq), peer, root, info.async_op,
               _CURRENT.get(), None if exc is None else _format_exc(exc),
               None if ev is None else f"cuda:{info.tensor.device.index}", None, _get_tid()]
        if ev is not None:
            row[R.GPU] = [ev, None]
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
        rows = []
        for is_send, info in infos:
            name = self.groups.resolve(info.group)
            peer = info.peer
            if peer is None and info.group_peer is not None:
                peer = self.groups.global_rank(name, info.group_peer)
            key = (name, me, peer) if is_send else (name, peer, me)
            counter = self.counters.get(key)
            if counter is None:
                counter = self.counters.setdefault(key, itertools.count())
            is_async = exc is None and bool(res)
            row = [_BATCH_SEND if is_send else _BATCH_RECV, t0, None if is_async else t1, t1,
                   None, "pending" if is_async else "return", info.dtype, info.count,
                   info.in_numel, info.out_numel, name, next(counter), next(self.seq), peer,
                   None, True, _CURRENT.get(), None if exc is None else _format_exc(exc),
                   None if ev is None else f"cuda:{info.tensor.device.index}", None, _get_tid()]
            rows.append(row)
        if ev is not None and rows:
            rows[0][R.GPU] = [ev, None]
        if exc is None and res:
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
                for t in outs:
                    if isinstance(t, Tensor):
                        self.pending_tensors[id(t)] = (t, rows)
                return
            res = res.obj
        if isinstance(res, (Tensor, list, tuple)):
            tensors = res if isinstance(res, (list, tuple)) else (res,)
            waited = True
            for t in tensors:
                elem = getattr(t, "elem", None)  # AsyncCollectiveTensor
                if isinstance(elem, Tensor):
                    self.pending_tensors[id(elem)] = (elem, rows)
                    waited = False
            if waited:  # plain tensors: the functional collective already waited
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

    def _complete(self, rows: list, how: str, exc: BaseException | None) -> None:
        t = time_ns()
        for row in rows:
            if row[R.TEND] is None:
                if row[R.GPU] is not None and row[R.GPU][1] is None:
                    self._end_event(row)
                row[R.TEND] = t
                row[R.COMPLETION] = how
                if exc is not None and row[R.ERROR] is None:
                    row[R.ERROR] = _format_exc(exc)
        # Tensors of a coalesced functional call share rows: drop the siblings too.
        if how == "wait_tensor" and self.pending_tensors:
            for key in [k for k, v in self.pending_tensors.items() if v[1] is rows]:
                del self.pending_tensors[key]

    def _end_event(self, row: list) -> None:
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        row[R.GPU][1] = ev

    def _complete_all_unobserved(self) -> None:
        for _, rows in list(self.pending.values()) + list(self.pending_tensors.values()):
            for row in rows:
                if row[R.TEND] is None:
                    row[R.TEND] = row[R.TRET]
                    row[R.COMPLETION] = "unobserved"
        self.pending.clear()
        self.pending_tensors.clear()

    def _emit(self, row: list) -> None:
        for s in self.sessions:
            buf = s._buf
            buf.append(row)
            if len(buf) >= s.flush_events or row[R.TRET] >= s._flush_deadline_ns:
                s.flush(blocking=False)


def _p2p_op_info(p: Any) -> tuple[bool, CallInfo]:
    fn = getattr(p.op, "__commscope_original__", p.op)
    is_send = getattr(fn, "__name__", "") in ("isend", "send")
    t = p.tensor
    n = t.numel()
    return is_send, CallInfo(t.dtype, n, n, n, p.group, getattr(p, "peer", None), None, True, t,
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
