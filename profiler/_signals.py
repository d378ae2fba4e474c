"""Process exit paths of open sessions: atexit and SIGTERM close every open session.

SIGTERM: Python runs the handler on the main thread. If the main thread is itself inside a
trace write (a flush or a close holds a session's lock), closing now would deadlock or lose the
part: the signal is held back and re-delivered, on the main thread, once the write has released
its lock. If another thread is writing, the handler's close waits for that thread's write and
then writes everything still buffered. After closing, the signal takes its previous disposition
(the default one terminates the process as it would have without tracing).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from typing import Any

__all__ = ["OPEN", "close_all", "signals_deferred", "install_exit_handlers"]

OPEN: list[Any] = []   # open sessions, oldest first
_state: dict[str, Any] = {"depth": 0, "deferred": None}


def close_all() -> None:
    """Close every open session, newest first; never raises."""
    for s in reversed(list(OPEN)):
        try:
            s.close()
        except Exception:
            pass


@contextlib.contextmanager
def signals_deferred():
    """On the main thread: a SIGTERM arriving inside the block is handled when it ends (after
    the caller released its locks). Other threads never run signal handlers: no-op there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["deferred"] is not None:
            signum, frame = _state["deferred"]
            _state["deferred"] = None
            _on_sigterm(signum, frame)


def _on_sigterm(signum: int, frame: Any) -> None:
    if _state["depth"]:
        # The main thread is inside a write: finish it first; its `finally` re-delivers.
        _state["deferred"] = (signum, frame)
        return
    close_all()
    prev = _state.get("prev")
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # on the main thread: allowed
        os.kill(os.getpid(), signal.SIGTERM)


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker, ...) has no writer thread and must not write the
    parent's rows under the parent's file names: its copies of the sessions stop recording."""
    from ._recorder import RECORDER

    for s in OPEN:
        s._closed = True
    OPEN.clear()
    RECORDER.sessions.clear()
    RECORDER.paused.clear()


def install_exit_handlers() -> None:
    """Register the atexit hook and the SIGTERM handler once per process (main thread only)."""
    if _state.get("atexit") is None:
        atexit.register(close_all)
        os.register_at_fork(after_in_child=_forget_in_child)
        _state["atexit"] = True
    if "prev" not in _state and threading.current_thread() is threading.main_thread():
        try:
            _state["prev"] = signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            pass
