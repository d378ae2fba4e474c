"""Which functions are intercepted, and how each call's arguments map to trace fields.

Each extractor reads a call's arguments and returns a `CallInfo` without keeping any tensor alive.
They run on the hot path, so they index positional arguments directly instead of binding a
signature (binding costs several microseconds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["CallInfo", "ApiSpec", "DIST_APIS", "FUNCOL_APIS", "GATHER_LIKE", "P2P_SEND", "P2P_RECV"]


class CallInfo(NamedTuple):
    dtype: Any            # torch.dtype or None
    count: int | None     # NCCL-convention per-rank count; None = derive at flush (see _writer)
    in_numel: int | None
    out_numel: int | None
    group: Any            # whatever the caller passed (None = default group)
    peer: int | None      # global rank
    root: int | None      # global rank (funcol: as passed)
    async_op: bool
    tensor: Any           # one tensor of the call, read for is_cuda only; never stored
    group_peer: int | None = None   # group-relative peer/root when the caller gave that instead


class ApiSpec(NamedTuple):
    name: str             # value of the `api` column
    attr: str             # attribute name in the patched module
    op: str               # value of the `op` column
    extract: Callable[[tuple, dict], CallInfo]


# Ops whose nccl-tests size S is the whole n-rank array: bytes = count x elem x pg_size.
GATHER_LIKE = frozenset({"all_gather", "reduce_scatter", "gather", "scatter"})
P2P_SEND = "send"
P2P_RECV = "recv"


def _numel_sum(ts) -> int:
    return sum(t.numel() for t in ts) if ts else 0


def _first(ts):
    return ts[0] if ts else None


# --- torch.distributed ---------------------------------------------------------------------------

def _all_reduce(a, k):
    t = a[0] if a else k["tensor"]
    n = t.numel()
    g = a[2] if len(a) > 2 else k.get("group")
    ao = a[3] if len(a) > 3 else k.get("async_op", False)
    return CallInfo(t.dtype, n, n, n, g, None, None, ao, t)


def _all_reduce_coalesced(a, k):
    ts = a[0] if a else k["tensors"]
    n = _numel_sum(ts)
    g = a[2] if len(a) > 2 else k.get("group")
    ao = a[3] if len(a) > 3 else k.get("async_op", False)
    t = _first(ts)
    return CallInfo(t.dtype if t is not None else None, n, n, n, g, None, None, ao, t)


def _all_gather_list(a, k):
    outs = a[0] if a else k["tensor_list"]
    t = a[1] if len(a) > 1 else k["tensor"]
    g = a[2] if len(a) > 2 else k.get("group")
    ao = a[3] if len(a) > 3 else k.get("async_op", False)
    n = t.numel()
    return CallInfo(t.dtype, n, n, _numel_sum(outs), g, None, None, ao, t)


def _all_gather_single(a, k):
    out = a[0] if a else k["output_tensor"]
    t = a[1] if len(a) > 1 else k["input_tensor"]
    g = a[2] if len(a) > 2 else k.get("group")
    ao = a[3] if len(a) > 3 else k.get("async_op", False)
    n = t.numel()
    return CallInfo(t.dtype, n, n, out.numel(), g, None, None, ao, t)


def _all_gather_coalesced(a, k):
    outs = a[0] if a else k["output_tensor_lists"]
    ins = a[1] if len(a) > 1 else k["input_tensor_list"]
    g = a[2] if len(a) > 2 else k.get("group")
    ao = a[3] if len(a) > 3 else k.get("async_op", False)
    n = _numel_sum(ins)
    t = _first(ins)
    return CallInfo(t.dtype if t is not None else None, n, n,
                    sum(_numel_sum(o) for o in outs), g, None, None, ao, t)


def _reduce_scatter_list(a, k):
    out = a[0] if a else k["output"]
    ins = a[1] if len(a) > 1 else k["input_list"]
    g = a[3] if len(a) > 3 else k.get("group")
    ao = a[4] if len(a) > 4 else k.get("async_op", False)
    n = out.numel()
    return CallInfo(out.dtype, n, _numel_sum(ins), n, g, None, None, ao, out)


def _reduce_scatter_single(a, k):
    out = a[0] if a else k["output"]
    inp = a[1] if len(a) > 1 else k["input"]
    g = a[3] if len(a) > 3 else k.get("group")
    ao = a[4] if len(a) > 4 else k.get("async_op", False)
    n = out.numel()
    return CallInfo(out.dtype, n, inp.numel(), n, g, None, None, ao, out)


def _broadcast(a, k):
    t = a[0] if a else k["tensor"]
    src = a[1] if len(a) > 1 else k.get("src")
    g = a[2] if len(a) > 2 else k.get("group")
    ao = a[3] if len(a) > 3 else k.get("async_op", False)
    gs = a[4] if len(a) > 4 else k.get("group_src")
    n = t.numel()
    return CallInfo(t.dtype, n, n, n, g, None, src, ao, t, gs)


def _reduce(a, k):
    t = a[0] if a else k["tensor"]
    dst = a[1] if len(a) > 1 else k.get("dst")
    g = a[3] if len(a) > 3 else k.get("group")
    ao = a[4] if len(a) > 4 else k.get("async_op", False)
    gd = a[5] if len(a) > 5 else k.get("group_dst")
    n = t.numel()
    return CallInfo(t.dtype, n, n, n, g, None, dst, ao, t, gd)


def _gather(a, k):
    t = a[0] if a else k["tensor"]
    lst = a[1] if len(a) > 1 else k.get("gather_list")
    dst = a[2] if len(a) > 2 else k.get("dst")
    g = a[3] if len(a) > 3 else k.get("group")
    ao = a[4] if len(a) > 4 else k.get("async_op", False)
    gd = a[5] if len(a) > 5 else k.get("group_dst")
    n = t.numel()
    return CallInfo(t.dtype, n, n, _numel_sum(lst), g, None, dst, ao, t, gd)


def _scatter(a, k):
    t = a[0] if a else k["tensor"]
    lst = a[1] if len(a) > 1 else k.get("scatter_list")
    src = a[2] if len(a) > 2 else k.get("src")
    g = a[3] if len(a) > 3 else k.get("group")
    ao = a[4] if len(a) > 4 else k.get("async_op", False)
    gs = a[5] if len(a) > 5 else k.get("group_src")
    n = t.numel()
    return CallInfo(t.dtype, n, _numel_sum(lst), n, g, None, src, ao, t, gs)


def _all_to_all_single(a, k):
    out = a[0] if a else k["output"]
    inp = a[1] if len(a) > 1 else k["input"]
    g = a[4] if len(a) > 4 else k.get("group")
    ao = a[5] if len(a) > 5 else k.get("async_op", False)
    n = inp.numel()
    return CallInfo(inp.dtype, n, n, out.numel(), g, None, None, ao, inp)


def _all_to_all_list(a, k):
    outs = a[0] if a else k["output_tensor_list"]
    ins = a[1] if len(a) > 1 else k["input_tensor_list"]
    g = a[2] if len(a) > 2 else k.get("group")
    ao = a[3] if len(a) > 3 else k.get("async_op", False)
    n = _numel_sum(ins)
    t = _first(ins)
    return CallInfo(t.dtype if t is not None else None, n, n, _numel_sum(outs), g, None, None, ao, t)


def _p2p(async_default):
    def extract(a, k):
        t = a[0] if a else k["tensor"]
        peer = a[1] if len(a) > 1 else k.get("dst", k.get("src"))
        g = a[2] if len(a) > 2 else k.get("group")
        gp = a[4] if len(a) > 4 else k.get("group_dst", k.get("group_src"))
        n = t.numel()
        return CallInfo(t.dtype, n, n, n, g, peer, None, async_default, t, gp)
    return extract


def _barrier(a, k):
    g = a[0] if a else k.get("group")
    ao = a[1] if len(a) > 1 else k.get("async_op", False)
    return CallInfo(None, 0, 0, 0, g, None, None, ao, None)


def _monitored_barrier(a, k):
    g = a[0] if a else k.get("group")
    return CallInfo(None, 0, 0, 0, g, None, None, False, None)


DIST_APIS: tuple[ApiSpec, ...] = (
    ApiSpec("all_reduce", "all_reduce", "all_reduce", _all_reduce),
    ApiSpec("all_reduce_coalesced", "all_reduce_coalesced", "all_reduce", _all_reduce_coalesced),
    ApiSpec("all_gather", "all_gather", "all_gather", _all_gather_list),
    ApiSpec("all_gather_single", "all_gather_single", "all_gather", _all_gather_single),
    ApiSpec("all_gather_into_tensor", "all_gather_into_tensor", "all_gather", _all_gather_single),
    ApiSpec("_all_gather_base", "_all_gather_base", "all_gather", _all_gather_single),
    ApiSpec("all_gather_coalesced", "all_gather_coalesced", "all_gather", _all_gather_coalesced),
    ApiSpec("reduce_scatter", "reduce_scatter", "reduce_scatter", _reduce_scatter_list),
    ApiSpec("reduce_scatter_single", "reduce_scatter_single", "reduce_scatter", _reduce_scatter_single),
    ApiSpec("reduce_scatter_tensor", "reduce_scatter_tensor", "reduce_scatter", _reduce_scatter_single),
    ApiSpec("_reduce_scatter_base", "_reduce_scatter_base", "reduce_scatter", _reduce_scatter_single),
    ApiSpec("broadcast", "broadcast", "broadcast", _broadcast),
    ApiSpec("reduce", "reduce", "reduce", _reduce),
    ApiSpec("gather", "gather", "gather", _gather),
    ApiSpec("scatter", "scatter", "scatter", _scatter),
    ApiSpec("all_to_all_single", "all_to_all_single", "all_to_all", _all_to_all_single),
    ApiSpec("all_to_all", "all_to_all", "all_to_all", _all_to_all_list),
    ApiSpec("send", "send", P2P_SEND, _p2p(False)),
    ApiSpec("recv", "recv", P2P_RECV, _p2p(False)),
    ApiSpec("isend", "isend", P2P_SEND, _p2p(True)),
    ApiSpec("irecv", "irecv", P2P_RECV, _p2p(True)),
    ApiSpec("barrier", "barrier", "barrier", _barrier),
    ApiSpec("monitored_barrier", "monitored_barrier", "barrier", _monitored_barrier),
)


# --- torch.distributed._functional_collectives (DTensor, parallelize_module) ---------------------
# Functional collectives take a `group` that may be a ProcessGroup, a name, a rank list or a
# (DeviceMesh, dim) tuple; the hooks resolve it. Counts the hot path cannot know without the group
# size (all_gather output, reduce_scatter output) are left None and derived at flush.

def _fc_all_reduce(a, k):
    t = a[0] if a else k["self"]
    g = a[2] if len(a) > 2 else k["group"]
    n = t.numel()
    return CallInfo(t.dtype, n, n, n, g, None, None, True, t)


def _fc_broadcast(a, k):
    t = a[0] if a else k["self"]
    src = a[1] if len(a) > 1 else k["src"]
    g = a[2] if len(a) > 2 else k["group"]
    n = t.numel()
    return CallInfo(t.dtype, n, n, n, g, None, None, True, t, src)


def _fc_all_gather(a, k):
    t = a[0] if a else k["self"]
    g = a[2] if len(a) > 2 else k["group"]
    n = t.numel()
    return CallInfo(t.dtype, n, n, None, g, None, None, True, t)


def _fc_reduce_scatter(a, k):
    t = a[0] if a else k["self"]
    g = a[3] if len(a) > 3 else k["group"]
    return CallInfo(t.dtype, None, t.numel(), None, g, None, None, True, t)


def _fc_all_reduce_coalesced(a, k):
    ts = a[0] if a else k["self"]
    g = a[2] if len(a) > 2 else k["group"]
    n = _numel_sum(ts)
    t = _first(ts)
    return CallInfo(t.dtype if t is not None else None, n, n, n, g, None, None, True, t)


def _fc_all_gather_coalesced(a, k):
    ts = a[0] if a else k["self"]
    g = a[1] if len(a) > 1 else k["group"]
    n = _numel_sum(ts)
    t = _first(ts)
    return CallInfo(t.dtype if t is not None else None, n, n, None, g, None, None, True, t)


def _fc_reduce_scatter_coalesced(a, k):
    ts = a[0] if a else k["inputs"]
    g = a[3] if len(a) > 3 else k["group"]
    t = _first(ts)
    return CallInfo(t.dtype if t is not None else None, None, _numel_sum(ts), None, g,
                    None, None, True, t)


def _fc_all_to_all_single(a, k):
    t = a[0] if a else k["self"]
    out_splits = a[1] if len(a) > 1 else k.get("output_split_sizes")
    g = a[3] if len(a) > 3 else k["group"]
    n = t.numel()
    if out_splits is not None and t.dim() > 0 and t.shape[0]:
        out = sum(out_splits) * (n // t.shape[0])
    else:
        out = n
    return CallInfo(t.dtype, n, n, out, g, None, None, True, t)


FUNCOL_APIS: tuple[ApiSpec, ...] = (
    ApiSpec("funcol.all_reduce", "all_reduce", "all_reduce", _fc_all_reduce),
    ApiSpec("funcol.broadcast", "broadcast", "broadcast", _fc_broadcast),
    ApiSpec("funcol.all_gather_single", "all_gather_single", "all_gather", _fc_all_gather),
    ApiSpec("funcol.all_gather_tensor", "all_gather_tensor", "all_gather", _fc_all_gather),
    ApiSpec("funcol.all_gather_single_autograd", "all_gather_single_autograd", "all_gather", _fc_all_gather),
    ApiSpec("funcol.all_gather_tensor_autograd", "all_gather_tensor_autograd", "all_gather", _fc_all_gather),
    ApiSpec("funcol.reduce_scatter_single", "reduce_scatter_single", "reduce_scatter", _fc_reduce_scatter),
    ApiSpec("funcol.reduce_scatter_tensor", "reduce_scatter_tensor", "reduce_scatter", _fc_reduce_scatter),
    ApiSpec("funcol.reduce_scatter_single_autograd", "reduce_scatter_single_autograd", "reduce_scatter", _fc_reduce_scatter),
    ApiSpec("funcol.reduce_scatter_tensor_autograd", "reduce_scatter_tensor_autograd", "reduce_scatter", _fc_reduce_scatter),
    ApiSpec("funcol.all_reduce_coalesced", "all_reduce_coalesced", "all_reduce", _fc_all_reduce_coalesced),
    ApiSpec("funcol.all_gather_single_coalesced", "all_gather_single_coalesced", "all_gather", _fc_all_gather_coalesced),
    ApiSpec("funcol.all_gather_into_tensor_coalesced", "all_gather_into_tensor_coalesced", "all_gather", _fc_all_gather_coalesced),
    ApiSpec("funcol.reduce_scatter_single_coalesced", "reduce_scatter_single_coalesced", "reduce_scatter", _fc_reduce_scatter_coalesced),
    ApiSpec("funcol.reduce_scatter_tensor_coalesced", "reduce_scatter_tensor_coalesced", "reduce_scatter", _fc_reduce_scatter_coalesced),
    ApiSpec("funcol.all_to_all_single", "all_to_all_single", "all_to_all", _fc_all_to_all_single),
    ApiSpec("funcol.all_to_all_single_autograd", "all_to_all_single_autograd", "all_to_all", _fc_all_to_all_single),
)
