"""Inference engines: record vLLM's and SGLang's GroupCoordinator calls and tag forward steps.

Engines send tensor-parallel traffic through their own group objects and backends (shared
memory ops on CPU; custom all-reduce, PyNccl, symmetric memory, FlashInfer on GPUs) that never
reach the `torch.distributed` functions the hooks wrap. One class-level wrapper per
`GroupCoordinator` method records each logical call once, whichever backend runs it:
`api` = '<engine>.<method>', `source` = 'engine', `pg_dim` from the coordinator's name ('tp:0'
-> 'tp'), group size and ranks from its device group, bytes by the nccl-tests convention.
torch.distributed calls a coordinator makes inside are folded into its row.

Installed only when the engine itself is imported (`install()` adds a post-import hook; vLLM
also calls `vllm_plugin` in every process through its `vllm.general_plugins` entry point), so
a program without an engine pays nothing and never imports one.

vLLM's internals `_all_reduce_out_place` / `_all_gather_out_place` / `_reduce_scatter_out_place`
are hooked rather than the public methods: on GPUs the public ones go through torch custom ops
that call these, in eager mode and under torch.compile alike (notes: inference-engines.md).
"""

from __future__ import annotations

import functools
import importlib.abc
import inspect
import sys
import threading
from typing import Any

from . import _cuda_graphs
from ._instrument import SkipCall as _Skip
from ._instrument import wrap_method

__all__ = ["install", "vllm_plugin", "installed_engines", "VLLM_METHODS", "SGLANG_METHODS"]


# (method, api name, op, buffer parameter, kind, rank parameter)
#   kind: 't' tensor argument, 'dict' tensor dict argument, 'rdict' tensor dict result,
#         'res' tensor result, 'none' no payload
#   rank parameter: group-relative 'src'/'dst' (root of rooted ops, peer of p2p), None = none
_COMMON = (
    ("broadcast", "broadcast", "broadcast", "input_", "t", "src"),
    ("broadcast_tensor_dict", "broadcast_tensor_dict", "broadcast", "tensor_dict", "rdict", "src"),
    ("send_tensor_dict", "send_tensor_dict", "send", "tensor_dict", "dict", "dst"),
    ("isend_tensor_dict", "isend_tensor_dict", "send", "tensor_dict", "dict", "dst"),
    ("recv_tensor_dict", "recv_tensor_dict", "recv", None, "rdict", "src"),
    ("send", "send", "send", "tensor", "t", "dst"),
    ("recv", "recv", "recv", None, "res", "src"),
    ("gather", "gather", "gather", "input_", "t", "dst"),
    ("barrier", "barrier", "barrier", None, "none", None),
)
VLLM_METHODS = (
    ("_all_reduce_out_place", "all_reduce", "all_reduce", "input_", "t", None),
    ("_all_gather_out_place", "all_gather", "all_gather", "input_", "t", None),
    ("_reduce_scatter_out_place", "reduce_scatter", "reduce_scatter", "input_", "t", None),
    ("all_gatherv", "all_gatherv", "all_gather", "input_", "t", None),
    ("reduce_scatterv", "reduce_scatterv", "reduce_scatter", "input_", "t", None),
    ("reduce_scatterv_into_output", "reduce_scatterv", "reduce_scatter", "input_", "t", None),
    ("dispatch", "dispatch", "all_to_all", "hidden_states", "t", None),
    ("combine", "combine", "all_to_all", "hidden_states", "t", None),
) + _COMMON
# SGLang routes per backend inside the public methods (shm on CPU tensors, custom AR, pynccl,
# torch.distributed): the public ones are hooked, the internals catch calls made through its
# custom ops (torch.compile, piecewise graphs); nesting records the outermost only.
SGLANG_METHODS = (
    ("all_reduce", "all_reduce", "all_reduce", "input_", "t", None),
    ("_all_reduce_out_place", "all_reduce", "all_reduce", "input_", "t", None),
    ("_all_reduce_in_place", "all_reduce", "all_reduce", "input_", "t", None),
    ("all_gather", "all_gather", "all_gather", "input_", "t", None),
    ("all_gather_into_tensor", "all_gather_into_tensor", "all_gather", "input", "t", None),
    ("_all_gather_into_tensor", "all_gather_into_tensor", "all_gather", "input", "t", None),
    ("reduce_scatter_tensor", "reduce_scatter_tensor", "reduce_scatter", "input", "t", None),
    ("_reduce_scatter_tensor", "reduce_scatter_tensor", "reduce_scatter", "input", "t", None),
    ("reduce_scatter", "reduce_scatter", "reduce_scatter", "input_", "t", None),
    ("all_to_all_single", "all_to_all_single", "all_to_all", "input", "t", None),
    ("_all_to_all_single", "all_to_all_single", "all_to_all", "input", "t", None),
) + _COMMON


