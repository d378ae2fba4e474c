"""The session's writer thread: encodes and writes parts, and flushes on a timer.

Jobs run in submission order. When no job arrives for `interval_s`, the thread calls `on_timer`
(the session's timed flush), so buffered rows and calls still in flight reach the disk even if
the traced thread is blocked in a collective that never returns (a hang killed by SIGKILL or
the NCCL watchdog's SIGABRT, which skip atexit). A daemon thread: it never keeps the process
alive, and it still runs while atexit closes the session.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["WriterThread"]


class WriterThread:
    """One background thread per session; `submit(fn, *args) -> Future`."""

    def __init__(self, interval_s: float, on_timer: Callable[[], Any]) -> None:
        self.interval_s = interval_s
        self._on_timer = on_timer
        self._q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="commscope-writer", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable, *args: Any) -> Future:
        fut: Future = Future()
        self._q.put((fut, fn, args))
        return fut

    def on_thread(self) -> bool:
        """Whether the caller runs on this writer thread."""
        return threading.current_thread() is self.thread

    def stop(self) -> None:
        """Run the queued jobs, then end the thread (waits for it)."""
        self._q.put(None)
        if not self.on_thread():
            self.thread.join()

    def _run(self) -> None:
        deadline = time.monotonic() + self.interval_s
        while True:
            try:
                item = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                try:
                    self._on_timer()
                except Exception:
                    pass  # a failed timed flush is retried at the next one
                deadline = time.monotonic() + self.interval_s
                continue
            if item is None:
                return
            fut, fn, args = item
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)
