"""Wrapper factories: the functions installed in place of torch.distributed's and funcol's.

Each wrapper checks the re-entry flag, reads the call's arguments with its `ApiSpec` extractor,
calls the original and hands the result to the recorder. The common blocking case is inlined;
where the compiled hook is built (`_chook`), the APIs of `_ops.NATIVE_LAYOUTS` run that case in C
and hand every other case to the Python wrapper below.
"""

from __future__ import annotations

import functools
import inspect
import threading
from struct import error as struct_error
from time import time_ns
from typing import Any

from ._columns import _chook, pack
from ._native import native
from ._ops import NATIVE_LAYOUTS, ApiSpec
from ._phases import _CURRENT
from ._rows import R
from ._work import mark_wait

__all__ = ["make_wrapper", "make_batch_wrapper", "make_lifecycle_wrapper", "make_wait_tensor",
           "entry_row"]

_get_ident = threading.get_ident


def make_wrapper(rec: Any, api_idx: int, spec: ApiSpec, orig: Any, simple: bool) -> Any:
    """Wrap one API. `simple`: an unrooted collective whose group argument is hashable,
    eligible for the inlined fast path when it runs blocking on CPU tensors."""
    # `info` below is a tuple in CallInfo's field order (see _ops): 0 dtype, 1-3 counts,
    # 4 group, 5 peer, 6 root, 7 async_op, 8 tensor, 9 group-relative peer/root.
    extract = spec.extract
    busy = rec.busy
    begin = rec.begin
    finish = rec.finish
    sessions = rec.sessions
    infos_get = rec.groups._names.get
    resolve_info = rec.groups.resolve_info
    counters = rec.counters
    new_counter = rec.new_counter
    phase_get = _CURRENT.get
    key_code = rec.keys.code
    # The last (dtype, group, phase, key code, step) of this API, as one tuple so that threads
    # read and replace it whole: consecutive calls almost always share them, so the key table
    # is consulted about once per phase.
    last = [(None, None, None, 0, 0)]

    def fail(entry: tuple, tid: int, exc: BaseException) -> None:
        finish(entry_row(entry, tid), None, exc)

    def raw(entry: tuple, tid: int, t1: int) -> None:
        # A field that is not an int64: an ordinary row instead of a packed record.
        row = entry_row(entry, tid)
        row[R.TEND] = row[R.TRET] = t1
        rec.emit(row)

    @functools.wraps(orig)
    def wrapper(*args, **kwargs):
        tid = _get_ident()
        if tid in busy or not sessions:
            return orig(*args, **kwargs)
        t0 = time_ns()
        try:
            info = extract(*args, **kwargs)
            # (`simple` APIs never take a group-relative peer/root: info[9] is None.)
            if simple and not info[7] and not rec.cuda_timing:
                # Fast path (the common case), inlined: an entry tuple while the call runs (a
                # timed flush writes it as 'started'), one packed record once it returned.
                g = info[4]
                gi = infos_get(g)
                if gi is None:
                    gi = resolve_info(g)
                c = counters.get(gi[0])
                if c is None:
                    c = counters.setdefault(gi[0], new_counter())
                pg_seq, seq, ph = next(c), next(rec.seq), phase_get()
                entry = (api_idx, t0, info, gi, pg_seq, seq, ph)
                busy[tid] = entry
            else:
                entry = None
                row = begin(api_idx, info, t0,
                            rec.start_event(info[8]) if rec.cuda_timing else None)
                busy[tid] = row  # a timed flush writes it as 'started' until the call returns
        except Exception:
            # Arguments we cannot read: let torch handle (and reject) them untouched.
            return orig(*args, **kwargs)
        try:
            res = orig(*args, **kwargs)
        except BaseException as exc:
            del busy[tid]
            if entry is None:
                finish(row, None, exc)
            else:
                fail(entry, tid, exc)
            raise
        del busy[tid]
        if entry is None:
            finish(row, res, None)
            return res
        t1 = time_ns()
        dt = info[0]
        k = last[0]
        if dt is k[0] and gi is k[1] and ph is k[2]:
            code, step = k[3], k[4]
        else:
            code, step = key_code(api_idx, dt, gi, ph)
            last[0] = (dt, gi, ph, code, step)
        try:
            packed = pack(t0, t1, info[1], info[2], info[3], pg_seq, seq, tid, step, code)
        except struct_error:
            raw(entry, tid, t1)
            return res
        for s in sessions:
            ints = s._cols.ints
            ints.frombytes(packed)
            if len(ints) >= ints.flush_at:  # see TraceSession.__init__
                s.flush(blocking=False)
        return res

    wrapper.__commscope_original__ = orig
    layout = NATIVE_LAYOUTS.get(extract) if simple else None
    if _chook is None or layout is None:
        return wrapper
    params = extract.__code__.co_varnames[:extract.__code__.co_argcount]
    count, other, other_is_out = layout
    hook = _chook.Hook(
        orig=orig, slow=wrapper, rec=rec, api_idx=api_idx, params=params,
        count=params.index(count) if count else -1, other=params.index(other) if other else -1,
        other_is_out=other_is_out, group=params.index("group"),
        async_op=params.index("async_op"), key_code=key_code, phase_var=_CURRENT, fail=fail,
        raw=raw, tensor=_plain_tensor())
    functools.update_wrapper(hook, orig)
    hook.__commscope_original__ = orig
    return hook


