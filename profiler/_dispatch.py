"""capture="full": a TorchDispatchMode that sees collectives issued through the dispatcher directly.

The Python hooks miss call sites that bypass the `torch.distributed` module attributes (functions
imported by name before tracing started, direct `torch.ops.c10d.*` / `torch.ops._c10d_functional.*`
calls, compiled graphs run eagerly). This mode sees every c10d and functional-collective op the
thread dispatches. Calls already recorded by a hook run under the hooks' re-entry flag and are
skipped here, so each logical call is still recorded once. It costs microseconds on every aten op
(measured in benchmarks/overhead.py), which is why it is opt-in.
"""

from __future__ import annotations

from collections.abc import Callable
from threading import get_ident as _get_ident
from time import time_ns
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

from ._ops import CallInfo, _first, _numel_sum
from ._recorder import RECORDER
from ._rows import DispatchHandle, register_api

__all__ = ["CommDispatchMode"]


def _t(x):  # a tensor list's first tensor
    return _first(x) if isinstance(x, (list, tuple)) else x


def _nested_numel(x) -> int:
    return sum(_nested_numel(i) for i in x) if isinstance(x, (list, tuple)) else x.numel()


# op name -> (commscope op, extractor(args) -> CallInfo). Group-relative roots/peers go in
# CallInfo.group_peer and are mapped to global ranks by the recorder.
def _c10d_table() -> dict[str, tuple[str, Callable[[tuple], CallInfo]]]:
    def allreduce(a):
        n = _numel_sum(a[0])
        t = _t(a[0])
        return CallInfo(t.dtype, n, n, n, a[1], None, None, True, t)

    def allgather(a):
        t = _t(a[1])
        n = _numel_sum(a[1])
        return CallInfo(t.dtype, n, n, _nested_numel(a[0]), a[2], None, None, True, t)

    def allgather_base(a):
        n = a[1].numel()
        return CallInfo(a[1].dtype, n, n, a[0].numel(), a[2], None, None, True, a[1])

    def reduce_scatter(a):
        n = _numel_sum(a[0])
        t = _t(a[0])
        return CallInfo(t.dtype, n, _nested_numel(a[1]), n, a[2], None, None, True, t)

    def reduce_scatter_base(a):
        n = a[0].numel()
        return CallInfo(a[0].dtype, n, a[1].numel(), n, a[2], None, None, True, a[0])

    def broadcast(a):
        n = _numel_sum(a[0])
        t = _t(a[0])
        return CallInfo(t.dtype, n, n, n, a[1], None, None, True, t, a[2])

    def reduce(a):
        n = _numel_sum(a[0])
        t = _t(a[0])
        return CallInfo(t.dtype, n, n, n, a[1], None, None, True, t, a[3])

    def gather(a):
        t = _t(a[1])
        n = _numel_sum(a[1])
        return CallInfo(t.dtype, n, n, _nested_numel(a[0]), a[2], None, None, True, t, a[3])

    def scatter(a):
        t = _t(a[0])
        n = _numel_sum(a[0])
        return CallInfo(t.dtype, n, _nested_numel(a[1]), n, a[2], None, None, True, t, a[3])

    def alltoall(a):
        t = _t(a[1])
        n = _numel_sum(a[1])
        return CallInfo(t.dtype, n, n, _numel_sum(a[0]), a[2], None, None, True, t)

    def alltoall_base(a):
        n = a[1].numel()
        return CallInfo(a[1].dtype, n, n, a[0].numel(), a[2], None, None, True, a[1])

    def p2p(a):
        t = _t(a[0])
        n = _numel_sum(a[0])
        return CallInfo(t.dtype, n, n, n, a[1], None, None, True, t, a[2])

    def recv_any(a):
        t = _t(a[0])
        n = _numel_sum(a[0])
        return CallInfo(t.dtype, n, n, n, a[1], None, None, True, t)

    def barrier(a):
        return CallInfo(None, 0, 0, 0, a[1], None, None, True, None)

    return {
        "allreduce_": ("all_reduce", allreduce),
        "allreduce_coalesced_": ("all_reduce", allreduce),
        "allgather_": ("all_gather", allgather),
        "_allgather_base_": ("all_gather", allgather_base),
        "allgather_coalesced_": ("all_gather", allgather),
        "allgather_into_tensor_coalesced_": ("all_gather", lambda a: CallInfo(
            _t(a[1]).dtype, _numel_sum(a[1]), _numel_sum(a[1]), _numel_sum(a[0]), a[2], None, None,
            True, _t(a[1]))),
        "reduce_scatter_": ("reduce_scatter", reduce_scatter),
        "_reduce_scatter_base_": ("reduce_scatter", reduce_scatter_base),
        "reduce_scatter_tensor_coalesced_": ("reduce_scatter", lambda a: CallInfo(
            _t(a[0]).dtype, _numel_sum(a[0]), _numel_sum(a[1]), _numel_sum(a[0]), a[2], None, None,
            True, _t(a[0]))),
        "broadcast_": ("broadcast", broadcast),
        "reduce_": ("reduce", reduce),
        "gather_": ("gather", gather),
        "scatter_": ("scatter", scatter),
        "alltoall_": ("all_to_all", alltoall),
        "alltoall_base_": ("all_to_all", alltoall_base),
        "send": ("send", p2p),
        "recv_": ("recv", p2p),
        "recv_any_source_": ("recv", recv_any),
        "barrier": ("barrier", barrier),
        "monitored_barrier_": ("barrier", barrier),
    }