# -- describing a coordinator call ------------------------------------------------------------------
def coordinator_group(coord: Any) -> Any:
    """The torch group a coordinator's rows are filed under (its device group), labelled with
    the coordinator's dimension on first use; cached on the coordinator."""
    g = coord.__dict__.get("_commscope_group")
    if g is None:
        g = _label_coordinator(coord)
    return g


def _label_coordinator(coord: Any) -> Any:
    import torch.distributed as dist

    from ._phases import label_group

    dim = str(getattr(coord, "unique_name", "") or "").rsplit(":", 1)[0] or None
    chosen = None
    for attr in ("device_group", "cpu_group"):
        pg = getattr(coord, attr, None)
        if isinstance(pg, dist.ProcessGroup):
            if dim:
                label_group(pg, dim)
            if chosen is None:
                chosen = pg
    if chosen is None:
        raise _Skip  # a stateless group torch does not know: nothing to file it under
    coord.__dict__["_commscope_group"] = chosen
    return chosen


def _param_index(fn: Any, name: str | None) -> int | None:
    """Position of parameter `name` in fn's call (self included), or None."""
    if name is None:
        return None
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    return params.index(name) if name in params else None


def _arg(args: tuple, kwargs: dict, idx: int | None, name: str | None) -> Any:
    if name is None:
        return None
    if idx is not None and idx < len(args):
        return args[idx]
    return kwargs.get(name)


def _dict_bytes(d: Any) -> tuple[Any, int, Any]:
    """(uint8, total bytes, a tensor) of a tensor dict: mixed dtypes are counted in bytes."""
    import torch

    if not isinstance(d, dict):
        return torch.uint8, 0, None
    ts = [v for v in d.values() if isinstance(v, torch.Tensor)]
    return torch.uint8, sum(t.numel() * t.element_size() for t in ts), (ts[0] if ts else None)


def _make_describer(fn: Any, op: str, buf: str | None, kind: str, rank_param: str | None):
    import torch

    buf_idx = _param_index(fn, buf)
    rank_idx = _param_index(fn, rank_param)
    p2p = op in ("send", "recv")

    def describe(*args, **kwargs):
        coord = args[0]
        if coord.world_size == 1:
            raise _Skip
        group = coordinator_group(coord)
        r = _arg(args, kwargs, rank_idx, rank_param)
        ranks = coord.ranks
        if p2p and r is None:  # vLLM's default peers: the next rank sends, the previous receives
            step = 1 if op == "send" else -1
            r = (coord.rank_in_group + step) % coord.world_size
        glob = ranks[r] if r is not None else (ranks[0] if op in ("broadcast", "gather") else None)
        peer, root = (glob, None) if p2p else (None, glob)
        if kind == "t":
            t = _arg(args, kwargs, buf_idx, buf)
            if isinstance(t, (list, tuple)):
                ts = [x for x in t if isinstance(x, torch.Tensor)]
                return (ts[0].dtype if ts else None, sum(x.numel() for x in ts), group, peer,
                        root, ts[0] if ts else None)
            return (t.dtype, t.numel(), group, peer, root, t)
        if kind == "dict":
            dtype, n, t = _dict_bytes(_arg(args, kwargs, buf_idx, buf))
            return (dtype, n, group, peer, root, t)
        if kind == "none":
            return (None, 0, group, peer, root, None)
        return (None, None, group, peer, root, None)  # 'rdict'/'res': known after the call

    return describe


