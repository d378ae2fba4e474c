"""CUDA-graph templates and replays. CPU torch has only a stub CUDAGraph, so the hooks are put on a
stand-in class with the same methods (the same wrapper code as on torch.cuda.CUDAGraph), and the
replay entry point is also driven directly. A real graph is exercised when CUDA is present."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from commscope import profiler
from commscope.profiler import _cuda_graphs
from tests.analysis_fixtures import session_events as _events

WORLD, RANK = 4, 1


class StandInGraph:
    """What torch.cuda.CUDAGraph offers the hooks: capture_begin/capture_end/replay/reset."""

    def __init__(self):
        self.launched = 0

    def capture_begin(self, pool=None, capture_error_mode="global"):
        pass

    def capture_end(self):
        pass

    def replay(self):
        self.launched += 1

    def reset(self):
        pass


class Comm:
    def __init__(self, group):
        self.group = group

    def all_reduce(self, t):
        dist.all_reduce(t, group=self.group)
        return t

    def all_gather(self, t):
        out = torch.empty(t.numel() * WORLD)
        dist.all_gather_into_tensor(out, t, group=self.group)
        return out


@pytest.fixture(scope="module", autouse=True)
def setup():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=RANK, world_size=WORLD, store=FakeStore())
    hs = [profiler.instrument(Comm, "all_reduce", op="all_reduce",
                              group=lambda self, t: self.group),
          profiler.instrument(Comm, "all_gather", op="all_gather",
                              group=lambda self, t: self.group)]
    _cuda_graphs.install_graph_hooks(StandInGraph)
    yield
    _cuda_graphs.uninstall_graph_hooks(StandInGraph)
    for h in hs:
        h.remove()
    dist.destroy_process_group()




def test_capture_is_template_and_each_replay_emits_it(tmp_path):
    tp = profiler.label_group(dist.new_group(list(range(WORLD))), "tp")
    comm = Comm(tp)
    g = StandInGraph()
    with profiler.trace(tmp_path) as s:
        comm.all_reduce(torch.ones(8))            # eager, before capture
        g.capture_begin()
        comm.all_reduce(torch.ones(16))           # 64 bytes
        comm.all_gather(torch.ones(2))            # per-rank 2, S = 2 x 4 x 4
        g.capture_end()
        for step in range(3):
            with profiler.phase("decode", step=step):
                g.replay()
        comm.all_reduce(torch.ones(1))            # eager again: not a template entry
    assert g.launched == 3  # the real replay ran each time
    df = _events(s)
    assert df["cuda_graph"].fillna("eager").tolist() == (
        ["eager", "capture", "capture"] + ["replay"] * 6 + ["eager"])
    assert df["api"].tolist() == ["Comm.all_reduce", "Comm.all_reduce", "Comm.all_gather"] + \
        ["Comm.all_reduce", "Comm.all_gather"] * 3 + ["Comm.all_reduce"]
    assert df["bytes"].tolist() == [32, 64, 2 * 4 * WORLD] + [64, 2 * 4 * WORLD] * 3 + [4]
    assert df["count"].tolist() == [8, 16, 2] + [16, 2] * 3 + [1]
    assert df["source"].tolist() == ["engine"] * 10
    assert df["pg_dim"].tolist() == ["tp"] * 10
    assert df["pg_seq"].tolist() == list(range(10))  # replays advance the group's sequence
    rep = df[df["cuda_graph"] == "replay"]
    assert rep["step"].tolist() == [0, 0, 1, 1, 2, 2]
    assert rep["phase"].tolist() == ["decode"] * 6
    # the two rows of one replay share its host window
    assert rep.groupby("step")["t_start_ns"].nunique().tolist() == [1, 1, 1]
    assert rep.groupby("step")["t_end_ns"].nunique().tolist() == [1, 1, 1]
    assert rep["gpu_duration_ns"].isna().all()  # no device here


def test_recapture_replaces_reset_forgets_and_no_session_no_rows(tmp_path):
    comm = Comm(None)
    g = StandInGraph()
    with profiler.trace(tmp_path / "a") as s:
        g.capture_begin()
        comm.all_reduce(torch.ones(4))
        g.capture_end()
        g.capture_begin()                # re-capture: new template
        comm.all_gather(torch.ones(3))
        g.capture_end()
        g.replay()
        g.reset()
        g.replay()                       # nothing captured any more
    g.replay()                           # no session: nothing recorded, still launched
    assert g.launched == 3
    df = _events(s)
    assert df["cuda_graph"].tolist() == ["capture", "capture", "replay"]
    assert df["api"].tolist() == ["Comm.all_reduce", "Comm.all_gather", "Comm.all_gather"]
    assert df["bytes"].tolist() == [16, 3 * 4 * WORLD, 3 * 4 * WORLD]


def test_two_graphs_keep_separate_templates_and_failed_capture_leaves_none(tmp_path):
    comm = Comm(None)
    g1, g2 = StandInGraph(), StandInGraph()

    class Failing(StandInGraph):
        def capture_begin(self, pool=None, capture_error_mode="global"):
            raise RuntimeError("capture failed")

    _cuda_graphs.install_graph_hooks(Failing)
    try:
        with profiler.trace(tmp_path) as s:
            for g, n in ((g1, 2), (g2, 5)):
                g.capture_begin()
                comm.all_reduce(torch.ones(n))
                g.capture_end()
            bad = Failing()
            with pytest.raises(RuntimeError):
                bad.capture_begin()
            comm.all_reduce(torch.ones(7))   # not captured: the failed capture ended
            g2.replay()
            g1.replay()
            bad.replay()
    finally:
        _cuda_graphs.uninstall_graph_hooks(Failing)
    df = _events(s)
    assert df["cuda_graph"].fillna("eager").tolist() == ["capture", "capture", "eager",
                                                          "replay", "replay"]
    assert df["count"].tolist() == [2, 5, 7, 5, 2]


def test_replay_entry_point_directly(tmp_path):
    key = ("direct", 1)
    with profiler.trace(tmp_path) as s:
        _cuda_graphs.begin_capture(key)
        Comm(None).all_reduce(torch.ones(10))
        _cuda_graphs.end_capture(key)
        assert _cuda_graphs.replay_template(key, 1_000, 2_000) == 1
        assert _cuda_graphs.replay_template(key, 3_000, 5_000) == 1
        assert _cuda_graphs.replay_template(("unknown",), 0, 1) == 0
    df = _events(s)
    rep = df[df["cuda_graph"] == "replay"]
    assert rep["t_start_ns"].tolist() == [1_000, 3_000]
    assert rep["t_end_ns"].tolist() == [2_000, 5_000]
    assert rep["bytes"].tolist() == [40, 40]
    assert _cuda_graphs.STATE.replays[key] == 2


def test_real_cuda_graph_class_is_hooked():
    assert _cuda_graphs.install_graph_hooks()
    cls = torch.cuda.CUDAGraph
    for attr in ("capture_begin", "capture_end", "replay", "reset"):
        assert hasattr(cls.__dict__[attr], "__wrapped__"), attr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_graph_replays(tmp_path):
    _cuda_graphs.install_graph_hooks()
    comm = Comm(None)
    x = torch.ones(1024, device="cuda")
    comm.all_reduce(x)  # warm-up outside any session (fake PG: no real traffic)
    g = torch.cuda.CUDAGraph()
    with profiler.trace(tmp_path) as s:
        with torch.cuda.graph(g):
            y = x * 2
            comm.all_reduce(y)
        for _ in range(4):
            g.replay()
        torch.cuda.synchronize()
    df = _events(s)
    assert df["cuda_graph"].tolist() == ["capture"] + ["replay"] * 4
    assert df["bytes"].tolist() == [4096] * 5
    assert df["device"].tolist() == ["cuda:0"] * 5
    assert df["gpu_duration_ns"].iloc[1:].notna().all()
