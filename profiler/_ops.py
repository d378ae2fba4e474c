"""Which functions are intercepted, and how each call's arguments map to trace fields.

Each extractor takes a call's arguments and returns a tuple in `CallInfo` order without keeping any
tensor alive. They run on every call, so they stay tiny.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["CallInfo", "ApiSpec", "DIST_APIS", "NATIVE_LAYOUTS", "FUNCOL_APIS", "GATHER_LIKE",
           "P2P_SEND", "P2P_RECV"]


# Extractors return plain tuples in CallInfo's field order: building a NamedTuple costs ~0.3 us,
# a tuple literal ~0.03 us, and this runs on every call.


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
    extract: Callable[..., tuple]   # called with the API's own arguments


# Ops whose nccl-tests size S is the whole n-rank array: bytes = count x elem x pg_size.
GATHER_LIKE = frozenset({"all_gather", "reduce_scatter", "gather", "scatter"})
P2P_SEND = "send"
P2P_RECV = "recv"


def _numel(t) -> int:
    """Elements of `t` as its type counts them, `type(t).numel(t)`, as the compiled hook reads
    them: a subclass's or a patched torch.Tensor's numel counts, an instance attribute not."""
    return type(t).numel(t)


def _numel_sum(ts) -> int:
    return sum(_numel(t) for t in ts) if ts else 0


def _first(ts):
    return ts[0] if ts else None


# --- torch.distributed ---------------------------------------------------------------------------
# Each extractor mirrors the signature of the function it reads, so Python binds the arguments
# (faster than indexing args/kwargs by hand); `**_` absorbs keywords newer torch versions add.

def _all_reduce(tensor, op=None, group=None, async_op=False, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, n, group, None, None, async_op, tensor, None)


def _all_reduce_coalesced(tensors, op=None, group=None, async_op=False, **_):
    n = _numel_sum(tensors)
    t = _first(tensors)
    return (t.dtype if t is not None else None, n, n, n, group, None, None, async_op, t, None)


def _all_gather_list(tensor_list, tensor, group=None, async_op=False, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, _numel_sum(tensor_list), group, None, None, async_op, tensor, None)


def _all_gather_single(output_tensor, input_tensor, group=None, async_op=False, **_):
    n = _numel(input_tensor)
    return (input_tensor.dtype, n, n, _numel(output_tensor), group, None, None, async_op,
            input_tensor, None)


def _all_gather_coalesced(output_tensor_lists, input_tensor_list, group=None, async_op=False, **_):
    n = _numel_sum(input_tensor_list)
    t = _first(input_tensor_list)
    return (t.dtype if t is not None else None, n, n,
            sum(_numel_sum(o) for o in output_tensor_lists), group, None, None, async_op, t, None)


def _reduce_scatter_list(output, input_list, op=None, group=None, async_op=False, **_):
    n = _numel(output)
    return (output.dtype, n, _numel_sum(input_list), n, group, None, None, async_op, output, None)


def _reduce_scatter_single(output, input, op=None, group=None, async_op=False, **_):
    n = _numel(output)
    return (output.dtype, n, _numel(input), n, group, None, None, async_op, output, None)


def _broadcast(tensor, src=None, group=None, async_op=False, group_src=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, n, group, None, src, async_op, tensor, group_src)


def _reduce(tensor, dst=None, op=None, group=None, async_op=False, group_dst=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, n, group, None, dst, async_op, tensor, group_dst)


def _gather(tensor, gather_list=None, dst=None, group=None, async_op=False, group_dst=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, _numel_sum(gather_list), group, None, dst, async_op, tensor,
            group_dst)


def _scatter(tensor, scatter_list=None, src=None, group=None, async_op=False, group_src=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, _numel_sum(scatter_list), n, group, None, src, async_op, tensor,
            group_src)


def _all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None,
                       group=None, async_op=False, **_):
    n = _numel(input)
    return (input.dtype, n, n, _numel(output), group, None, None, async_op, input, None)


def _all_to_all_list(output_tensor_list, input_tensor_list, group=None, async_op=False, **_):
    n = _numel_sum(input_tensor_list)
    t = _first(input_tensor_list)
    return (t.dtype if t is not None else None, n, n, _numel_sum(output_tensor_list), group,
            None, None, async_op, t, None)


def _send(tensor, dst=None, group=None, tag=0, group_dst=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, n, group, dst, None, False, tensor, group_dst)


def _recv(tensor, src=None, group=None, tag=0, group_src=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, n, group, src, None, False, tensor, group_src)


def _isend(tensor, dst=None, group=None, tag=0, group_dst=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, n, group, dst, None, True, tensor, group_dst)


def _irecv(tensor, src=None, group=None, tag=0, group_src=None, **_):
    n = _numel(tensor)
    return (tensor.dtype, n, n, n, group, src, None, True, tensor, group_src)


def _barrier(group=None, async_op=False, device_ids=None, **_):
    return (None, 0, 0, 0, group, None, None, async_op, None, None)


def _monitored_barrier(group=None, timeout=None, wait_all_ranks=False, **_):
    return (None, 0, 0, 0, group, None, None, False, None, None)


# Extractors the compiled hook (`_chook.Hook`) reads in C instead of calling them: (parameter
# of the tensor that gives dtype and count, the other tensor's parameter or None, whether that
# one is the output). Parameter names and order come from the extractor itself, and
# tests/test_native_hook.py checks that the C reading equals the extractor's on every layout.
NATIVE_LAYOUTS: dict[Callable[..., tuple], tuple[str | None, str | None, bool]] = {
    _all_reduce: ("tensor", None, False),
    _all_gather_single: ("input_tensor", "output_tensor", True),
    _reduce_scatter_single: ("output", "input", False),
    _all_to_all_single: ("input", "output", True),
    _barrier: (None, None, False),
}


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
    ApiSpec("send", "send", P2P_SEND, _send),
    ApiSpec("recv", "recv", P2P_RECV, _recv),
    ApiSpec("isend", "isend", P2P_SEND, _isend),
    ApiSpec("irecv", "irecv", P2P_RECV, _irecv),
    ApiSpec("barrier", "barrier", "barrier", _barrier),
    ApiSpec("monitored_barrier", "monitored_barrier", "barrier", _monitored_barrier),
)


# --- torch.distributed._functional_collectives (DTensor, parallelize_module) ---------------------
# Functional collectives take a `group` that may be a ProcessGroup, a name, a rank list or a
# (DeviceMesh, dim) tuple; the hooks resolve it. Counts the hot path cannot know without the group
# size (all_gather output, reduce_scatter output) are left None and derived at flush.

def _fc_all_reduce(self, reduceOp, group, tag="", **_):
    n = _numel(self)
    return (self.dtype, n, n, n, group, None, None, True, self, None)


def _fc_broadcast(self, src, group, tag="", **_):
    n = _numel(self)
    return (self.dtype, n, n, n, group, None, None, True, self, src)


def _fc_all_gather(self, gather_dim, group, tag="", **_):
    n = _numel(self)
    return (self.dtype, n, n, None, group, None, None, True, self, None)


def _fc_reduce_scatter(self, reduceOp, scatter_dim, group, tag="", **_):
    return (self.dtype, None, _numel(self), None, group, None, None, True, self, None)


def _fc_all_reduce_coalesced(self, reduceOp, group, tag="", **_):
    n = _numel_sum(self)
    t = _first(self)
    return (t.dtype if t is not None else None, n, n, n, group, None, None, True, t, None)


def _fc_all_gather_coalesced(self, group, tag="", **_):
    n = _numel_sum(self)
    t = _first(self)
    return (t.dtype if t is not None else None, n, n, None, group, None, None, True, t, None)


def _fc_reduce_scatter_coalesced(inputs, reduceOp, scatter_dim, group, tag="", **_):
    t = _first(inputs)
    return (t.dtype if t is not None else None, None, _numel_sum(inputs), None, group,
            None, None, True, t, None)


def _fc_all_to_all_single(self, output_split_sizes, input_split_sizes, group, tag="", **_):
    n = _numel(self)
    if output_split_sizes is not None and self.dim() > 0 and self.shape[0]:
        out = sum(output_split_sizes) * (n // self.shape[0])
    else:
        out = n
    return (self.dtype, n, n, out, group, None, None, True, self, None)


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
