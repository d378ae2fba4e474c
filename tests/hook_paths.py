"""What the hook tests share: their fake group's size and rank, a mark for tests of the compiled
hook, and how to install the pure-Python path. The `hook_path` fixture (conftest.py) runs a test
on each path."""

from __future__ import annotations

import pytest

from commscope.profiler import _columns, _wrappers

WORLD, RANK = 4, 1
built = pytest.mark.skipif(_columns._chook is None,
                           reason="compiled hook not built (no C compiler), or COMMSCOPE_NO_NATIVE=1")


def use_python_path(m: pytest.MonkeyPatch) -> None:
    """Install the pure-Python wrappers and buffers, as when the extension is not built."""
    m.setattr(_wrappers, "_chook", None)
    m.setattr(_columns, "_chook", None)
