"""Completion of async calls: Work handles and functional-collective tensors until waited on.

An async call's rows are emitted at issue with `t_end_ns` unset; they complete when the user
waits on the returned `Work` (`wait`, `is_completed` returning True) or calls `wait_tensor` on a
functional collective's output. `Work.wait`/`is_completed` are patched per Work type on first use.
"""

from __future__ import annotations

from time import time_ns
from typing import Any

from ._cuda_events import end_event
from ._rows import DispatchHandle, R, X, format_exc

__all__ = ["WorkTracker", "mark_wait", "MAX_PENDING"]

#: Async calls tracked at once. Work never waited on would otherwise be held forever (with its
#: tensors, possibly GPU memory); past this bound the oldest is let go and recorded with
#: completion 'unobserved' (t_end_ns = t_return_ns), as at the end of the trace.
MAX_PENDING = 4096


class WorkTracker:
    """Pending async calls of the process, keyed by the id of their handle."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[Any, list]] = {}          # id(Work) -> (work, rows)
        self.pending_tensors: dict[int, tuple[Any, list]] = {}  # id(tensor) -> (tensor, rows)
        self.sibling_keys: dict[int, list[int]] = {}  # id(rows) -> pending_tensors keys
        self._work_types: dict[type, tuple[Any, Any]] = {}

    def register_async(self, res: Any, rows: list) -> None:
        """Track `rows` until the handle `res` (Work, tensor(s), DispatchHandle) completes."""
        from torch import Tensor

        if isinstance(res, DispatchHandle):
            if res.ns == "_c10d_functional":  # output tensors, completed by wait_tensor
                outs = res.obj if isinstance(res.obj, list) else [res.obj]
                self.pend_tensors([t for t in outs if isinstance(t, Tensor)], rows)
                return
            res = res.obj
        if isinstance(res, (Tensor, list, tuple)):
            tensors = res if isinstance(res, (list, tuple)) else (res,)
            elems = [e for e in (getattr(t, "elem", None) for t in tensors)  # AsyncCollectiveTensor
                     if isinstance(e, Tensor)]
            if elems:
                self.pend_tensors(elems, rows)
            else:  # plain tensors: the functional collective already waited
                self.complete(rows, "return", None)
            return
        typ = type(res)
        if typ not in self._work_types and hasattr(typ, "wait"):
            try:
                self._patch_work_type(typ)
            except (TypeError, AttributeError):
                self.complete(rows, "unobserved", None)
                return
        self.pending[id(res)] = (res, rows)
        if len(self.pending) > MAX_PENDING:
            self._evict_oldest(self.pending)

    def _evict_oldest(self, table: dict) -> None:
        _, rows = table.pop(next(iter(table)))  # dicts keep insertion order: the oldest
        _unobserved(rows)
        for key in self.sibling_keys.pop(id(rows), ()):
            self.pending_tensors.pop(key, None)

    def pend_tensors(self, tensors: list, rows: list) -> None:
        """Rows complete at the first wait_tensor on any of `tensors` (one coalesced work)."""
        keys = [id(t) for t in tensors]
        for k, t in zip(keys, tensors):
            self.pending_tensors[k] = (t, rows)
        if len(keys) > 1:  # the siblings are dropped when one of them completes
            self.sibling_keys[id(rows)] = keys
        while len(self.pending_tensors) > MAX_PENDING:
            self._evict_oldest(self.pending_tensors)

    def complete(self, rows: list, how: str, exc: BaseException | None) -> None:
        """Mark `rows` completed now, observed by `how` (wait, is_completed, wait_tensor, ...)."""
        t = time_ns()
        for row in rows:
            if row[R.TEND] is None:
                x = row[R.X]
                if x[X.GPU] is not None and x[X.GPU][1] is None:
                    end_event(row)
                row[R.TEND] = t
                x[X.COMPLETION] = how
                if exc is not None and x[X.ERROR] is None:
                    x[X.ERROR] = format_exc(exc)
        # Tensors of a coalesced functional call share rows: drop the siblings too.
        for key in self.sibling_keys.pop(id(rows), ()):
            self.pending_tensors.pop(key, None)

    def complete_all_unobserved(self) -> None:
        """Tracing ends: every call still pending completes as 'unobserved' at its return."""
        for _, rows in list(self.pending.values()) + list(self.pending_tensors.values()):
            _unobserved(rows)
        self.pending.clear()
        self.pending_tensors.clear()
        self.sibling_keys.clear()

    def _patch_work_type(self, typ: type) -> None:
        tracker = self
        orig_wait = typ.wait
        orig_is_completed = typ.is_completed

        def wait(self, *args, **kwargs):
            ent = tracker.pending.get(id(self))
            if ent is None:
                return orig_wait(self, *args, **kwargs)
            rows = ent[1]
            mark_wait(rows)
            try:
                out = orig_wait(self, *args, **kwargs)
            except BaseException as exc:
                tracker.pending.pop(id(self), None)
                tracker.complete(rows, "wait", exc)
                raise
            tracker.pending.pop(id(self), None)
            tracker.complete(rows, "wait", None)
            return out

        def is_completed(self):
            done = orig_is_completed(self)
            if done:
                ent = tracker.pending.pop(id(self), None)
                if ent is not None:
                    tracker.complete(ent[1], "is_completed", None)
            return done

        self._work_types[typ] = (orig_wait, orig_is_completed)
        typ.wait = wait
        typ.is_completed = is_completed

    def restore_work_types(self) -> None:
        """Put torch's own `wait`/`is_completed` back on every patched Work type."""
        for typ, (wait, is_completed) in self._work_types.items():
            typ.wait = wait
            typ.is_completed = is_completed
        self._work_types.clear()


def _unobserved(rows: list) -> None:
    """Completion never observed: t_end_ns = t_return_ns, completion 'unobserved'."""
    for row in rows:
        if row[R.TEND] is None:
            row[R.TEND] = row[R.TRET]
            row[R.X][X.COMPLETION] = "unobserved"


def mark_wait(rows: list) -> None:
    """Record when waiting on these async rows began (the first wait only)."""
    tw = time_ns()
    for row in rows:
        x = row[R.X]
        if x[X.TWAIT] is None:
            x[X.TWAIT] = tw