def _result_size(kind: str):
    def post(res: Any) -> tuple[Any, int, Any]:
        import torch

        if kind == "rdict":
            return _dict_bytes(res)
        if isinstance(res, torch.Tensor):
            return res.dtype, res.numel(), res
        return None, 0, None

    return post


# -- installing -------------------------------------------------------------------------------------
_DONE: dict[str, bool] = {}
_LOCK = threading.RLock()


def installed_engines() -> list[str]:
    """Names of the engine hooks installed in this process (e.g. ['vllm.groups'])."""
    return sorted(k for k, v in _DONE.items() if v)


def patch_coordinator(cls: type, methods: tuple, engine: str) -> list[str]:
    """Wrap `methods` of a GroupCoordinator class (those it defines or inherits; absent names are
    skipped: the set changes between releases). Returns the methods wrapped."""
    done = []
    for method, api, op, buf, kind, rank_param in methods:
        fn = getattr(cls, method, None)
        if fn is None or not callable(fn) or hasattr(fn, "__commscope_original__"):
            continue
        describe = _make_describer(fn, op, buf, kind, rank_param)
        post = _result_size(kind) if kind in ("rdict", "res") else None
        setattr(cls, method, wrap_method(fn, f"{engine}.{api}", op, describe, post=post))
        done.append(method)
    init = cls.__dict__.get("__init__")
    if init is not None and not hasattr(init, "__commscope_original__"):
        cls.__init__ = _labelling_init(init)
    return done


