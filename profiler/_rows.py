"""The raw row layout the hooks append, and the API registry its first field indexes.

A raw row is a tuple or list indexed by `R`; ordinary blocking calls keep their extra field
None, async or unusual calls carry a list indexed by `X`. The writer turns rows into Arrow columns.
"""

from __future__ import annotations

from typing import Any

__all__ = ["R", "X", "API_TABLE", "register_api", "DispatchHandle", "format_exc", "new_extra",
           "marked"]


class R:
    """Indices of a raw row. Ordinary blocking calls are tuples whose extra field X is None;
    async or unusual calls are lists (mutated once at completion) with X a list (see `X`)."""

    API, T0, TEND, TRET, DTYPE, COUNT, IN, OUT, PG, PGSEQ, SEQ, PHASE, TID, X = range(14)


class X:
    """Indices of a row's extra list. SOURCE and CUDA_GRAPH are optional (rows of instrumented
    engine methods append them; the writer reads them where present)."""

    TWAIT, COMPLETION, PEER, ROOT, ASYNC, ERROR, DEVICE, GPU, SOURCE, CUDA_GRAPH = range(10)


class DispatchHandle:
    """Completion handle of a call recorded by the capture="full" dispatch mode."""

    __slots__ = ("obj", "ns")

    def __init__(self, obj: Any, ns: str) -> None:
        self.obj, self.ns = obj, ns


# API table: index -> (api name, op, capture). Rows store the index (a small int), so the hot
# path never touches the strings.
API_TABLE: list[tuple[str, str, str]] = []
_API_INDEX: dict[str, int] = {}


def register_api(name: str, op: str, capture: str = "hook") -> int:
    """Index of (api name, op, capture) in `API_TABLE`, registering it on first use."""
    key = f"{name}|{op}"
    if key not in _API_INDEX:
        _API_INDEX[key] = len(API_TABLE)
        API_TABLE.append((name, op, capture))
    return _API_INDEX[key]



def format_exc(exc: BaseException) -> str:
    """`Type: first line of the message`, bounded: the `error` column's text."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:2000]


def new_extra(completion: str) -> list:
    """A row's extra list (`X`) with defaults, for a row that had none."""
    return [None, completion, None, None, False, None, None, None]


def marked(row: list, completion: str, end: int | None) -> list:
    """A copy of `row` with its completion and t_end_ns replaced (rows are shared between
    sessions and still mutated by the hooks: never change them in place)."""
    row = list(row)
    x = new_extra(completion) if row[R.X] is None else list(row[R.X])
    x[X.COMPLETION] = completion
    # Never completed, so no end event: no device time (and the start event is not handed back
    # to the pool, the original row may still hold it).
    x[X.GPU] = None
    row[R.TEND] = end
    row[R.X] = x
    return row
