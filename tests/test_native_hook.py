"""The compiled hook (`profiler/_chook.c`) records exactly what the Python wrapper records.

The same calls run twice on the fake process group: once with the compiled hook installed (when
it is built) and once with the pure-Python path (what runs without a C compiler), and the traces
must be equal in every column but the clock readings. The calls cover each compiled layout with
positional, keyword and mixed arguments, subgroups, dtypes, phases and steps, plus every case the
C code hands back to Python (async calls, bad arguments, errors, values that are not int64).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import itertools
import sys
import threading
import weakref

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist

from commscope import profiler
from commscope.profiler import _columns, _ops, _wrappers
from commscope.profiler._recorder import RECORDER
from tests.analysis_fixtures import session_events
from tests.hook_paths import RANK, WORLD, built, use_python_path

pytestmark = pytest.mark.usefixtures("hook_fake_pg")


CLOCKS = ["run_id", "pid", "t_start_ns", "t_end_ns", "t_return_ns", "t_wait_ns"]


def _workload(g, errors: list) -> None:
    t, h = torch.ones(6), torch.ones(3, dtype=torch.bfloat16)
    out, inp = torch.empty(4 * WORLD), torch.ones(4)
    dist.all_reduce(t)
    dist.all_reduce(t, dist.ReduceOp.MAX)
    dist.all_reduce(tensor=h, group=None, op=dist.ReduceOp.SUM)
    dist.all_reduce(t, dist.ReduceOp.SUM, g, False)
    with profiler.phase("prefill"):
        dist.all_gather_into_tensor(out, inp)
        dist.all_gather_into_tensor(output_tensor=torch.empty(8), input_tensor=inp, group=g)
        dist._all_gather_base(out, inp)
        dist.reduce_scatter_tensor(torch.empty(2), torch.ones(2 * WORLD))
        dist.reduce_scatter_tensor(torch.empty(3), torch.ones(6), group=g, op=dist.ReduceOp.SUM)
    for step in range(3):
        with profiler.phase("decode", step=step):
            dist.all_reduce(h)
            dist.all_to_all_single(torch.empty(8), torch.ones(8))
            dist.all_to_all_single(torch.empty(5), torch.ones(8), [2, 1, 1, 1], [2, 2, 2, 2])
    with profiler.phase("generate"):  # nested: each step's path is a new, equal string
        for step in (7, None, 2**62):
            with profiler.phase("decode", step=step):
                dist.all_reduce(h)
    dist.barrier()
    dist.barrier(group=g)
    dist.all_reduce(t, async_op=True).wait()  # async: the Python path records it
    dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=False)
    dist.all_gather([torch.empty(2) for _ in range(WORLD)], torch.ones(2))  # Python-only layout
    for bad in ((torch.ones(2),), ("not a tensor",)):
        try:
            dist.all_reduce(*bad, op="not an op")
        except TypeError as exc:
            errors.append(str(exc).splitlines()[0])


def _record(tmp_path, name: str, g, flush_events: int = 65536):
    errors: list = []
    with profiler.trace(tmp_path / name, flush_events=flush_events) as s:
        hooked = type(dist.all_reduce).__name__, type(s._cols.ints).__name__
        _workload(g, errors)
    return session_events(s).drop(columns=CLOCKS), hooked, errors, s.parts


@built
@pytest.mark.parametrize("flush_events", [65536, 5, sys.maxsize])
def test_compiled_and_python_hooks_record_the_same_rows(tmp_path, monkeypatch, flush_events):
    """Also when the hook flushes itself every few calls, and when it never does."""
    g = dist.new_group([0, 1])
    native, hooked, errors, parts = _record(tmp_path, "native", g, flush_events)
    assert hooked == ("Hook", "Records")  # the compiled path really ran
    with monkeypatch.context() as m:
        use_python_path(m)
        python, py_hooked, py_errors, py_parts = _record(tmp_path, "python", g, flush_events)
    assert parts == py_parts == (6 if flush_events == 5 else 1)
    assert py_hooked == ("function", "_Records")
    assert errors == py_errors and len(errors) == 2
    assert len(native) == 27
    assert native["api"].value_counts().to_dict() == {
        "all_reduce": 13, "all_to_all_single": 6, "all_gather_into_tensor": 2,
        "reduce_scatter_tensor": 2, "barrier": 2, "_all_gather_base": 1, "all_gather": 1}
    assert native["bytes"].tolist()[:4] == [24, 24, 6, 24]
    assert native["pg_size"].tolist()[:4] == [WORLD, WORLD, WORLD, 2]
    assert native["step"].dropna().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 7, 2**62]
    assert native["phase_path"].tolist()[18:21] == ["generate/decode"] * 3
    assert native["error"].notna().sum() == 1  # the bad op; the bad tensor is never recorded
    assert native["seq"].tolist() == list(range(27))
    # Every column but the clocks, value for value (dtypes too).
    assert native.columns.tolist() == python.columns.tolist()
    tn, tp = (pa.Table.from_pandas(df, preserve_index=False) for df in (native, python))
    assert [c for c in tn.column_names if not tn[c].equals(tp[c])] == []


def test_a_group_reinitialised_mid_session_is_resolved_again(tmp_path, hook_path):
    """destroy_process_group and init_process_group with another world size inside a session:
    the default group's next call records the new group (the compiled hook keeps its last group
    only until the registry is cleared)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    t = torch.ones(3)
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(t)
        dist.all_reduce(t)
        dist.destroy_process_group()
        try:
            dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
            dist.all_reduce(t)
            dist.all_reduce(t)
        finally:  # the module's group back, whatever failed above
            if dist.is_initialized():
                dist.destroy_process_group()
            dist.init_process_group("fake", rank=RANK, world_size=WORLD, store=FakeStore())
    df = session_events(s)
    assert df["pg_size"].tolist() == [WORLD, WORLD, 2, 2]
    assert df["pg_ranks"].map(list).tolist() == [list(range(WORLD))] * 2 + [[0, 1]] * 2
    assert df["bytes"].tolist() == [12] * 4
    # Counters are kept per group name across a re-init (both worlds' groups are named "0").
    assert df["pg_name"].nunique() == 1 and df["pg_seq"].tolist() == [0, 1, 2, 3]