def _labelling_init(orig: Any) -> Any:
    """Label the coordinator's groups as soon as it exists, so the setup calls made on them
    (broadcasts, barriers on the CPU group) carry pg_dim too."""

    @functools.wraps(orig)
    def __init__(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        try:
            coordinator_group(self)
        except Exception:
            pass

    __init__.__commscope_original__ = orig
    return __init__


def _step_wrapper(orig: Any, classify: Any, counter_attr: str) -> Any:
    """Run an engine's forward step inside `phase(<prefill|decode>, step=<index>)`."""
    from ._phases import phase

    @functools.wraps(orig)
    def step(self, batch, *args, **kwargs):
        try:
            name = classify(batch)
        except Exception:
            name = None
        if name is None:
            self.__dict__[counter_attr + "_phase"] = None
            return orig(self, batch, *args, **kwargs)
        idx = self.__dict__.get(counter_attr, -1) + 1
        self.__dict__[counter_attr] = idx
        self.__dict__[counter_attr + "_phase"] = (name, idx)
        with phase(name, step=idx):
            return orig(self, batch, *args, **kwargs)

    step.__commscope_original__ = orig
    return step


def _same_step_wrapper(orig: Any, counter_attr: str) -> Any:
    """Run a method that belongs to the last forward step (vLLM's sample_tokens) in its phase."""
    from ._phases import phase

    @functools.wraps(orig)
    def call(self, *args, **kwargs):
        last = self.__dict__.get(counter_attr + "_phase")
        if last is None:
            return orig(self, *args, **kwargs)
        with phase(last[0], step=last[1]):
            return orig(self, *args, **kwargs)

    call.__commscope_original__ = orig
    return call


def _vllm_step_kind(scheduler_output: Any) -> str | None:
    """'decode' when every scheduled request gets one token, 'prefill' when any gets more
    (mixed batches included); None for a step without a forward pass."""
    if not getattr(scheduler_output, "total_num_scheduled_tokens", 0):
        return None
    per_req = getattr(scheduler_output, "num_scheduled_tokens", None) or {}
    return "decode" if per_req and max(per_req.values()) == 1 else "prefill"


def _sglang_step_kind(forward_batch: Any) -> str | None:
    mode = getattr(forward_batch, "forward_mode", None)
    if mode is None:
        return None
    if getattr(mode, "is_idle", lambda: False)():
        return None
    return "decode" if mode.is_decode() else "prefill"


def _install_vllm_groups(mod: Any) -> None:
    patch_coordinator(mod.GroupCoordinator, VLLM_METHODS, "vllm")
    _cuda_graphs.install_graph_hooks()


def _install_vllm_worker(mod: Any) -> None:
    cls = getattr(mod, "Worker", None)
    if cls is None:
        return
    for attr, make in (("execute_model", lambda f: _step_wrapper(f, _vllm_step_kind,
                                                                 "_commscope_step")),
                       ("sample_tokens", lambda f: _same_step_wrapper(f, "_commscope_step"))):
        fn = cls.__dict__.get(attr)
        if fn is not None and not hasattr(fn, "__commscope_original__"):
            setattr(cls, attr, make(fn))


def _install_sglang_groups(mod: Any) -> None:
    patch_coordinator(mod.GroupCoordinator, SGLANG_METHODS, "sglang")
    _cuda_graphs.install_graph_hooks()


def _install_sglang_runner(mod: Any) -> None:
    cls = getattr(mod, "ModelRunner", None)
    fn = cls.__dict__.get("forward") if cls is not None else None
    if fn is not None and not hasattr(fn, "__commscope_original__"):
        cls.forward = _step_wrapper(fn, _sglang_step_kind, "_commscope_step")


_TARGETS = {
    "vllm.distributed.parallel_state": ("vllm.groups", _install_vllm_groups),
    "vllm.v1.worker.gpu_worker": ("vllm.steps", _install_vllm_worker),
    "sglang.srt.distributed.parallel_state": ("sglang.groups", _install_sglang_groups),
    "sglang.srt.model_executor.model_runner": ("sglang.steps", _install_sglang_runner),
}


def _on_import(modname: str, module: Any) -> None:
    key, fn = _TARGETS[modname]
    with _LOCK:
        if _DONE.get(key):
            return
        try:
            fn(module)
            _DONE[key] = True
        except Exception as exc:  # an engine version we do not know must still run
            _DONE[key] = False
            print(f"commscope: {key} hooks not installed: {exc!r}", file=sys.stderr)


class _PostImportLoader(importlib.abc.Loader):
    """Delegates to the real loader, then installs the engine's hooks into the new module."""

    def __init__(self, inner: Any, modname: str) -> None:
        self._inner, self._modname = inner, modname

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _on_import(self._modname, module)

    def __getattr__(self, name):  # get_source, get_code, is_package, ... of the real loader
        return getattr(self._inner, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Sees imports of the engine modules in `_TARGETS` only; every other import costs one dict
    lookup here."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _TARGETS or _DONE.get(_TARGETS[fullname][0]):
            return None
        # Another post-import finder asking all finders (us included) must not recurse here.
        if getattr(_SEARCHING, "active", False):
            return None
        _SEARCHING.active = True
        try:
            # Only the finders after this one: a post-import finder placed before us has already
            # wrapped (or will wrap) what we return; asking it again would wrap its loader twice.
            chain = sys.meta_path
            after = chain[chain.index(self) + 1:] if self in chain else chain
            for finder in after:
                if not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _PostImportLoader(spec.loader, fullname)
                    return spec
            return None
        finally:
            _SEARCHING.active = False


_SEARCHING = threading.local()


_FINDER = _PostImportFinder()


def install() -> None:
    """Install the engine hooks: now for engine modules already imported, at import for the
    others. Idempotent; imports no engine."""
    with _LOCK:
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        for modname in _TARGETS:
            mod = sys.modules.get(modname)
            if mod is not None:
                _on_import(modname, mod)


def vllm_plugin() -> None:
    """vLLM `general_plugins` entry point (called in every vLLM process): install the hooks."""
    install()