_CTENSOR_ABI = 2  # the _ctensor capsule signature the compiled hook calls (see _ctensor.cpp)


def _plain_tensor() -> tuple | None:
    """(torch.Tensor, TensorBase's dtype getter and numel method, the C++ tensor reader or None)
    when torch.Tensor takes both from TensorBase: the compiled hook then reads exact Tensors
    without attribute lookups (or through Python not at all) for as long as the type is not
    modified."""
    import torch

    base = vars(torch._C.TensorBase)
    dtype, numel = base.get("dtype"), base.get("numel")
    if dtype is None or numel is None or \
            inspect.getattr_static(torch.Tensor, "dtype") is not dtype or \
            inspect.getattr_static(torch.Tensor, "numel") is not numel:
        return None
    # torch is imported first, so the reader links to this process's torch libraries whichever
    # venv built it; a reader left from another torch or an older signature is not used.
    ct = native("_ctensor")
    info = ct.tensor_info if ct is not None and torch.__version__ == ct.TORCH_VERSION and \
        getattr(ct, "ABI", 1) == _CTENSOR_ABI else None
    return torch.Tensor, dtype, numel, info


def hook_kind() -> str:
    """Which recording path this process runs, for benchmarks and reports to state."""
    if _chook is None:
        return "pure-Python hook (COMMSCOPE_NO_NATIVE=1, or the extension was not built)"
    plain = _plain_tensor()
    if plain is not None and plain[3] is not None:
        return "compiled hook (profiler/_chook.c) with the C++ tensor reader (_ctensor.cpp)"
    return ("compiled hook (profiler/_chook.c) asking torch for counts and dtypes (C++ tensor "
            "reader not built for this torch)")


def entry_row(entry: tuple, tid: int) -> list:
    """The raw row (`_rows.R`) of a fast-path call from its entry tuple (returned or not):
    (api index, t0, info, group info, pg_seq, seq, phase), where info starts with dtype and the
    three counts (the Python path's is the extractor's tuple; the compiled hook's just those)."""
    api_idx, t0, info, gi, pg_seq, seq, ph = entry
    return [api_idx, t0, None, None, info[0], info[1], info[2], info[3], gi, pg_seq, seq, ph,
            tid, None]


def make_batch_wrapper(rec: Any, orig: Any) -> Any:
    """Wrap `batch_isend_irecv`: one row per P2POp."""
    busy = rec.busy

    @functools.wraps(orig)
    def batch_isend_irecv(p2p_op_list, *args, **kwargs):
        tid = _get_ident()
        if tid in busy or not rec.sessions:
            return orig(p2p_op_list, *args, **kwargs)
        t0 = time_ns()
        try:
            infos = [p2p_op_info(p) for p in p2p_op_list]
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


def make_lifecycle_wrapper(rec: Any, orig: Any, attr: str) -> Any:
    """Wrap init_process_group / destroy_process_group: group caches and run agreement."""

    @functools.wraps(orig)
    def lifecycle(*args, **kwargs):
        if attr == "destroy_process_group":
            # Flush while group info can still be resolved and before the store goes away.
            for s in rec.sessions + rec.paused:
                s.flush()
                s._wait_writer()  # identity and agreement resolved while the group exists
        res = orig(*args, **kwargs)
        rec.on_process_group_change()
        if attr == "init_process_group":
            for s in rec.sessions + rec.paused:
                s._on_init_process_group()
        return res

    lifecycle.__commscope_original__ = orig
    return lifecycle


def make_wait_tensor(rec: Any, orig: Any) -> Any:
    """Wrap funcol.wait_tensor: completes the functional collective that produced the tensor."""

    @functools.wraps(orig)
    def wait_tensor(tensor):
        ent = rec.pending_tensors.pop(id(tensor), None) if rec.pending_tensors else None
        if ent is None:
            return orig(tensor)
        rows = ent[1]
        mark_wait(rows)
        try:
            out = orig(tensor)
        except BaseException as exc:
            rec._complete(rows, "wait_tensor", exc)
            raise
        rec._complete(rows, "wait_tensor", None)
        return out

    wait_tensor.__commscope_original__ = orig
    return wait_tensor


def p2p_op_info(p: Any) -> tuple[bool, tuple]:
    """(is_send, CallInfo-ordered tuple) of one P2POp of a batch."""
    fn = getattr(p.op, "__commscope_original__", p.op)
    is_send = getattr(fn, "__name__", "") in ("isend", "send")
    t = p.tensor
    n = t.numel()
    return is_send, (t.dtype, n, n, n, p.group, getattr(p, "peer", None), None, True, t,
                     getattr(p, "group_peer", None))