def test_a_destroyed_group_is_not_kept_alive(tmp_path, hook_path):
    """A subgroup destroyed and dropped mid-session is freed at once on every path: the compiled
    hook remembers its last group by a weak reference."""
    t = torch.ones(3)
    with profiler.trace(tmp_path) as s:
        sub = dist.new_group([0, RANK])
        dist.all_reduce(t, group=sub)
        dist.all_reduce(t, group=sub)  # the compiled hook's last group from here
        alive = weakref.ref(sub)
        dist.destroy_process_group(sub)
        del sub
        gc.collect()
        assert alive() is None
        dist.all_reduce(t)
    assert session_events(s)["pg_size"].tolist() == [2, 2, WORLD]


class _IndexSized:
    """A tensor-like argument whose element count is a numpy integer (an int by __index__, as
    struct.pack takes it): a packed record on both paths."""

    dtype = torch.float32

    def numel(self) -> np.int64:
        return np.int64(7)


class _Unsized:
    """A tensor-like argument whose element count is not an int (a packed record cannot hold
    it: the call becomes a raw row, whose count is null)."""

    dtype = torch.float32

    def numel(self) -> None:
        return None


def _call_wrapped(tmp_path, path: str, arg: object):
    """A session with one ordinary all_reduce, then `arg` passed to a freshly made all_reduce
    wrapper around a no-op; returns the session and its buffered (packed values, raw rows)."""
    spec = next(s for s in _ops.DIST_APIS if s.name == "all_reduce")
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(1))  # registers the default group's counter
        wrapped = _wrappers.make_wrapper(RECORDER, 0, spec, lambda *a, **k: "done", True)
        assert type(wrapped).__name__ == ("Hook" if path == "native" else "function")
        assert wrapped(arg) == "done"
        buffered = len(s._cols.ints), len(s._buf)
    return s, buffered