def _funcol_table() -> dict[str, tuple[str, Callable[[tuple], CallInfo]]]:
    def same(a):
        n = a[0].numel()
        return CallInfo(a[0].dtype, n, n, n, a[2], None, None, True, a[0])

    def coalesced(a):
        n = _numel_sum(a[0])
        t = _t(a[0])
        return CallInfo(t.dtype, n, n, n, a[2], None, None, True, t)

    def all_gather(a):
        n = _numel_sum(a[0])
        t = _t(a[0])
        return CallInfo(t.dtype, n, n, n * a[1], a[2], None, None, True, t)

    def reduce_scatter(a):
        t = _t(a[0])
        n = _numel_sum(a[0])
        return CallInfo(t.dtype, n // a[2], n, n // a[2], a[3], None, None, True, t)

    def broadcast(a):
        n = a[0].numel()
        return CallInfo(a[0].dtype, n, n, n, a[2], None, None, True, a[0], a[1])

    def all_to_all(a):
        t = a[0]
        n = t.numel()
        row = n // t.shape[0] if t.dim() and t.shape[0] else 1
        return CallInfo(t.dtype, n, n, int(sum(a[1])) * row if a[1] else n, a[3], None, None,
                        True, t)

    return {
        "all_reduce": ("all_reduce", same),
        "all_reduce_": ("all_reduce", same),
        "all_reduce_coalesced": ("all_reduce", coalesced),
        "all_reduce_coalesced_": ("all_reduce", coalesced),
        "all_gather_into_tensor": ("all_gather", all_gather),
        "all_gather_into_tensor_out": ("all_gather", all_gather),
        "all_gather_into_tensor_coalesced": ("all_gather", all_gather),
        "reduce_scatter_tensor": ("reduce_scatter", reduce_scatter),
        "reduce_scatter_tensor_out": ("reduce_scatter", reduce_scatter),
        "reduce_scatter_tensor_coalesced": ("reduce_scatter", reduce_scatter),
        "broadcast": ("broadcast", broadcast),
        "broadcast_": ("broadcast", broadcast),
        "all_to_all_single": ("all_to_all", all_to_all),
    }


class CommDispatchMode(TorchDispatchMode):
    """Records c10d and functional-collective ops not already recorded by a hook."""

    def __init__(self) -> None:
        super().__init__()
        self._tables = {"c10d": _c10d_table(), "_c10d_functional": _funcol_table()}
        self._api: dict[tuple[str, str], int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        ns = func.namespace
        table = self._tables.get(ns)
        if table is None:
            return func(*args, **kwargs)
        from torch import Tensor
        from torch._subclasses.fake_tensor import FakeTensor

        # Tensor subclasses (DTensor, AsyncCollectiveTensor) must dispatch themselves first.
        if any(t is not Tensor and not issubclass(t, FakeTensor) for t in types):
            return NotImplemented
        name = func._opname
        rec = RECORDER
        if ns == "_c10d_functional" and name == "wait_tensor":
            ent = rec.pending_tensors.pop(id(args[0]), None) if args else None
            out = func(*args, **kwargs)
            if ent is not None:
                rec._complete(ent[1], "wait_tensor", None)
            return out
        spec = table.get(name)
        tid = _get_ident()
        if spec is None or tid in rec.busy or not rec.sessions:
            return func(*args, **kwargs)
        op, extract = spec
        t0 = time_ns()
        try:
            info = extract(args)
        except Exception:
            return func(*args, **kwargs)
        key = (ns, name)
        api = self._api.get(key)
        if api is None:
            api = self._api[key] = register_api(f"{ns.lstrip('_')}.{name}", op, "dispatch")
        ev = rec.start_event(info.tensor) if rec.cuda_timing else None
        rec.busy[tid] = True
        try:
            out = func(*args, **kwargs)
        except BaseException as exc:
            del rec.busy[tid]
            rec.record(api, info, t0, None, exc, ev)
            raise
        del rec.busy[tid]
        handle = out
        if ns == "c10d":
            handle = out[-1] if isinstance(out, tuple) else out
        elif isinstance(out, (list, tuple)):
            handle = list(out)
        rec.record(api, info, t0, DispatchHandle(handle, ns), None, ev)
        return out
