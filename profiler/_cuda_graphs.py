"""CUDA graphs: calls recorded during capture are the graph's template; each replay emits it again.

At replay no Python runs per collective, so no hook can see one. Capture runs the full Python
path once: the instrumented calls recorded then (cuda_graph = 'capture') are kept per graph, and
every `CUDAGraph.replay()` emits them again (cuda_graph = 'replay') with the replay's host time,
the current phase, fresh pg_seq/seq numbers, and on a GPU one pair of CUDA events around the
replay (each replayed row carries the device time of the whole replay, an upper bound for the
collective; per-collective device time comes from a Kineto trace). Counts and bytes are the
captured ones, which is what the graph's kernels move (padded sizes included).

Capture state is tracked by the hooks themselves, per thread (`capturing`): CPU builds of torch
have only a stub `CUDAGraph`, and `torch.cuda.is_current_stream_capturing()` fails there.
The patched methods are `capture_begin`, `capture_end`, `replay` and `reset` of
`torch.cuda.CUDAGraph` (Python methods since torch 2.x; `torch.cuda.graph` calls them).
"""

from __future__ import annotations

import functools
import threading
import weakref
from time import time_ns
from typing import Any

__all__ = ["STATE", "GraphState", "install_graph_hooks", "begin_capture", "end_capture",
           "replay_template"]

_get_ident = threading.get_ident


class GraphState:
    """Templates per graph and the capture in progress per thread."""

    def __init__(self) -> None:
        self.capturing: dict[int, Any] = {}   # thread ident -> key of the graph being captured
        self.templates: dict[Any, list] = {}  # key -> [(api_idx, op, desc, source), ...]
        self.replays: dict[Any, int] = {}     # key -> replays emitted so far
        self._lock = threading.Lock()

    def add_to_template(self, key: Any, entry: tuple) -> None:
        with self._lock:
            self.templates.setdefault(key, []).append(entry)


STATE = GraphState()
_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_next_key = iter(range(1, 1 << 62))


def graph_key(graph: Any) -> Any:
    """A stable key for a graph object that is not reused after the graph dies."""
    try:
        key = _KEYS.get(graph)
        if key is None:
            key = _KEYS[graph] = next(_next_key)
        return key
    except TypeError:  # not weak-referenceable
        return ("id", id(graph))


def begin_capture(key: Any) -> None:
    """Start the template of graph `key` on this thread (a re-capture replaces it)."""
    with STATE._lock:
        STATE.templates[key] = []
        STATE.replays[key] = 0
    STATE.capturing[_get_ident()] = key


def end_capture(key: Any) -> None:
    """Stop collecting into graph `key`'s template on this thread."""
    if STATE.capturing.get(_get_ident()) == key:
        del STATE.capturing[_get_ident()]


def forget(key: Any) -> None:
    """Drop graph `key`'s template (CUDAGraph.reset)."""
    with STATE._lock:
        STATE.templates.pop(key, None)
        STATE.replays.pop(key, None)


def replay_template(key: Any, t0_ns: int, t1_ns: int, gpu: Any = None) -> int:
    """Emit graph `key`'s template as replayed rows timed [t0_ns, t1_ns]; returns rows emitted.

    `gpu` is the replay's CUDA event pair ([start, end]) or None. This is what the patched
    `replay` calls after the graph was launched.
    """
    from ._instrument import _emit_row

    template = STATE.templates.get(key)
    if not template:
        return 0
    n = 0
    for api_idx, op, desc, source in template:
        if _emit_row(api_idx, op, desc, t0_ns, t1_ns, None, gpu, source, "replay") is not None:
            n += 1
    with STATE._lock:
        STATE.replays[key] = STATE.replays.get(key, 0) + 1
    return n


# -- hooks on the graph class -----------------------------------------------------------------------
_INSTALLED: dict[type, dict[str, Any]] = {}


def install_graph_hooks(cls: Any = None) -> bool:
    """Wrap `capture_begin`/`capture_end`/`replay`/`reset` of `cls` (default
    `torch.cuda.CUDAGraph`) once; returns whether hooks are now in place. Idempotent."""
    if cls is None:
        try:
            import torch

            cls = torch.cuda.CUDAGraph
        except Exception:
            return False
    if cls in _INSTALLED:
        return True
    saved = {}
    for attr, make in (("capture_begin", _wrap_begin), ("capture_end", _wrap_end),
                       ("replay", _wrap_replay), ("reset", _wrap_reset)):
        orig = cls.__dict__.get(attr)
        if orig is None or not callable(orig):
            continue
        saved[attr] = orig
        setattr(cls, attr, make(orig))
    _INSTALLED[cls] = saved
    return True


def uninstall_graph_hooks(cls: Any) -> None:
    """Restore the methods `install_graph_hooks(cls)` replaced."""
    for attr, orig in _INSTALLED.pop(cls, {}).items():
        setattr(cls, attr, orig)


def _wrap_begin(orig: Any) -> Any:
    @functools.wraps(orig)
    def capture_begin(self, *args, **kwargs):
        key = graph_key(self)
        begin_capture(key)
        try:
            return orig(self, *args, **kwargs)
        except BaseException:
            end_capture(key)
            forget(key)
            raise

    return capture_begin


def _wrap_end(orig: Any) -> Any:
    @functools.wraps(orig)
    def capture_end(self, *args, **kwargs):
        try:
            return orig(self, *args, **kwargs)
        finally:
            end_capture(graph_key(self))

    return capture_end


def _wrap_reset(orig: Any) -> Any:
    @functools.wraps(orig)
    def reset(self, *args, **kwargs):
        forget(graph_key(self))
        return orig(self, *args, **kwargs)

    return reset


def _wrap_replay(orig: Any) -> Any:
    from ._recorder import RECORDER

    sessions = RECORDER.sessions

    @functools.wraps(orig)
    def replay(self, *args, **kwargs):
        if not sessions:
            return orig(self, *args, **kwargs)
        key = graph_key(self)
        if not STATE.templates.get(key):
            return orig(self, *args, **kwargs)
        ev0 = _event() if RECORDER.cuda_timing else None
        t0 = time_ns()
        res = orig(self, *args, **kwargs)
        t1 = time_ns()
        ev1 = _event() if ev0 is not None else None
        replay_template(key, t0, t1, None if ev1 is None else [ev0, ev1])
        return res

    return replay


def _event() -> Any:
    try:
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev
    except Exception:  # no CUDA (a stand-in graph class): no device time
        return None