def test_values_not_int64_become_a_raw_row(tmp_path, hook_path):
    s, buffered = _call_wrapped(tmp_path, hook_path, _Unsized())
    assert buffered == (10, 1)  # one packed record, one raw row
    df = session_events(s)
    assert df["count"].tolist()[0] == 1 and df["count"].isna().tolist() == [False, True]
    assert df["dtype"].tolist() == ["float32", "float32"]
    assert df["completion"].tolist() == ["return", "return"]
    assert df["pg_seq"].tolist() == [0, 1]


def test_index_ints_become_a_packed_record(tmp_path, hook_path):
    s, buffered = _call_wrapped(tmp_path, hook_path, _IndexSized())
    assert buffered == (20, 0)
    assert session_events(s)["count"].tolist() == [1, 7]


@built
def test_the_hook_reads_the_recorders_slots_on_every_call(tmp_path, monkeypatch):
    """`cuda_timing` and `seq` are read from the recorder at each call (Recorder.__slots__): a
    change is seen at the next call, as by the Python wrapper."""
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(1))  # a group's first call: the Python path
        dist.all_reduce(torch.ones(1))
        assert (len(s._cols.ints), len(s._buf)) == (2 * _columns.K, 0)  # both packed here
        with monkeypatch.context() as m:
            m.setattr(RECORDER, "cuda_timing", True)
            dist.all_reduce(torch.ones(1))  # CUDA timing: the Python wrapper, a raw row
        assert (len(s._cols.ints), len(s._buf)) == (2 * _columns.K, 1)
        RECORDER.seq = RECORDER.new_counter()
        dist.all_reduce(torch.ones(1))
        assert len(s._cols.ints) == 3 * _columns.K
    assert session_events(s)["seq"].tolist() == [0, 0, 1, 2]


class _Interrupted:
    """numel() raises KeyboardInterrupt (a Ctrl-C landing in Python code the hook calls)."""

    dtype = torch.float32
    calls = 0

    def numel(self) -> int:
        self.calls += 1
        raise KeyboardInterrupt


class _MarksBusy:
    """numel() leaves the thread marked busy, as an unbalanced unrecorded() block would."""

    dtype = torch.float32

    def numel(self) -> int:
        RECORDER.busy[threading.get_ident()] = True
        return 2


def test_interrupts_propagate_and_a_busy_mark_set_meanwhile_is_replaced(tmp_path, hook_path):
    spec = next(s for s in _ops.DIST_APIS if s.name == "all_reduce")
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(1))  # registers the default group's counter
        wrapped = _wrappers.make_wrapper(RECORDER, 0, spec, lambda *a, **k: "done", True)
        x = _Interrupted()
        with pytest.raises(KeyboardInterrupt):
            wrapped(x)
        assert x.calls == 1  # not swallowed and retried on another path
        assert wrapped(_MarksBusy()) == "done"
        assert threading.get_ident() not in RECORDER.busy
        dist.all_reduce(torch.ones(3))  # so the thread is recorded again
    assert session_events(s)["count"].tolist() == [1, 2, 3]


@built
@pytest.mark.parametrize("change", ["remove", "grow"])
@pytest.mark.parametrize("read", ["pop", "items", "getitem"])
def test_busy_map_reads_survive_a_collection_that_changes_the_map(tmp_path, change, read):
    """Reading the compiled hook's entry builds tuples; a collection they trigger can run a
    finalizer that changes the map: the read must neither crash nor pair wrong values."""
    busy, spec, got = RECORDER.busy, next(s for s in _ops.DIST_APIS if s.name == "all_reduce"), []

    class Bomb:
        def __del__(self):
            if change == "remove":
                busy.pop(threading.get_ident(), None)
            else:
                for k in range(64):  # the slot array is reallocated
                    busy[10**6 + k] = True

    def orig(*args, **kwargs):
        tid = threading.get_ident()
        keep = [(i, i, i, i) for i in range(3000)] + [(i,) * 7 for i in range(3000)]
        b = Bomb()
        b.me = b  # cyclic garbage with a finalizer
        del b
        gc.set_threshold(1)
        try:
            got.append(busy.pop(tid) if read == "pop" else
                       dict(busy.items())[tid] if read == "items" else busy[tid])
        finally:
            gc.set_threshold(700)
        del keep
        return "done"

    with profiler.trace(tmp_path):
        dist.all_reduce(torch.ones(1))
        wrapped = _wrappers.make_wrapper(RECORDER, 0, spec, orig, True)
        assert type(wrapped).__name__ == "Hook"
        assert wrapped(torch.ones(3)) == "done"
        for k in range(10**6, 10**6 + 64):
            busy.pop(k, None)
        assert threading.get_ident() not in busy
    api_idx, _, info, gi, pg_seq, seq, ph = got[0]
    assert (api_idx, info[1:], gi.name, pg_seq, seq, ph) == (0, (3, 3, 3), "0", 1, 1, None)


