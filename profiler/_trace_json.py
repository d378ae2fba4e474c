"""Streaming reader for Chrome-trace JSON (torch.profiler / Kineto, commscope's export).

A Kineto trace is one JSON object whose `traceEvents` array holds nearly all of the bytes.
Loading it whole costs several times the file size (HTA issue #250: 200 GB of JSON needed
~950 GB of RAM), so the array is decoded in chunks of a few MB: memory is bounded by the chunk
and by what the caller keeps, never by the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["TraceJsonError", "read_chrome_trace"]

_CHUNK_CHARS = 1 << 21       # 2 Mi characters of text per read (~20 MB of decoded events)
_WS = " \t\r\n"
_DECODER = json.JSONDecoder()


class TraceJsonError(ValueError):
    """The text is not a complete Chrome-trace JSON object (the message says where)."""


class _Buffer:
    def __init__(self, fh: IO[str]):
        self.fh = fh
        self.buf = ""
        self.pos = 0
        self.fed = 0         # characters dropped from the front of buf so far
        self.eof = False

    def fill(self) -> bool:
        """Append one chunk; False at end of file."""
        if self.eof:
            return False
        chunk = self.fh.read(_CHUNK_CHARS)
        if not chunk:
            self.eof = True
            return False
        self.fed += self.pos
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def skip_ws(self) -> str:
        """Skip whitespace; the next character, '' at end of file."""
        while True:
            n = len(self.buf)
            while self.pos < n and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < n:
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.skip_ws()
        if not c or c not in chars:
            found = repr(c) if c else "end of file"
            raise TraceJsonError(f"expected one of {chars!r} but found {found} "
                                 f"(truncated or not a JSON trace)")
        self.pos += 1
        return c

    def value(self) -> Any:
        """Decode one JSON value, reading more text until it is complete."""
        self.skip_ws()
        while True:
            try:
                val, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # Incomplete at the end of the buffer: read more. Otherwise it is broken.
                if self.fill():
                    continue
                raise TraceJsonError(f"invalid or truncated JSON: {exc.msg}") from None
            # A number at the very end of the buffer may continue in the next chunk.
            if end >= len(self.buf) and not self.eof and self.fill():
                continue
            self.pos = end
            return val


def _events(b: _Buffer) -> Iterator[list]:
    """Batches of events of the array whose '[' was just consumed."""
    if b.skip_ws() == "]":
        b.pos += 1
        return
    slow_until = -1      # text offset up to which the fast path already failed once
    while True:
        c = b.skip_ws()
        if not c:
            raise TraceJsonError("traceEvents array is truncated (file ends inside it)")
        # Fast path: decode everything up to the last '},' of the buffer in one call. The guess
        # is right only if that '}' closes an event; otherwise the brackets do not balance and
        # json.loads fails, so a successful decode is always event-aligned. After a failure the
        # slow path runs up to that point, so each buffer costs at most one failed attempt.
        cut = b.buf.rfind("},", b.pos)
        if cut > b.pos and b.fed + b.pos >= slow_until:
            try:
                batch = json.loads("[" + b.buf[b.pos:cut + 1] + "]")
            except json.JSONDecodeError:
                batch = None
                slow_until = b.fed + cut
            if batch is not None:
                b.pos = cut + 2
                yield batch
                if b.pos >= len(b.buf) - 65536:
                    b.fill()
                continue
        # Slow path: one event at a time (end of the array, odd formatting).
        yield [b.value()]
        sep = b.expect(",]")
        if sep == "]":
            return
        if len(b.buf) - b.pos < 65536:
            b.fill()


def read_chrome_trace(fh: IO[str], on_events: Callable[[list], None]) -> dict[str, Any]:
    """Stream a Chrome-trace JSON object from a text file handle.

    `on_events` receives batches (lists) of event dicts of `traceEvents`, in file order; the
    other top-level keys are returned as a dict (`traceEvents` absent). A bare JSON array of
    events (the other form Chrome tracing accepts) is read the same way. Raises
    `TraceJsonError` on truncated or invalid input.
    """
    b = _Buffer(fh)
    first = b.expect("{[")
    if first == "[":
        for batch in _events(b):
            on_events(batch)
        return {}
    top: dict[str, Any] = {}
    if b.skip_ws() == "}":
        b.pos += 1
        return top
    while True:
        key = b.value()
        if not isinstance(key, str):
            raise TraceJsonError("object key is not a string (not a JSON trace)")
        b.expect(":")
        if key == "traceEvents" and b.skip_ws() == "[":
            b.pos += 1
            top["traceEvents"] = True
            for batch in _events(b):
                on_events(batch)
        else:
            top[key] = b.value()
        if b.expect(",}") == "}":
            break
    if not top.pop("traceEvents", False):
        raise TraceJsonError("no 'traceEvents' array (not a Chrome trace)")
    return top
