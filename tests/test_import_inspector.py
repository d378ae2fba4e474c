"""NCCL Inspector JSON-lines import. No real output file exists publicly, so the fixtures are
the records documented in ../shared/data/nccl_docs (inspector README), written the way the
plugin writes them (compact JSON, one record per line, all communicators of a process in one
file); bandwidths are checked against the values NCCL itself printed in those records."""

from __future__ import annotations

import json

import pytest

from commscope import analysis, profiler
from commscope.cli import main

# README "Output Example" (compact record, no timing-source key).
ALLREDUCE = {"header": {"id": "0x7f8c496ae9f661", "rank": 2, "n_ranks": 8, "nnodes": 1},
             "metadata": {"inspector_output_format_version": "v4.0", "git_rev": "",
                          "rec_mechanism": "profiler_plugin",
                          "dump_timestamp_us": 1748030377748202,
                          "hostname": "example-hostname", "pid": 1639453},
             "coll_perf": {"coll": "AllReduce", "coll_sn": 1407,
                           "coll_msg_size_bytes": 17179869184, "coll_exec_time_us": 61974,
                           "coll_algobw_gbs": 277.210914, "coll_busbw_gbs": 485.119099}}
# README "Output Example Verbose" (kernel-channel timestamps).
REDUCE_SCATTER = {"header": {"id": "0xe62dedaa97644a", "rank": 4, "n_ranks": 8, "nnodes": 1},
                  "metadata": {"inspector_output_format_version": "v4.0",
                               "git_rev": "9019a1912-dirty",
                               "rec_mechanism": "nccl_profiler_interface",
                               "dump_timestamp_us": 1752867229276385,
                               "hostname": "example-hostname", "pid": 438776},
                  "coll_perf": {"coll": "ReduceScatter", "coll_sn": 1231,
                                "coll_msg_size_bytes": 2147483648, "coll_exec_time_us": 41057,
                                "coll_timing_source": "kernel_gpu",
                                "coll_algobw_gbs": 418.439467, "coll_busbw_gbs": 366.134533,
                                "event_trace_sn": {"coll_start_sn": 1, "coll_stop_sn": 2,
                                                   "kernel_events": [
                                                       {"channel_id": 0, "kernel_start_sn": 3,
                                                        "kernel_stop_sn": 48,
                                                        "kernel_record_sn": 47}]},
                                "event_trace_ts": {"coll_start_ts": 1752867229235059,
                                                   "coll_stop_ts": 1752867229235064,
                                                   "kernel_events": [
                                                       {"channel_id": 0,
                                                        "kernel_start_ts": 1752867229235181,
                                                        "kernel_stop_ts": 1752867229275811,
                                                        "kernel_record_ts": 1752867229275811}]}}}


def _p2p(rank: int) -> dict:
    """A p2p record with the documented p2p_perf keys, on a 2-rank communicator."""
    return {"header": {"id": "0xabc", "comm_name": "PP", "rank": rank, "n_ranks": 2,
                       "nnodes": 1},
            "metadata": {"inspector_output_format_version": "v4.0",
                         "dump_timestamp_us": 1748030377800000, "hostname": "h", "pid": 1},
            "p2p_perf": {"p2p": "Send", "p2p_sn": 7, "p2p_peer": 1 - rank,
                         "p2p_msg_size_bytes": 1048576, "p2p_exec_time_us": 20,
                         "p2p_timing_source": "kernel_gpu", "p2p_algobw_gbs": 52.4288,
                         "p2p_busbw_gbs": 52.4288}}


def _write(path, records) -> None:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def test_documented_records(tmp_path):
    _write(tmp_path / "host-pid1639453.log", [ALLREDUCE, REDUCE_SCATTER, _p2p(0)])
    run = profiler.import_trace(tmp_path / "host-pid1639453.log", tmp_path / "o")
    ev = analysis.bandwidth(analysis.load_events(run)).sort_values("gpu_start_ns")
    assert ev["rank"].unique().tolist() == [2]          # rank in the largest communicator
    assert set(ev["source"]) == {"nccl_inspector"}
    ar = ev[ev["op"] == "all_reduce"].iloc[0]
    assert ar["bytes"] == 17179869184 and ar["gpu_duration_ns"] == 61974000
    assert ar["pg_seq"] == 1407 and ar["pg_size"] == 8 and ar["pg_name"] == "0x7f8c496ae9f661"
    assert ar["algbw_GBps"] == pytest.approx(277.210914, rel=1e-6)
    assert ar["busbw_GBps"] == pytest.approx(485.119099, rel=1e-6)
    rs = ev[ev["op"] == "reduce_scatter"].iloc[0]
    assert rs["bytes"] == 2147483648 * 8                # nccl-tests S = per-rank recv x n
    # device interval: NCCL's exec time, ending at the last kernel-channel stop
    assert rs["gpu_end_ns"] == 1752867229275811000
    assert rs["gpu_start_ns"] == 1752867229275811000 - 41057000
    assert rs["t_start_ns"] == 1752867229235059000
    assert rs["gpu_duration_ns"] == 41057000
    assert rs["algbw_GBps"] == pytest.approx(418.439467, rel=1e-6)
    assert rs["busbw_GBps"] == pytest.approx(366.134533, rel=1e-6)
    send = ev[ev["op"] == "send"].iloc[0]
    assert send["peer"] == 1 and send["bytes"] == 1048576 and send["pg_name"] == "PP"
    assert send["busbw_GBps"] == pytest.approx(52.4288, rel=1e-6)
    assert ev["dtype"].isna().all() and ev["count"].isna().all()   # Inspector has no dtype
    note = analysis.load_metadata(run)[0]["import_notes"][0]
    assert "largest communicator" in note and "no dtype" in note


def test_two_processes_and_gz_folder(tmp_path):
    import gzip

    d = tmp_path / "nccl-inspector-unknown-jobid"
    d.mkdir()
    for r in (0, 1):
        with gzip.open(d / f"h-pid{r}.log.gz", "wt") as fh:
            fh.write(json.dumps(_p2p(r)) + "\n")
    run = profiler.import_trace(d, tmp_path / "o", format="nccl-inspector")
    ev = analysis.load_events(run)
    assert sorted(ev["rank"]) == [0, 1] and ev["peer"].tolist() == [1, 0]


def test_truncated_record_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "h-pid9.log"
    text = json.dumps(ALLREDUCE) + "\n" + json.dumps(REDUCE_SCATTER)[:80] + "\n"
    f.write_text(text)
    assert main(["import", str(f), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "h-pid9.log:2: not a JSON record" in err and "Traceback" not in err
