"""`profiler.instrument`: record the calls of any communicator method with the trace schema.

Engines and libraries move data through their own objects (a GroupCoordinator, a custom
all-reduce, a shared-memory op) that never reach the `torch.distributed` functions the hooks
wrap. `instrument(Class, "all_reduce", op="all_reduce", group=...)` wraps such a method at class
(or object) level; every call made while a trace session records becomes one row, with bytes by
the nccl-tests convention. Calls the wrapped method makes into hooked `torch.distributed`
functions are not recorded again (the thread is marked busy, as for torch's own delegation).

Everything that knows the recorder's internal row layout is in `_emit_row` (one adapter), so
that a change of the recording internals touches one function.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from time import time_ns
from typing import Any

from . import _cuda_graphs
from ._groups import GroupInfo
from ._phases import _CURRENT
from ._recorder import RECORDER
from ._rows import R, X, format_exc, register_api
from ._schema import OPS

__all__ = ["instrument", "Instrumented", "wrap_method", "Desc", "SkipCall"]

_get_ident = threading.get_ident

# A call's description, as a describer returns it (a plain tuple: it is built on every call):
#   0 dtype (torch.dtype or None), 1 n: per-rank elements of the call's main buffer (see
#   _counts), 2 group (ProcessGroup, group name or None for the default group),
#   3 peer (global rank or None), 4 root (global rank or None), 5 a tensor of the call (device)
Desc = tuple



class SkipCall(Exception):
    """Raised by a describer for a call that moves nothing (a group of one): run unrecorded."""


# -- the adapter to the recorder --------------------------------------------------------------------
def _emit_row(api_idx: int, op: str, desc: Desc, t0: int, t1: int, exc: BaseException | None,
              gpu: Any, source: str, cuda_graph: str | None) -> tuple | None:
    """Hand one completed call to every recording session. Returns the row's template (what a
    CUDA-graph replay needs to emit it again), or None when nothing records.

    This is the only function that knows the recorder's row layout (R and X of _recorder): the
    group/sequence bookkeeping is the recorder's own, so pg_seq stays one sequence per group for
    hooked and instrumented calls alike.
    """
    if not RECORDER.sessions:
        return None
    dtype, n, group, peer, root, tensor = desc
    # Rows hold the group's info as captured now (a replayed template holds it already).
    info = group if isinstance(group, GroupInfo) else RECORDER.groups.resolve_info(group)
    name = info.name
    size = info.size if info.size > 0 else 1
    count, in_n, out_n = _counts(op, n, size)
    key = RECORDER.pg_seq_key(op, name, peer)
    device = _device_of(tensor)
    # The extra list carries source and cuda_graph (X.SOURCE, X.CUDA_GRAPH). Rows
    # and extras are tuples (the garbage collector stops tracking them) unless the writer must
    # later replace the CUDA event pair by a duration.
    x = (None, "return", peer, root, False, None if exc is None else format_exc(exc), device,
         gpu, source, cuda_graph)
    if gpu is not None:
        x = list(x)
    row = (api_idx, t0, t1, t1, dtype, count, in_n, out_n, info, RECORDER._next_pg_seq(key),
           next(RECORDER.seq), _CURRENT.get(), _get_ident(), x)
    RECORDER.emit(row)
    return (api_idx, op, (dtype, n, info, peer, root, device), source)


def _counts(op: str, n: int, size: int) -> tuple[int, int, int]:
    """(count, in_numel, out_numel) in NCCL's convention from the main buffer's element count:
    the input of all_gather/gather/all_to_all, the input (whole array) of reduce_scatter/scatter,
    the buffer otherwise."""
    if op in ("all_gather", "gather"):
        return n, n, n * size
    if op in ("reduce_scatter", "scatter"):
        return n // size, n, n // size
    return n, n, n


def _device_of(tensor: Any) -> str:
    if tensor is None:
        return "cpu"
    if isinstance(tensor, str):  # replayed templates keep the device, not the tensor
        return tensor
    if getattr(tensor, "is_cpu", True):  # one attribute read, no device object (hot path)
        return "cpu"
    dev = tensor.device
    return f"{dev.type}:{dev.index}" if dev.index is not None else dev.type


# `_emit_row` builds raw rows by hand: a change of the recorder's layout must fail here, at import,
# rather than write wrong rows.
if (R.X, X.GPU, X.SOURCE, X.CUDA_GRAPH) != (13, 7, 8, 9):
    raise RuntimeError("the recorder's row layout changed; update profiler/_instrument.py:_emit_row")


# -- wrapping ---------------------------------------------------------------------------------------
def wrap_method(orig: Callable, api: str, op: str, describe: Callable[..., Desc],
                source: str = "engine", post: Callable[[Any], tuple] | None = None) -> Callable:
    """A function that calls `orig` and records one row per call made while a session records.

    `describe(*args, **kwargs)` gets the call's own arguments and returns a `Desc`; if it raises,
    the call runs unrecorded. A `Desc` whose count is None is completed after the call by
    `post(result) -> (dtype, n, tensor)` (a receiver learns the size from what it got). Inner
    hooked calls are not recorded (the thread is busy). Under torch.compile tracing the wrapper
    steps aside (it would otherwise be traced into the graph). Recording never raises into the
    caller.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    api_idx = register_api(api, op)
    busy = RECORDER.busy
    sessions = RECORDER.sessions
    is_compiling = _is_compiling_fn()
    graphs = _cuda_graphs.STATE

    def finish(desc, t0, res, exc, ev, capturing):
        try:
            if desc[1] is None:
                dtype, n, t = post(res) if (post is not None and exc is None) else (None, 0, None)
                desc = (dtype, n, desc[2], desc[3], desc[4], t)
            tmpl = _emit_row(api_idx, op, desc, t0, time_ns(), exc, _end_pair(ev), source,
                             None if capturing is None else "capture")
            if capturing is not None and tmpl is not None and exc is None:
                graphs.add_to_template(capturing, tmpl)
        except Exception as err:  # a recording bug must not break the engine
            _warn_once(api, err)

    @functools.wraps(orig)
    def wrapper(*args, **kwargs):
        tid = _get_ident()
        if tid in busy or not sessions or is_compiling():
            return orig(*args, **kwargs)
        t0 = time_ns()
        try:
            desc = describe(*args, **kwargs)
        except SkipCall:
            return orig(*args, **kwargs)
        except Exception as err:  # arguments we cannot read: say so once, run unrecorded
            _warn_once(api, err)
            return orig(*args, **kwargs)
        capturing = graphs.capturing.get(tid)
        ev = None
        if capturing is None and RECORDER.cuda_timing and _device_of(desc[5]) != "cpu":
            ev = _start_event()
        busy[tid] = True
        try:
            res = orig(*args, **kwargs)
        except BaseException as exc:
            busy.pop(tid, None)
            finish(desc, t0, None, exc, ev, capturing)
            raise
        busy.pop(tid, None)
        finish(desc, t0, res, None, ev, capturing)
        return res

    wrapper.__commscope_original__ = orig
    return wrapper


