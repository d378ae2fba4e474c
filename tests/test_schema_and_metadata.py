"""The schema contract, its generated documentation, and run metadata without a GPU."""

from __future__ import annotations

import os

import pytest

from commscope import profiler
from commscope.profiler._metadata import comm_env, gpu_inventory, versions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT = ["run_id", "rank", "world_size", "host", "pid", "seq", "pg_name", "pg_dim", "pg_size", "pg_ranks", "pg_seq", "op", "api", "dtype", "count", "bytes", "in_bytes", "out_bytes", "peer", "root", "async_op", "backend", "device", "t_start_ns", "t_end_ns", "gpu_duration_ns", "phase", "step", "error"]


def test_contract_columns_present():
    names = profiler.arrow_schema().names
    assert [c for c in CONTRACT if c not in names] == []
    assert profiler.arrow_schema().metadata[b"commscope.schema_version"] == profiler.SCHEMA_VERSION.encode()


def test_schema_doc_is_generated_from_the_code():
    with open(os.path.join(ROOT, "docs", "schema.md")) as fh:
        assert fh.read() == profiler.schema_markdown(), "regenerate: commscope schema > docs/schema.md"


def test_every_column_has_a_meaning():
    for c in profiler.COLUMNS:
        assert len(c.meaning) > 20, c.name
        if c.name.endswith("_ns"):
            assert "ns" in c.unit
        if c.name.endswith("_bytes") or c.name == "bytes":
            assert c.unit == "bytes"


def test_no_gpu_is_reported_cleanly():
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present: covered by test_cuda.py")
    except ImportError:
        pass
    inv = gpu_inventory()
    assert inv["available"] is False
    assert "NVML" in inv["reason"] or "pynvml" in inv["reason"]


def test_versions_and_env(monkeypatch):
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    monkeypatch.setenv("UNRELATED", "x")
    env = comm_env()
    assert env["NCCL_DEBUG"] == "INFO" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert "UNRELATED" not in env
    v = versions()
    assert v["commscope"] and v["python"] and v["torch"]
