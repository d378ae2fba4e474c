"""`profiler.instrument` on custom communicators: exact rows on the fake process group (8 ranks,
rank 3) and on 2 real gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from commscope import analysis, profiler
from tests.analysis_fixtures import session_events as _events
from tests.distributed import fake_process_group, run_ranks

WORLD, RANK = 8, 3


class Comm:
    """A custom communicator in the style of an engine's group object."""

    def __init__(self, group):
        self.group = group

    def all_reduce(self, t):
        dist.all_reduce(t, group=self.group)  # hooked: must not give a second row
        return t

    def all_gather(self, t):
        out = torch.empty(t.numel() * dist.get_world_size(self.group), dtype=t.dtype)
        dist.all_gather_into_tensor(out, t, group=self.group)
        return out

    def reduce_scatter(self, t):
        out = torch.empty(t.numel() // dist.get_world_size(self.group), dtype=t.dtype)
        dist.reduce_scatter_tensor(out, t, group=self.group)
        return out

    def fused(self, t):  # an instrumented method calling another one: one row, the outer
        return self.all_reduce(t)

    def raw(self, payload: bytes):  # no tensor argument: sized by bytes_of
        return len(payload)

    def broken(self, t):
        raise RuntimeError("link down")


@pytest.fixture(scope="module", autouse=True)
def fake_pg():
    with fake_process_group(RANK, WORLD):
        yield


@pytest.fixture
def instrumented():
    handles = [
        profiler.instrument(Comm, "all_reduce", op="all_reduce", group=lambda self, t: self.group),
        profiler.instrument(Comm, "all_gather", op="all_gather", group=lambda self, t: self.group),
        profiler.instrument(Comm, "reduce_scatter", op="reduce_scatter",
                            group=lambda self, t: self.group, api="mycomm.rs"),
        profiler.instrument(Comm, "fused", op="all_reduce", group=lambda self, t: self.group),
        profiler.instrument(Comm, "raw", op="broadcast", bytes_of=lambda self, p: len(p)),
        profiler.instrument(Comm, "broken", op="all_reduce"),
    ]
    yield
    for h in handles:
        h.remove()




def test_custom_communicator_rows_are_exact_and_inner_calls_folded(tmp_path, instrumented):
    g = profiler.label_group(dist.new_group(list(range(WORLD))), "tp")
    comm = Comm(g)
    with profiler.trace(tmp_path) as s:
        comm.all_reduce(torch.ones(6))                     # 24 bytes
        comm.all_gather(torch.ones(5, dtype=torch.float64))  # 5 x 8 x 8 ranks
        comm.reduce_scatter(torch.ones(2 * WORLD))         # per-rank 2, S = 2 x 4 x 8
        comm.fused(torch.ones(3))                          # one row, api Comm.fused
        dist.all_reduce(torch.ones(1), group=g)            # plain hook on the same group
        comm.raw(b"x" * 100)
    df = _events(s)
    assert df["api"].tolist() == ["Comm.all_reduce", "Comm.all_gather", "mycomm.rs", "Comm.fused",
                                  "all_reduce", "Comm.raw"]
    assert df["op"].tolist() == ["all_reduce", "all_gather", "reduce_scatter", "all_reduce",
                                 "all_reduce", "broadcast"]
    assert df["source"].tolist() == ["engine"] * 4 + ["hooks", "engine"]
    assert df["count"].tolist() == [6, 5, 2, 3, 1, 100]
    assert df["bytes"].tolist() == [24, 5 * 8 * WORLD, 2 * 4 * WORLD, 12, 4, 100]
    assert df["in_bytes"].tolist() == [24, 40, 2 * WORLD * 4, 12, 4, 100]
    assert df["out_bytes"].tolist() == [24, 40 * WORLD, 8, 12, 4, 100]
    assert df["dtype"].tolist() == ["float32", "float64", "float32", "float32", "float32", "uint8"]
    assert df["pg_dim"].tolist()[:5] == ["tp"] * 5
    assert df["pg_dim"].tolist()[5] == "world"  # group=None: the default group
    # one sequence per group for instrumented and hooked calls alike
    assert df["pg_seq"].tolist()[:5] == [0, 1, 2, 3, 4]
    assert df["pg_size"].tolist() == [WORLD] * 6
    assert df["cuda_graph"].isna().all()
    assert (df["t_end_ns"] >= df["t_start_ns"]).all()


def test_error_recorded_and_reraised(tmp_path, instrumented):
    with profiler.trace(tmp_path) as s, pytest.raises(RuntimeError, match="link down"):
        Comm(None).broken(torch.ones(2))
    df = _events(s)
    assert df["api"].tolist() == ["Comm.broken"]
    assert df["error"].tolist() == ["RuntimeError: link down"]
    assert df["bytes"].tolist() == [8]


def test_nothing_recorded_without_session_and_remove_restores(tmp_path):
    orig = Comm.__dict__["all_reduce"]
    h = profiler.instrument(Comm, "all_reduce", op="all_reduce", group=lambda self, t: self.group)
    assert Comm.__dict__["all_reduce"] is not orig
    Comm(None).all_reduce(torch.ones(2))  # no session: passes through
    with profiler.trace(tmp_path / "a") as s:
        Comm(None).all_reduce(torch.ones(2))
    h2 = profiler.instrument(Comm, "all_reduce", op="all_reduce")  # twice: replaces, one layer
    assert Comm.__dict__["all_reduce"].__commscope_original__ is orig
    h2.remove()
    h.remove()
    assert Comm.__dict__["all_reduce"] is orig
    with profiler.trace(tmp_path / "b") as s2:
        Comm(None).all_reduce(torch.ones(2))
    assert _events(s)["api"].tolist() == ["Comm.all_reduce"]
    assert _events(s2)["api"].tolist() == ["all_reduce"]  # only the torch hook now


def test_object_target_and_bad_arguments(tmp_path):
    comm = Comm(None)
    other = Comm(None)
    h = profiler.instrument(comm, "all_reduce", op="all_reduce", api="obj.ar")
    with profiler.trace(tmp_path) as s:
        comm.all_reduce(torch.ones(4))
        other.all_reduce(torch.ones(4))  # not instrumented: the torch hook's row
    h.remove()
    assert "all_reduce" not in vars(comm)
    df = _events(s)
    assert df["api"].tolist() == ["obj.ar", "all_reduce"]
    assert df["source"].tolist() == ["engine", "hooks"]
    with pytest.raises(ValueError, match="op must be one of"):
        profiler.instrument(Comm, "all_reduce", op="allreduce")
    with pytest.raises(AttributeError, match="no method 'nope'"):
        profiler.instrument(Comm, "nope", op="all_reduce")
    with pytest.raises(ValueError, match="method must be"):
        profiler.instrument(Comm, "", op="all_reduce")


def _gloo_worker(rank: int, world: int, out: str) -> None:
    from commscope import profiler as prof

    h = prof.instrument(Comm, "all_reduce", op="all_reduce", group=lambda self, t: self.group)
    try:
        g = prof.label_group(dist.new_group([0, 1]), "tp")
        comm = Comm(g)
        with prof.trace(out, run_name="gloo"):
            for k in range(3):
                t = torch.full((4 * (k + 1),), float(rank + 1))
                comm.all_reduce(t)
                assert t[0].item() == 3.0  # the real reduction ran
    finally:
        h.remove()


def test_gloo_two_ranks_match(tmp_path):
    run_ranks(_gloo_worker, 2, str(tmp_path), timeout_s=120)
    df = analysis.load_events(tmp_path / "gloo")
    for rank in (0, 1):
        d = df[df["rank"] == rank].sort_values("seq")
        assert d["api"].tolist() == ["Comm.all_reduce"] * 3
        assert d["bytes"].tolist() == [16, 32, 48]
        assert d["pg_seq"].tolist() == [0, 1, 2]
        assert d["pg_dim"].tolist() == ["tp"] * 3
        assert d["backend"].tolist() == ["gloo"] * 3


def test_unreadable_arguments_run_unrecorded_with_one_warning(tmp_path, capfd):
    h = profiler.instrument(Comm, "raw", op="broadcast", bytes_of=lambda self, p: "many",
                            api="bad.sizer")
    try:
        with profiler.trace(tmp_path) as s:
            assert Comm(None).raw(b"abc") == 3  # the call itself is untouched
            assert Comm(None).raw(b"abcd") == 4
            dist.all_reduce(torch.ones(1))
    finally:
        h.remove()
    assert _events(s)["api"].tolist() == ["all_reduce"]
    err = capfd.readouterr().err
    assert err.count("could not record a call of bad.sizer") == 1
    assert "bytes_of must return a tensor" in err
