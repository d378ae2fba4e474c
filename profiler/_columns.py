"""Columnar recording for the common call: packed int64 records and a process-wide key table.

An ordinary call (a blocking collective on CPU tensors, no CUDA timing) leaves no Python row
behind: at return the hook packs its integer fields into one fixed-size int64 record appended to
each session's `ColumnBuffer` (one C call, ~as cheap as appending a tuple), and the writer takes
the buffer as an (n, K) numpy array, so nothing is converted per row at flush time. The call's
object-valued fields (API, dtype, group, phase name and path) are interned once in `KeyTable`,
bounded by the program's structure, and the record stores the key's code; the phase's step, which
changes every decode step, is a field of its own.

Calls that complete later (async work), carry extra fields (errors, peers, CUDA events, engine
metadata) or do not fit in int64 stay Python rows (`_rows.R`), written next to these.
"""

from __future__ import annotations

import sys
import threading
from array import array
from struct import Struct
from typing import Any

import numpy as np

from ._native import native

_chook = native("_chook")

__all__ = ["ColumnBuffer", "KeyTable", "FIELDS", "K", "NO_STEP", "pack"]

#: Fields of a packed record, in order. A blocking call ends when it returns, so its end and
#: return times are one field (`t_end_ns`).
FIELDS = ("t_start_ns", "t_end_ns", "count", "in_numel", "out_numel", "pg_seq", "seq", "tid",
          "step", "key")
K = len(FIELDS)
T0, TEND, COUNT, IN, OUT, PGSEQ, SEQ, TID, STEP, KEY = range(K)
#: `step` of a call outside any phase with a step.
NO_STEP = -(1 << 63)
#: Packs one record; raises struct.error for a value that is not an int64 (None, huge).
pack = Struct(f"{K}q").pack


class KeyTable:
    """Codes for (api index, dtype, GroupInfo, phase name, phase path): a handful per program.

    Codes are never reused or removed, so a record's code stays valid for any later snapshot.
    """

    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self._index: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def code(self, api_idx: int, dtype: Any, group: Any, phase: Any) -> tuple[int, int]:
        """(key code, step) of a call; `phase` is a PhaseFrame or None."""
        if phase is None:
            k, step = (api_idx, dtype, group, None, None), NO_STEP
        else:
            k = (api_idx, dtype, group, phase.name, phase.path)
            step = NO_STEP if phase.step is None else phase.step
        c = self._index.get(k)
        if c is None:
            with self._lock:  # two threads seeing a new key at once get one code
                c = self._index.get(k)
                if c is None:
                    c = len(self.keys)
                    self.keys.append(k)
                    self._index[k] = c
        return c, step

    def snapshot(self) -> list[tuple]:
        """The keys so far (every code in a record taken before this call is an index)."""
        return list(self.keys)


class _Records(array):
    """The pure-Python `Records`: an array('q') with the session's flush threshold."""

    flush_at = sys.maxsize  # until the session sets it


class ColumnBuffer:
    """A session's packed records (`FIELDS`, int64 each) since the last flush: `ints` is the
    compiled hook's `Records` when it is built (the hook appends in C), else an `array('q')`
    (`_Records`); both take `frombytes(record)` and `len()` in int64 values, and carry
    `flush_at`: the length at which the hot path flushes the session (so it compares two
    numbers of one object)."""

    __slots__ = ("ints",)

    def __init__(self) -> None:
        self.ints = _chook.Records() if _chook is not None else _Records("q")

    def take(self) -> np.ndarray:
        """Remove the records appended so far and return them as an (n, K) int64 array.

        Records are appended whole (one `frombytes` per record, under the GIL), so the length
        is always a multiple of K; records appended meanwhile by other threads stay. The data
        is copied out: a numpy view would pin the array's buffer and make the hook's next
        append fail.
        """
        ints = self.ints
        if isinstance(ints, array):
            n = len(ints)
            data = ints[:n]
            del ints[:n]
        else:
            data = ints.take()
        return np.frombuffer(data, np.int64).reshape(-1, K)
