"""Kineto import on every real trace in ../shared/data/kineto: exact counts, ops, bytes and device
durations (the numbers were read from the JSON files independently of the importer)."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys

import pytest

from commscope import analysis, profiler
from commscope.cli import main
from commscope.profiler._trace_json import TraceJsonError, read_chrome_trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINETO = os.path.join(ROOT, "..", "shared", "data", "kineto")
need_data = pytest.mark.skipif(not os.path.isdir(KINETO), reason="../shared/data absent")


def _k(name: str) -> str:
    return os.path.join(KINETO, name)


DLRM = _k("facebookresearch__param__dlrm_kineto.tar.gz")
NCCL_DATA = _k("facebookresearch__HolisticTraceAnalysis__nccl_data.json.gz")
SAMPLED = [_k(f"facebookresearch__HolisticTraceAnalysis__sampled_rank-{r}.json.gz")
           for r in (0, 1)]
B200 = _k("AMD-AGI__TraceLens__b200__eager_trace.json.gz")
GRAPH = [_k("AMD-AGI__TraceLens__vllm_decode_full__graph_execution.json.gz"),
         _k("AMD-AGI__TraceLens__vllm_decode_full__graph_capture_rank_0.1773709742341309550"
            ".pt.trace.json.gz")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("imported")
    return {"dlrm": profiler.import_trace(DLRM, out),
            "nccl_data": profiler.import_trace(NCCL_DATA, out),
            "sampled": profiler.import_trace(SAMPLED, out, run_name="sampled"),
            "b200": profiler.import_trace(B200, out),
            "graph": profiler.import_trace(GRAPH, out, run_name="graph")}


def _report_has(run: str, tmp_path, calls: int) -> str:
    html = tmp_path / "r.html"
    assert main(["report", run, "-o", str(html)]) == 0
    page = html.read_text()
    assert f">{calls}<" in page
    return page


@need_data
def test_dlrm_eight_ranks_old_format(runs, tmp_path):
    ev = analysis.load_events(runs["dlrm"])
    assert sorted(ev["rank"].unique()) == list(range(8))     # from distributedInfo, not names
    counts = ev.groupby(["rank", "op"]).size().unstack()
    assert (counts["all_to_all"] == 5).all() and (counts["all_reduce"] == 3).all()
    assert set(ev["source"]) == {"kineto"}
    r0 = ev[ev["rank"] == 0].sort_values("seq")
    # all_to_all bytes from c10d::alltoall_base_'s input (2nd) dims; all_reduce from the
    # nccl:all_reduce range's dims (the c10d op only says TensorList).
    assert r0["bytes"].tolist() == [24576, 192, 1536, 13568, 1576964, 24576, 448, 907840]
    assert r0["dtype"].tolist() == ["float32", "int64", "int32", "int32", "float32", "float32",
                                    "float32", "float32"]
    assert r0["gpu_duration_ns"].tolist() == [2146000, 1032000, 176000, 131000, 246000,
                                              514000, 601000, 952000]
    per_rank = ev.groupby("rank")["gpu_duration_ns"].sum().tolist()
    assert per_rank == [5798000, 11336000, 3492000, 9774000, 6587000, 6251000, 3558000,
                        1746000]
    assert (r0["gpu_end_ns"] - r0["gpu_start_ns"] == r0["gpu_duration_ns"]).all()
    metas = {m["rank"]: m for m in analysis.load_metadata(runs["dlrm"])}
    # One host: the ends of matched collectives agree within microseconds.
    assert metas[0]["clock_offset_ns"] == 0
    assert all(abs(m["clock_offset_ns"]) < 10_000 and m["clock_offset_spread_ns"] < 20_000
               for m in metas.values())
    _report_has(runs["dlrm"], tmp_path, 64)


@need_data
def test_hta_nccl_data_full_metadata(runs, tmp_path):
    ev = analysis.load_events(runs["nccl_data"])
    assert ev.groupby("op").size().to_dict() == {"all_reduce": 15, "broadcast": 6}
    assert int(ev["bytes"].sum()) == 307323096
    assert int(ev["gpu_duration_ns"].sum()) == 46876493
    assert set(ev["pg_name"]) == {"0"} and set(ev["pg_size"]) == {2}
    assert ev["pg_ranks"].map(list).map(tuple).unique().tolist() == [(0, 1)]
    assert set(ev["dtype"]) == {"float32", "int64"}
    # NCCL runs on stream 40 while compute runs on stream 7: part of it is hidden.
    assert (ev["gpu_hidden_ns"] <= ev["gpu_duration_ns"]).all()
    assert int(ev["gpu_hidden_ns"].sum()) > 0
    assert sorted(ev["step"].unique()) == [4, 5, 6]
    _report_has(runs["nccl_data"], tmp_path, 21)


@need_data
def test_hta_sampled_128_rank_pair(runs, tmp_path):
    ev = analysis.load_events(runs["sampled"])
    assert set(ev["world_size"]) == {128} and sorted(ev["rank"].unique()) == [0, 1]
    counts = ev.groupby(["rank", "op"]).size().to_dict()
    assert counts == {(0, "all_gather"): 2, (0, "all_reduce"): 4, (0, "all_to_all"): 4,
                      (1, "all_gather"): 2, (1, "all_reduce"): 4, (1, "all_to_all"): 4}
    assert ev.groupby("rank")["gpu_duration_ns"].sum().tolist() == [396199000, 379053000]
    ag = ev[ev["op"] == "all_gather"]
    assert set(ag["bytes"]) == {16777216 * 128}      # _allgather_base_ input dims x n
    _report_has(runs["sampled"], tmp_path, 20)


@need_data
def test_b200_vllm_symmetric_memory(runs, tmp_path):
    ev = analysis.load_events(runs["b200"])
    ar, ag = ev[ev["op"] == "all_reduce"], ev[ev["op"] == "all_gather"]
    assert len(ar) == 73 and len(ag) == 1
    # multimem kernels have no metadata: bytes from vllm::all_reduce Input Dims (bf16).
    assert set(ar["api"]) == {"vllm::all_reduce"}
    assert ar["bytes"].value_counts().to_dict() == {888 * 2880 * 2: 37, 888 * 3072 * 2: 36}
    assert int(ar["bytes"].sum()) == 385661952
    assert int(ar["gpu_duration_ns"].sum()) == 2119548
    assert ag["bytes"].tolist() == [25136 * 2 * 8] and ag["gpu_duration_ns"].tolist() == [21953]
    assert ag["pg_name"].tolist() == ["3"]
    # Everything runs on one stream (7): nothing is hidden.
    assert int(ev["gpu_hidden_ns"].sum()) == 0
    x = analysis.exposed_communication(runs["b200"])
    assert x["comm_kernels"].tolist() == [74] and x["exposed_ns"].tolist() == [2141501]
    assert x["gpu_busy_ns"].tolist() == [10793638]
    assert x["exposed_share_of_gpu"].iloc[0] == pytest.approx(2141501 / 10793638)
    _report_has(runs["b200"], tmp_path, 74)


@need_data
def test_vllm_decode_graph_pair_has_no_communication(runs):
    metas = analysis.load_metadata(runs["graph"])
    assert len(metas) == 1 and metas[0]["events_written"] == 0
    notes = " ".join(metas[0]["import_notes"])
    assert "no communication kernels among 425 kernels (1 CUDA graph launches)" in notes
    assert "graph_capture_rank_0" in notes and "capture" in notes
    assert len(analysis.load_events(runs["graph"])) == 0


@need_data
def test_report_of_a_run_without_communication_says_why(runs, tmp_path):
    html = tmp_path / "graph.html"
    assert main(["report", runs["graph"], "-o", str(html)]) == 0
    page = html.read_text()
    assert "no communication call recorded. no communication kernels among 425 kernels" in page
    assert "Runs without communication" in page


@need_data
def test_exposed_communication_on_nccl_stream(runs):
    x = analysis.exposed_communication(runs["nccl_data"])
    assert x["step"].tolist() == [4, 5, 6] and x["comm_kernels"].tolist() == [7, 7, 7]
    ev = analysis.load_events(runs["nccl_data"])
    by_step = ev.groupby("step")
    assert x["comm_ns"].tolist() == by_step["gpu_duration_ns"].sum().tolist()
    assert (x["exposed_ns"] == x["comm_ns"] - x["hidden_ns"]).all()
    assert ((x["exposed_share_of_gpu"] > 0) & (x["exposed_share_of_gpu"] < 1)).all()


def test_hidden_time_is_overlap_with_other_streams(tmp_path):
    """Hand-made trace: comm kernel 100-200 us on stream 9; compute on stream 7 covers
    150-260 us and on stream 9 (same stream) 0-300 us, which must not count."""
    def k(name, ts, dur, stream, corr):
        return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": ts,
                "dur": dur, "args": {"device": 0, "stream": stream, "correlation": corr}}
    doc = {"distributedInfo": {"rank": 0, "world_size": 2}, "traceEvents": [
        k("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 100, 100, 9, 1),
        k("gemm", 150, 60, 7, 2), k("gemm", 240, 20, 7, 3), k("gemm", 0, 300, 8, 4)]}
    doc["traceEvents"][3]["args"]["stream"] = 9
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    ev = analysis.load_events(profiler.import_trace(path, tmp_path / "o"))
    assert ev["op"].tolist() == ["all_reduce"] and ev["gpu_duration_ns"].tolist() == [100000]
    assert ev["gpu_hidden_ns"].tolist() == [50000]


def test_streaming_reader_matches_json_and_rejects_truncation(tmp_path):
    events = [{"ph": "X", "cat": "kernel", "name": f"k{i}", "ts": i, "dur": 1,
               "args": {"nested": {"a": [1, {"b": "},{"}]}}} for i in range(5000)]
    doc = {"schemaVersion": 1, "traceEvents": events, "baseTimeNanoseconds": 7}
    for text in (json.dumps(doc, indent=1), json.dumps(doc, separators=(",", ":"))):
        got: list = []
        top = read_chrome_trace(io.StringIO(text), got.extend)
        assert got == events and top == {"schemaVersion": 1, "baseTimeNanoseconds": 7}
        for cut in (10, len(text) // 2, len(text) - 2):
            with pytest.raises(TraceJsonError):
                read_chrome_trace(io.StringIO(text[:cut]), lambda b: None)


def test_bad_inputs_name_the_file(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    with pytest.raises(profiler.TraceImportError, match="notes.txt: not a Kineto trace"):
        profiler.import_trace(bad, tmp_path / "o")
    trunc = tmp_path / "rank0.json.gz"
    text = json.dumps({"distributedInfo": {"rank": 0}, "traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "x", "ts": 1, "dur": 1}] * 50})
    with gzip.open(trunc, "wt") as fh:
        fh.write(text[: len(text) // 2])
    assert main(["import", str(trunc), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "rank0.json.gz" in err and "truncated" in err and "Traceback" not in err
    cpu = tmp_path / "cpu.json"
    cpu.write_text(json.dumps({"distributedInfo": {"rank": 0, "world_size": 1},
                               "traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm",
                                                "ts": 1, "dur": 2}]}))
    assert main(["import", str(cpu), "--out", str(tmp_path / "o2")]) == 0
    out = capsys.readouterr().out
    assert "no GPU kernels in the trace" in out and "no communication calls" in out
    assert main(["import", str(cpu), "--out", str(tmp_path / "o2")]) == 1   # never mixed
    assert "o2/cpu already exists" in capsys.readouterr().err


def profiled_gloo_worker(rank: int, world: int, out_dir: str) -> None:
    """torch.profiler around real gloo collectives; each rank exports its own trace."""
    import torch
    import torch.distributed as dist

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        t = torch.ones(256)
        for _ in range(3):
            dist.all_reduce(t)
        dist.broadcast(t, src=0)
    prof.export_chrome_trace(os.path.join(out_dir, f"host_{os.getpid()}.json"))
    # torch 2.13's CPU build sometimes aborts ("terminate called without an active exception")
    # while tearing down a process that ran torch.profiler beside a gloo group; the trace is
    # written by now, so leave without the C++ teardown (both ranks, after the group is gone).
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


def test_real_torch_profiler_cpu_traces(tmp_path, capsys):
    """Real torch.profiler output (CPU only, gloo): ranks come from distributedInfo, the
    streaming reader takes torch's own JSON, and no kernel means no rows, with the reason."""
    from tests.distributed import run_ranks

    d = tmp_path / "prof"
    d.mkdir()
    run_ranks(profiled_gloo_worker, 2, str(d), timeout_s=180)
    files = sorted(os.listdir(d))
    assert len(files) == 2 and not any("rank" in f for f in files)
    assert main(["import", str(d), "--out", str(tmp_path / "o"), "--run-name", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "imported 2 rank(s), 0 calls (kineto)" in out
    assert out.count("no GPU kernels in the trace (CPU-only profile)") == 2
    metas = analysis.load_metadata(tmp_path / "o" / "cpu")
    assert sorted(m["rank"] for m in metas) == [0, 1] and {m["world_size"] for m in metas} == {2}


def test_metadata_conventions_graph_replay_and_rccl(tmp_path):
    """Hand-made gen-3 trace: reduce_scatter metadata (count = per-rank output), an RCCL
    Generic kernel typed only by its metadata, and an NCCL kernel replayed from a CUDA graph
    (linked to cudaGraphLaunch only: one row, op from its name, no bytes)."""
    md = {"Collective name": "_reduce_scatter_base", "In msg nelems": 800,
          "Out msg nelems": 100, "Group size": 8, "dtype": "BFloat16",
          "Process Group Name": "5", "Process Group Ranks": "[0, 1, 2, 3, 4, 5, 6, 7]"}
    gen = dict(md, **{"Collective name": "allgather", "In msg nelems": 10,
                      "Out msg nelems": 80, "dtype": "Float"})

    def kern(name, ts, corr, args=None):
        return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts,
                "dur": 2.5, "args": {"device": 0, "stream": 7, "correlation": corr,
                                     **(args or {})}}
    events = [
        kern("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
             10, 1, md),
        kern("ncclDevKernel_Generic(ncclDevKernelArgsStorage<4096ul>)", 20, 2, gen),
        kern("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 30, 3),
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "pid": 9, "tid": 9,
         "ts": 25, "dur": 1, "args": {"correlation": 3}},
    ]
    doc = {"distributedInfo": {"rank": 3, "world_size": 8}, "baseTimeNanoseconds": 10**18,
           "traceEvents": events}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    ev = analysis.load_events(profiler.import_trace(path, tmp_path / "o")).sort_values("seq")
    assert ev["op"].tolist() == ["reduce_scatter", "all_gather", "all_reduce"]
    assert ev["count"].tolist()[:2] == [100, 10]
    assert ev["bytes"].tolist()[:2] == [100 * 2 * 8, 10 * 4 * 8]
    assert ev["pg_name"].tolist()[:2] == ["5", "5"]
    assert ev["cuda_graph"].tolist()[2] == "replay" and ev["bytes"].isna().tolist()[2]
    assert ev["gpu_start_ns"].tolist() == [10**18 + 10_000, 10**18 + 20_000, 10**18 + 30_000]
    assert set(ev["gpu_duration_ns"]) == {2500} and set(ev["rank"]) == {3}