_WARNED: set = set()


def _warn_once(api: str, err: BaseException) -> None:
    if api not in _WARNED:
        _WARNED.add(api)
        import sys

        print(f"commscope: could not record a call of {api}: {err!r}", file=sys.stderr)


def _is_compiling_fn() -> Callable[[], bool]:
    try:
        import torch

        return torch.compiler.is_compiling
    except Exception:
        return lambda: False


_start_event = _cuda_graphs._event  # a timing CUDA event recorded now (None without CUDA)


def _end_pair(ev: Any) -> Any:
    if ev is None:
        return None
    return [ev, _start_event()]


# -- the public function ----------------------------------------------------------------------------
class Instrumented:
    """Handle returned by `instrument`; `remove()` restores the original method."""

    def __init__(self, target: Any, method: str, had_own: bool, orig: Any) -> None:
        self.target, self.method, self._had_own, self._orig = target, method, had_own, orig

    def remove(self) -> None:
        """Put the original method back (idempotent)."""
        if self._orig is None:
            return
        if self._had_own:
            setattr(self.target, self.method, self._orig)
        else:
            try:
                delattr(self.target, self.method)
            except AttributeError:
                pass
        self._orig = None


def instrument(target: Any, method: str, *, op: str, group: Any = None,
               bytes_of: Callable[..., Any] | None = None, api: str | None = None
               ) -> Instrumented:
    """Record every call of `target.method` (a class or an object) as one trace row.

    `op` is the operation the method performs ("all_reduce", "all_gather", "reduce_scatter",
    "broadcast", "reduce", "gather", "scatter", "all_to_all", "send", "recv", "barrier").
    `group` gives the process group: a ProcessGroup, a group name, None for the default group, or
    a callable receiving the call's arguments (``self`` first for a class-level method) that
    returns one of those. `bytes_of` (called the same way) returns the call's main buffer: a
    tensor or list of tensors, or an int number of bytes; by default the first tensor argument.
    The main buffer is the per-rank input for all_gather/gather/all_to_all, the whole input
    array for reduce_scatter/scatter, the buffer otherwise; `count`/`bytes` then follow the
    nccl-tests convention like every other row. `api` names the method in the `api` column
    (default ``"<Class>.<method>"``). Rows have `source` = 'engine'.

    Calls are recorded only while a trace session records; hooked `torch.distributed` calls the
    method makes are folded into its row. Returns a handle whose `remove()` undoes the patch.
    """
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty attribute name, got {method!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    is_class = isinstance(target, type)
    orig = getattr(target, method, None)
    if orig is None or not callable(orig):
        raise AttributeError(f"{_qualname(target)} has no method {method!r}")
    own = vars(target).get(method) if hasattr(target, "__dict__") else None
    had_own = own is not None
    if is_class and isinstance(own, (staticmethod, classmethod)):
        raise TypeError(f"{_qualname(target)}.{method} is a {type(own).__name__}; "
                        "instrument an instance method")
    if had_own and hasattr(own, "__commscope_original__"):  # instrumenting twice replaces
        orig = own.__commscope_original__
    name = api or f"{_qualname(target)}.{method}"
    skip_self = 1 if is_class else 0
    describe = make_describer(op, group, bytes_of, skip_self)
    wrapped = wrap_method(orig, name, op, describe)
    _cuda_graphs.install_graph_hooks()  # calls captured into a CUDA graph replay with it
    setattr(target, method, wrapped)
    return Instrumented(target, method, had_own, orig)


def _qualname(target: Any) -> str:
    cls = target if isinstance(target, type) else type(target)
    return cls.__name__


def make_describer(op: str, group: Any, bytes_of: Callable | None,
                   skip: int) -> Callable[..., Desc]:
    """A describer for `instrument`'s arguments (see there)."""
    import torch

    tensor_type = torch.Tensor
    group_fn = group if callable(group) and not _is_group_like(group) else None
    barrier = op == "barrier"

    def describe(*args, **kwargs):
        g = group_fn(*args, **kwargs) if group_fn is not None else group
        if bytes_of is not None:
            buf = bytes_of(*args, **kwargs)
        else:
            buf = args[skip] if len(args) > skip else None
            if not isinstance(buf, tensor_type):  # the common case is the first argument
                buf = _first_tensor(args[skip:], kwargs)
        if barrier:
            return (None, 0, g, None, None, None)
        if isinstance(buf, tensor_type):
            return (buf.dtype, buf.numel(), g, None, None, buf)
        dtype, n, t = _buffer(buf)
        return (dtype, n, g, None, None, t)

    return describe


def _is_group_like(obj: Any) -> bool:
    # A ProcessGroup is not callable, but guard against callable group objects anyway.
    return type(obj).__name__ in ("ProcessGroup", "DeviceMesh")


def _first_tensor(args: tuple, kwargs: dict) -> Any:
    import torch

    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, (list, tuple)) and v and all(isinstance(e, torch.Tensor) for e in v):
            return v
    return None


def _buffer(buf: Any) -> tuple[Any, int, Any]:
    """(dtype, element count, a tensor) of a tensor, a list of tensors or an int of bytes."""
    import torch

    if buf is None:
        return None, 0, None
    if isinstance(buf, torch.Tensor):
        return buf.dtype, buf.numel(), buf
    if isinstance(buf, int):
        if buf < 0:
            raise ValueError(f"bytes_of returned a negative size: {buf}")
        return torch.uint8, buf, None
    if isinstance(buf, (list, tuple)):
        ts = [t for t in buf if isinstance(t, torch.Tensor)]
        if ts:
            return ts[0].dtype, sum(t.numel() for t in ts), ts[0]
        return None, 0, None
    raise TypeError(f"bytes_of must return a tensor, a list of tensors or an int, "
                    f"got {type(buf).__name__}")
