"""The Llama example: every parallel configuration generates the single-process tokens, and its
traces agree exactly (counts and bytes) with the predicted schedule."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

from commscope import analysis, profiler
from commscope.models import llama
from tests.analysis_fixtures import session_events
from tests.distributed import fake_process_group

W = analysis.Workload(batch=2, prompt_len=16, output_len=8)


@pytest.fixture(scope="module")
def reference():
    return llama.run(1, 1, batch=W.batch, prompt=W.prompt_len, output=W.output_len)[1]


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2), (2, 2)])
def test_same_tokens_and_exact_schedule(tmp_path, reference, tp, pp):
    run_dir, tokens = llama.run(tp, pp, out=str(tmp_path), batch=W.batch, prompt=W.prompt_len,
                                output=W.output_len)
    assert tokens == reference
    assert len(tokens) == W.batch and len(tokens[0]) == W.output_len
    ev = analysis.load_events(run_dir)
    assert ev["rank"].nunique() == tp * pp
    c = analysis.compare(ev, llama.Config().spec(8), W, analysis.ParallelConfig(tp=tp, pp=pp))
    assert set(c["status"]) == {"matched"}
    assert (c["count_error"].abs() < 1e-12).all()
    assert (ev.loc[ev["phase"] == "decode", "step"].nunique()) == W.output_len - 1


def test_no_library_warnings(tmp_path):
    # -W error reaches the spawned ranks (multiprocessing passes interpreter flags on): a
    # deprecated torch call (FutureWarning) would fail a rank.
    r = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-W",
                        "error::DeprecationWarning:torch", "-m", "commscope.models.llama",
                        "--tp", "2", "--out", str(tmp_path), "--prompt", "4", "--output", "3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr and "trace:" in r.stdout


def test_around_pass_switches_tracing_pass_by_pass(tmp_path):
    # How benchmarks/e2e_overhead.py alternates traced and untraced passes: `around_pass(i)` is
    # entered around forward pass i (0 the prefill, i the decode step i - 1), in order.
    entered = []
    with fake_process_group(0, 2), profiler.trace(tmp_path) as s:
        @contextlib.contextmanager
        def around(i):
            entered.append(i)
            (s.resume if i % 2 == 0 else s.pause)()
            yield

        llama.generate(llama.Config(), llama.Parallel(2, 1), 2, 16, 8, torch.float32,
                       around_pass=around)
    assert entered == list(range(8))
    ev = session_events(s)
    # Passes 0, 2, 4, 6 traced: the prefill and decode steps 1, 3, 5, each with the TP=2
    # schedule's 10 calls (the embedding's all_reduce, two per layer, the logits' all_gather).
    per_pass = ev.groupby(["phase", ev["step"].fillna(-1)]).size().to_dict()
    assert per_pass == {("prefill", -1): 10, ("decode", 1): 10, ("decode", 3): 10,
                        ("decode", 5): 10}
    assert ev["op"].value_counts().to_dict() == {"all_reduce": 36, "all_gather": 4}
