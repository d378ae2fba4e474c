"""The `commscope` command line, run as a user would, in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

from commscope import analysis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def _commscope(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "commscope", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, **kw)


def test_help_lists_subcommands():
    r = _commscope("--help")
    assert r.returncode == 0
    for cmd in ("run", "schema", "demo", "summary", "nccl-log", "nccl-tests"):
        assert cmd in r.stdout


def test_schema_command_prints_the_schema():
    r = _commscope("schema")
    assert r.returncode == 0 and "| `pg_seq` |" in r.stdout


def test_run_traces_an_unmodified_torchrun_program(tmp_path):
    r = _commscope("run", "--out", str(tmp_path), "--run-name", "plain", "--",
                   sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   os.path.join(EXAMPLES, "plain_collectives.py"))
    assert r.returncode == 0, r.stderr
    assert f"trace written to {tmp_path / 'plain'}" in r.stderr
    df = analysis.load_events(tmp_path / "plain")
    for rank in (0, 1):
        mine = df[df["rank"] == rank].sort_values("seq")
        p2p = "send" if rank == 0 else "recv"
        assert mine["op"].tolist() == ["all_reduce"] * 5 + ["all_gather", p2p, "barrier"]
        assert mine["bytes"].tolist() == [4096] * 5 + [8192, 64, 0]
        assert mine["world_size"].tolist() == [2] * 8
    # The torchrun launcher itself recorded nothing and wrote no rank folder of its own.
    assert sorted(os.listdir(tmp_path / "plain")) == ["rank_00000", "rank_00001"]


def test_run_keeps_the_trace_of_a_crashing_program(tmp_path):
    r = _commscope("run", "--out", str(tmp_path), "--run-name", "crash", "--",
                   sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   os.path.join(EXAMPLES, "crashing_script.py"))
    assert r.returncode != 0
    df = analysis.load_events(tmp_path / "crash")
    assert df.groupby("rank").size().to_dict() == {0: 4, 1: 4}


def test_run_without_command_is_an_error(tmp_path):
    r = _commscope("run", "--out", str(tmp_path))
    assert r.returncode == 2 and "no command" in r.stderr


def test_summary_command_table_and_json():
    import json

    r = _commscope("summary", "traces/sample_tp2")
    assert r.returncode == 0, r.stderr
    assert "20 events under traces/sample_tp2" in r.stdout and "busbw:" in r.stdout
    r = _commscope("summary", "traces/sample_tp2", "--json")
    rows = json.loads(r.stdout)
    assert sum(x["calls"] for x in rows) == 20
    assert {x["phase"] for x in rows} == {"prefill", "decode"}


def test_nccl_commands_errors_are_clear(tmp_path):
    r = _commscope("nccl-log", str(tmp_path / "missing.log"), "-o", str(tmp_path / "out"))
    assert r.returncode == 1 and "NCCL log not found" in r.stderr
    r = _commscope("summary", str(tmp_path))
    assert r.returncode == 1 and "no commscope trace files" in r.stderr


def test_run_traces_huggingface_tensor_parallel_unmodified(tmp_path):
    """transformers' own TP plan (DTensor + plain all_reduce) under commscope run."""
    import pytest

    pytest.importorskip("transformers", reason="optional: pip install -e '.[hf]'")
    r = _commscope("run", "--out", str(tmp_path), "--run-name", "hf", "--",
                   sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   os.path.join(EXAMPLES, "hf_tp.py"), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    df = analysis.load_events(tmp_path / "hf")
    for rank in (0, 1):
        ar = df[(df["rank"] == rank) & (df["op"] == "all_reduce")]
        # 4 forwards (prompt + 3 decode steps) x (2 layers x 2 row-parallel + embedding):
        # 5 of the 8-token prompt (8 x 64 x 4 B), 15 of one token.
        assert ar["bytes"].value_counts().to_dict() == {256: 15, 2048: 5}
        assert set(ar["pg_dim"]) == {"tp"}  # labelled from transformers' DeviceMesh
