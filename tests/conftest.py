"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from commscope.profiler import _columns, _wrappers
from commscope.profiler._native import native
from tests.distributed import fake_process_group
from tests.hook_paths import RANK, WORLD, use_python_path


@pytest.fixture(scope="module")
def hook_fake_pg():
    """The hook tests' fake process group, one per test module (`usefixtures`)."""
    with fake_process_group(RANK, WORLD):
        yield


@pytest.fixture(params=["native", "native_via_torch", "python"])
def hook_path(request, monkeypatch) -> str:
    """Each hook in turn: the compiled one reading tensors in C++ (`_ctensor`), the compiled one
    asking torch through Python (each skipped where it is not built or not usable), the Python
    one."""
    if request.param == "python":
        use_python_path(monkeypatch)
        return "python"
    if _columns._chook is None:
        pytest.skip("compiled hook not built, or COMMSCOPE_NO_NATIVE=1")
    if request.param == "native" and _wrappers._plain_tensor()[3] is None:
        pytest.skip("C++ tensor reader not built for this torch "
                    "(python -m commscope.profiler._build_ctensor)")
    if request.param == "native_via_torch":
        monkeypatch.setattr(_wrappers, "native",
                            lambda name: None if name == "_ctensor" else native(name))
    return "native"
