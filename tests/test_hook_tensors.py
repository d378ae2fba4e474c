"""How each hook path reads a call's tensors: element counts, dtypes, subclasses, a patched
torch.Tensor, torch-function modes and Python code run while the call is being read. The compiled
hook with the C++ reader, without it, and the Python wrapper must record the same values."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from commscope import profiler
from commscope.profiler import _wrappers
from commscope.profiler._native import native
from tests.analysis_fixtures import session_events
from tests.hook_paths import WORLD, built

pytestmark = pytest.mark.usefixtures("hook_fake_pg")


def test_tensor_subclasses_and_a_patched_tensor_type_are_honoured(tmp_path, hook_path):
    """The compiled hook reads a plain Tensor's count and dtype without looking them up; a
    subclass or torch.Tensor once modified is honoured as by the Python wrapper. Counts are the
    type's (`type(t).numel(t)`, what c10d sends): an instance attribute named numel does not
    count, on any path."""

    class Counted(torch.Tensor):
        def numel(self) -> int:
            return 5

        @property
        def dtype(self):
            return torch.float16

    t, own = torch.ones(3), torch.ones(3)
    own.numel = lambda: 13  # an instance attribute: not the tensor's size
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(t)
        dist.all_reduce(t)
        dist.all_reduce(torch.ones(3).as_subclass(Counted))
        dist.all_reduce(own)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(torch.Tensor, "numel", lambda self: 11)
            m.setattr(torch.Tensor, "dtype", property(lambda self: torch.int8), raising=False)
            dist.all_reduce(t)
        dist.all_reduce(t)
    df = session_events(s)
    assert df["count"].tolist() == [3, 3, 5, 3, 11, 3]
    assert df["dtype"].tolist() == ["float32", "float32", "float16", "float32", "int8",
                                    "float32"]


def test_element_counts_of_plain_tensors(tmp_path, hook_path):
    """Views, dtypes of every size, a sparse tensor, an empty one and the two tensors of an
    all_gather count the same on both paths."""
    calls = [((torch.ones(4, 6)[:, ::2],), 12), ((torch.ones(5, dtype=torch.float16),), 5),
             ((torch.ones(2, dtype=torch.complex64),), 2), ((torch.ones(7, dtype=torch.bool),), 7),
             ((torch.ones(3).to_sparse(),), 3), ((torch.ones(0),), 0)]
    with profiler.trace(tmp_path) as s:
        for args, _ in calls:
            dist.all_reduce(*args)
        dist.all_gather_into_tensor(torch.empty(4 * WORLD), torch.ones(4))
    df = session_events(s)
    assert df["count"].tolist() == [n for _, n in calls] + [4]
    assert df["bytes"].tolist() == [48, 10, 16, 7, 12, 0, 16 * WORLD]
    assert df["out_bytes"].tolist()[-1] == 16 * WORLD
    assert df["dtype"].tolist() == ["float32", "float16", "complex64", "bool", "float32",
                                    "float32", "float32"]


@built
def test_the_cpp_tensor_reader_is_taken_only_for_the_torch_it_was_built_for(monkeypatch):
    ct = native("_ctensor")
    if ct is None:
        pytest.skip("C++ tensor reader not built (python -m commscope.profiler._build_ctensor)")
    assert torch.__version__ == ct.TORCH_VERSION
    assert _wrappers._plain_tensor()[3] is ct.tensor_info
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert _wrappers._plain_tensor()[3] is None


def test_a_torch_function_mode_is_honoured_on_every_path(tmp_path, hook_path):
    """Under a mode that overrides numel and dtype, every path records what the mode says (the
    C++ reader steps aside while a mode is active); outside it, the tensor's own values."""

    class Override(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func == torch.Tensor.dtype.__get__:  # a new method-wrapper each time
                return torch.float64
            if getattr(func, "__name__", None) == "numel":
                return 99
            return func(*args, **(kwargs or {}))

    t = torch.ones(3)
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(2, dtype=torch.float16))  # the group's first call
        with Override():
            dist.all_reduce(t)
        dist.all_reduce(t)
    df = session_events(s)
    assert df["count"].tolist() == [2, 99, 3]
    assert df["dtype"].tolist() == ["float16", "float64", "float32"]
    assert df["bytes"].tolist() == [4, 99 * 8, 12]


def test_python_code_run_while_a_call_is_read_does_not_change_later_calls(tmp_path, hook_path):
    """A subclass's numel that changes the other tensor's dtype mid-call: later calls still get
    their own tensors' dtypes (no per-scalar-type cache can keep a wrong one)."""
    inp = torch.ones(4)

    class Swapping(torch.Tensor):
        def numel(self) -> int:
            inp.data = torch.ones(4, dtype=torch.float64)
            return 4 * WORLD

    with profiler.trace(tmp_path) as s:
        dist.all_gather_into_tensor(torch.empty(8, dtype=torch.float16),
                                    torch.ones(2, dtype=torch.float16))
        dist.all_gather_into_tensor(torch.empty(4 * WORLD).as_subclass(Swapping), inp)
        dist.all_reduce(torch.ones(2))
        dist.all_reduce(torch.ones(5, dtype=torch.float16))
    df = session_events(s)
    assert df["count"].tolist() == [2, 4, 2, 5]
    assert df["dtype"].tolist()[2:] == ["float32", "float16"]
    assert df["bytes"].tolist()[2:] == [8, 10]