@built
def test_busy_map_and_counter_behave_as_dict_and_itertools_count():
    """The recorder's compiled busy map and counters stand in for a dict and itertools.count:
    the Python wrappers use them through those interfaces."""
    busy, ref = _columns._chook.Busy(), {}
    for m in (busy, ref):
        m[5], m[7], m[9] = True, ["row"], ("entry",)
        m[5] = "replaced"  # keeps its place
        del m[7]
        m[11] = True
    assert busy.items() == list(ref.items()) == [(5, "replaced"), (9, ("entry",)), (11, True)]
    assert (5 in busy, 7 in busy, "5" in busy, len(busy)) == (True, False, False, 3)
    for key in ("x", -1, 2**70, 1.0):  # never a thread ident: absent, as from a dict
        assert busy.pop(key, "default") == ref.pop(key, "default") == "default"
        for m in (busy, ref):
            with pytest.raises(KeyError):
                m[key]
    assert busy.pop(9) == ("entry",) and busy.pop(9, None) is None and busy[11] is True
    for missing in (lambda: busy[9], lambda: busy.pop(9), lambda: busy.__delitem__(9)):
        with pytest.raises(KeyError):
            missing()
    c, r = _columns._chook.Counter(), itertools.count()
    assert [next(c) for _ in range(5)] == [next(r) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert iter(c) is c
    with pytest.raises(TypeError):
        _columns._chook.Counter(5)  # counts from 0 only


@built
def test_compiled_hook_keeps_the_original_function_metadata(tmp_path):
    orig = dist.all_reduce
    with profiler.trace(tmp_path):
        hook = dist.all_reduce
        assert type(hook).__name__ == "Hook"
        assert hook.__commscope_original__ is orig
        assert hook.__wrapped__ is orig and hook.__name__ == "all_reduce"
        assert inspect.signature(hook) == inspect.signature(orig)
    assert dist.all_reduce is orig


@built
def test_compiled_hook_holds_no_reference_after_the_call(tmp_path):
    """Every path through the C code releases what it took: after many calls (recorded,
    failing, in a phase, with a subgroup), the objects involved have the reference counts they
    had before, but for what the buffered rows hold."""
    t = torch.ones(3)
    g = dist.new_group([0, 1])
    with profiler.trace(tmp_path, flush_events=1 << 30) as s, profiler.phase("decode", step=2):
        dist.all_reduce(t, group=g)  # the group's first call: resolved on the Python path
        dist.all_reduce(t, group=g)  # the compiled path's first: its key cache holds the keys
        watched = [t, g, torch.float32, dist.ReduceOp.SUM, profiler.current_phase(),
                   RECORDER.groups._names[g]]
        before = [sys.getrefcount(x) for x in watched]
        for _ in range(2000):
            dist.all_reduce(t, group=g)
            dist.all_reduce(t, dist.ReduceOp.SUM, g)
            with contextlib.suppress(TypeError):
                dist.all_reduce(t, op="bad", group=g)  # raises inside torch: an error row
        after = [sys.getrefcount(x) for x in watched]
        assert len(s._cols.ints) == 10 * 4002 and len(s._buf) == 2000
    # Each buffered error row holds the dtype, the phase and the group info once; nothing else.
    assert [a - b for a, b in zip(after, before)] == [0, 0, 2000, 0, 2000, 2000]
