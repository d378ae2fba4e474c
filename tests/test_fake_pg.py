"""Fast unit tests of interception on the single-process fake process group (8 ranks, rank 3)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.distributed as dist

from commscope import analysis, profiler
from commscope.profiler._recorder import RECORDER
from tests.analysis_fixtures import session_events as _events
from tests.distributed import fake_process_group

WORLD, RANK = 8, 3


@pytest.fixture(scope="module", autouse=True)
def fake_pg():
    with fake_process_group(RANK, WORLD):
        yield




def test_reentrant_delegation_is_recorded_once(tmp_path):
    with profiler.trace(tmp_path) as s:
        dist.all_gather_into_tensor(torch.empty(8 * WORLD), torch.ones(8))  # -> all_gather_single
        dist.reduce_scatter_tensor(torch.empty(2), torch.ones(2 * WORLD))  # -> reduce_scatter_single
        dist.send(torch.ones(4), dst=5)  # -> isend
    df = _events(s)
    assert df["api"].tolist() == ["all_gather_into_tensor", "reduce_scatter_tensor", "send"]
    assert df["bytes"].tolist() == [32 * WORLD, 8 * WORLD, 16]
    assert df["peer"].tolist()[2] == 5
    assert df["pg_seq"].tolist() == [0, 1, 0]  # p2p counts per (group, src, dst)


def test_phases_nest_and_steps_inherit(tmp_path):
    t = torch.ones(2)
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(t)
        with profiler.phase("generate"):
            dist.all_reduce(t)
            with profiler.phase("decode", step=4):
                dist.all_reduce(t)
                with profiler.phase("attn"):
                    dist.all_reduce(t)
    df = _events(s)
    assert df["phase"].tolist()[1:] == ["generate", "decode", "attn"]
    assert df["phase"].isna().tolist()[0]
    assert df["phase_path"].tolist()[1:] == ["generate", "generate/decode", "generate/decode/attn"]
    assert df["step"].tolist()[2:] == [4, 4]
    assert df["step"].isna().tolist()[:2] == [True, True]
    for bad in (2**63, -(2**63)):  # beyond the trace's int64, and its "no step" marker
        with pytest.raises(ValueError, match="int64"), profiler.phase("decode", step=bad):
            pass


def test_label_group_applies_to_events_before_the_label(tmp_path):
    g = dist.new_group(list(range(WORLD)))
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(1), group=g)
        profiler.label_group(g, "ep")
        dist.all_reduce(torch.ones(1))
    df = _events(s)
    assert df["pg_dim"].tolist() == ["ep", "world"]
    with pytest.raises(ValueError):
        profiler.label_group(g, "")


def test_hooks_restored_and_nested_sessions(tmp_path):
    orig = dist.all_reduce
    work_type = type(dist.all_reduce(torch.ones(1), async_op=True))
    orig_wait, orig_is_completed = work_type.wait, work_type.is_completed
    with profiler.trace(tmp_path / "outer") as outer:
        assert dist.all_reduce is not orig
        dist.all_reduce(torch.ones(1))
        with profiler.trace(tmp_path / "inner") as inner:
            dist.all_reduce(torch.ones(2))
        assert dist.all_reduce is not orig  # still tracing for the outer session
        dist.all_reduce(torch.ones(3))
        dist.all_reduce(torch.ones(4), async_op=True).wait()
        assert work_type.wait is not orig_wait  # patched while tracing async work
    assert dist.all_reduce is orig
    assert dist.distributed_c10d.all_reduce is orig
    # torch's own Work methods are back, the very same objects.
    assert work_type.wait is orig_wait and work_type.is_completed is orig_is_completed
    assert _events(outer)["count"].tolist() == [1, 2, 3, 4]
    assert _events(inner)["count"].tolist() == [2]
    # Repeated use: a second session after the first starts numbering again.
    with profiler.trace(tmp_path / "again") as again:
        dist.all_reduce(torch.ones(1))
    assert _events(again)["seq"].tolist() == [0]


def test_untraced_calls_are_not_recorded(tmp_path):
    dist.all_reduce(torch.ones(1))
    with profiler.trace(tmp_path) as s:
        pass
    assert s.events_written == 0


def test_flush_by_count_writes_parts_and_keeps_order(tmp_path):
    with profiler.trace(tmp_path, flush_events=7) as s:
        for i in range(50):
            dist.all_reduce(torch.ones(i + 1))
    assert s.parts == 8  # 7 full parts + the rest at close
    df = _events(s)
    assert df["count"].tolist() == list(range(1, 51))
    assert df["seq"].tolist() == list(range(50))


def test_async_handle_never_waited_is_marked_unobserved(tmp_path):
    with profiler.trace(tmp_path) as s:
        w = dist.all_reduce(torch.ones(4), async_op=True)
        done = dist.all_reduce(torch.ones(5), async_op=True)
        assert done.is_completed() is False  # the fake backend's work never completes by itself
        done.wait()
    df = _events(s)
    assert df["completion"].tolist() == ["unobserved", "wait"]
    assert df["t_end_ns"].iloc[0] == df["t_return_ns"].iloc[0]
    assert df["t_wait_ns"].iloc[1] >= df["t_return_ns"].iloc[1]
    del w


def test_never_waited_async_work_is_bounded_and_recorded_unobserved(tmp_path):
    """Issue 14 item 5: work never waited on is let go past MAX_PENDING (not held forever, not
    rescanned at every flush) and recorded with completion 'unobserved'."""
    from commscope.profiler._work import MAX_PENDING

    n = MAX_PENDING + 1000
    with profiler.trace(tmp_path, flush_events=512) as s:
        works = [dist.all_reduce(torch.ones(1), async_op=True) for _ in range(n)]
        assert len(RECORDER.work.pending) == MAX_PENDING
        ids = set(RECORDER.work.pending)
        assert id(works[0]) not in ids and id(works[-1]) in ids  # the oldest went first
        s.flush()
        assert len(s._carry) == MAX_PENDING  # only calls still tracked are carried
    assert RECORDER.work.pending == {}
    df = _events(s)
    assert len(df) == n
    assert (df["completion"] == "unobserved").all()
    assert (df["t_end_ns"] == df["t_return_ns"]).all()


def _run_threads(target, args_list: list[tuple]) -> None:
    """Run `target(*args)` on one thread per entry of `args_list` and wait for all."""
    threads = [threading.Thread(target=target, args=a) for a in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_threads_record_every_call_once(tmp_path):
    n_threads, n_calls = 4, 300

    started = threading.Barrier(n_threads)

    def work():
        started.wait()  # all alive at once: thread idents are not reused
        for _ in range(n_calls):
            dist.all_reduce(torch.ones(1))

    with profiler.trace(tmp_path, flush_events=100) as s:
        _run_threads(work, [()] * n_threads)
    df = _events(s)
    assert len(df) == n_threads * n_calls
    assert sorted(df["seq"]) == list(range(n_threads * n_calls))
    assert sorted(df["pg_seq"]) == list(range(n_threads * n_calls))
    assert df["tid"].nunique() == n_threads


def test_group_relative_ranks_are_mapped_to_global(tmp_path):
    g = dist.new_group([1, 3, 5, 7])
    with profiler.trace(tmp_path) as s:
        dist.broadcast(torch.ones(2), group=g, group_src=2)
        dist.send(torch.ones(2), group=g, group_dst=3)
    df = _events(s)
    assert df["root"].tolist()[0] == 5
    assert df["peer"].tolist()[1] == 7
    assert df["pg_ranks"].iloc[0].tolist() == [1, 3, 5, 7]


def test_a_part_on_several_groups_keeps_each_rows_ranks(tmp_path):
    g = dist.new_group([1, 3, 5, 7])
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(2), group=g)
        dist.all_reduce(torch.ones(2))
        dist.all_reduce(torch.ones(2), group=g)
    df = _events(s)
    assert [r.tolist() for r in df["pg_ranks"]] == [[1, 3, 5, 7], list(range(WORLD)),
                                                     [1, 3, 5, 7]]
    assert df["pg_size"].tolist() == [4, WORLD, 4]


def test_a_part_on_one_unresolvable_group_is_written(tmp_path):
    """An engine method instrumented with a group name torch does not know: its ranks are
    unknown (empty lists, size -1), and the part holding only such rows is still written."""

    class Comm:
        def all_reduce(self, t):
            return t

    handle = profiler.instrument(Comm, "all_reduce", op="all_reduce", group="engine-tp")
    try:
        with profiler.trace(tmp_path) as s:
            for _ in range(5):
                Comm().all_reduce(torch.ones(4))
    finally:
        handle.remove()
    df = _events(s)
    assert df["pg_name"].tolist() == ["engine-tp"] * 5
    assert [r.tolist() for r in df["pg_ranks"]] == [[]] * 5
    assert df["pg_size"].tolist() == [-1] * 5
    assert df["bytes"].tolist() == [16] * 5


def test_rows_on_a_group_the_writer_does_not_know_get_null_ranks():
    """Rows that name a group missing from the writer's `groups` (rows built outside the hooks)
    get null ranks and size -1, one group or several in a part."""
    from commscope.profiler._groups import GroupInfo
    from commscope.profiler._rows import register_api
    from commscope.profiler._writer import Identity, rows_to_table

    api = register_api("all_reduce", "all_reduce")
    ident = Identity("r", RANK, WORLD, "host", 1, "0")
    known = GroupInfo("1", 2, (3, 4), "gloo")

    def row(group, seq):
        return [api, 10, 20, 20, torch.float32, 4, 4, 4, group, seq, seq, None, 1, None]

    one = rows_to_table([row("lost", 0), row("lost", 1)], ident, {})
    assert one["pg_ranks"].to_pylist() == [None, None]
    assert one["pg_size"].to_pylist() == [-1, -1]
    mixed = rows_to_table([row("lost", 0), row(known, 0), row("lost", 1)], ident, {})
    assert mixed["pg_ranks"].to_pylist() == [None, [3, 4], None]
    assert mixed["pg_size"].to_pylist() == [-1, 2, -1]


def test_full_capture_sees_direct_dispatcher_calls_once(tmp_path):
    t = torch.ones(6)
    with profiler.trace(tmp_path, capture="full") as s:
        dist.all_reduce(t)  # hook records it; the dispatch mode must not record it again
        out = torch.ops._c10d_functional.all_reduce(t, "sum", dist.group.WORLD.group_name)
        torch.ops._c10d_functional.wait_tensor(out)
        torch.matmul(torch.ones(2, 2), torch.ones(2, 2))  # ordinary ops pass through
    df = _events(s)
    assert df["api"].tolist() == ["all_reduce", "c10d_functional.all_reduce"]
    assert df["capture"].tolist() == ["hook", "dispatch"]
    assert df["bytes"].tolist() == [24, 24]
    assert df["completion"].tolist() == ["return", "wait_tensor"]


def test_default_capture_misses_direct_dispatcher_calls(tmp_path):
    t = torch.ones(6)
    with profiler.trace(tmp_path) as s:
        out = torch.ops._c10d_functional.all_reduce(t, "sum", dist.group.WORLD.group_name)
        torch.ops._c10d_functional.wait_tensor(out)
    assert s.events_written == 0


def test_bad_arguments_raise_the_same_error(tmp_path):
    with pytest.raises(TypeError) as untraced:
        dist.all_reduce()
    with profiler.trace(tmp_path), pytest.raises(TypeError) as traced:
        dist.all_reduce()
    assert str(untraced.value) == str(traced.value)
    assert not RECORDER.installed


def test_invalid_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="capture"):
        profiler.trace(tmp_path, capture="everything")
    with pytest.raises(ValueError, match="run_name"):
        profiler.trace(tmp_path, run_name="a/b")
    with pytest.raises(ValueError, match="phase name"), profiler.phase(""):
        pass


def test_run_name_reuse_does_not_clash(tmp_path):
    with profiler.trace(tmp_path, run_name="same") as a:
        dist.all_reduce(torch.ones(1))
    with profiler.trace(tmp_path, run_name="same") as b:
        dist.all_reduce(torch.ones(2))
    assert a.run_dir != b.run_dir
    assert b.run_dir.endswith("same-2")
    both = analysis.load_events(tmp_path)
    assert sorted(both["run_id"].unique()) == ["same", "same-2"]


def test_pause_and_resume(tmp_path):
    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(1))
        s.pause()
        dist.all_reduce(torch.ones(2))
        s.resume()
        dist.all_reduce(torch.ones(3))
        s.pause()
    assert _events(s)["count"].tolist() == [1, 3]
    assert not RECORDER.installed


def test_session_opened_while_another_is_paused(tmp_path):
    orig = dist.all_reduce
    with profiler.trace(tmp_path / "a") as a:
        a.pause()
        with profiler.trace(tmp_path / "b") as b:
            dist.all_reduce(torch.ones(1))
        assert dist.all_reduce is not orig  # a is still open: hooks stay
        a.resume()
        dist.all_reduce(torch.ones(2))
    assert dist.all_reduce is orig
    assert _events(b)["count"].tolist() == [1]
    assert _events(a)["count"].tolist() == [2]


def test_coalesced_functional_collective_completes_once(tmp_path):
    from torch.distributed import _functional_collectives as funcol

    with profiler.trace(tmp_path) as s:
        outs = funcol.all_reduce_coalesced([torch.ones(3), torch.ones(5)], "sum",
                                           dist.group.WORLD)
        outs[0].wait()
        assert RECORDER.work.pending_tensors == {}  # the sibling was dropped with the first wait
        outs[1].wait()
    df = _events(s)
    assert df["api"].tolist() == ["funcol.all_reduce_coalesced"]
    assert df["count"].tolist() == [8] and df["completion"].tolist() == ["wait_tensor"]


def _part_seqs(session) -> list[list[int]]:
    import glob

    import pyarrow.parquet as pq

    files = sorted(glob.glob(f"{session.rank_dir}/part-*-0*.parquet"))
    return [pq.read_table(f, columns=["seq"])["seq"].to_pylist() for f in files]


def test_packed_and_raw_rows_share_parts_in_call_order(tmp_path):
    """Blocking calls are packed records, async ones raw rows: a part holds both, in call order,
    with exact values, and flush_events counts both kinds."""
    with profiler.trace(tmp_path, flush_events=4) as s:
        dist.all_reduce(torch.ones(3))                        # packed
        w = dist.all_reduce(torch.ones(5), async_op=True)     # raw
        dist.all_gather_into_tensor(torch.empty(2 * WORLD), torch.ones(2))  # packed
        w.wait()
        with profiler.phase("decode", step=7):
            dist.broadcast(torch.ones(4, dtype=torch.float16), src=1)       # raw (rooted)
            dist.all_reduce(torch.ones(6, dtype=torch.float64))             # packed, step 7
        dist.barrier()                                        # packed, no dtype
    assert _part_seqs(s) == [[0, 1, 2, 3], [4, 5]]  # 4 events (both kinds) made the first part
    df = _events(s)
    assert df["api"].tolist() == ["all_reduce", "all_reduce", "all_gather_into_tensor",
                                  "broadcast", "all_reduce", "barrier"]
    assert df["count"].tolist() == [3, 5, 2, 4, 6, 0]
    assert df["bytes"].tolist() == [12, 20, 8 * WORLD, 8, 48, 0]
    assert df["out_bytes"].tolist() == [12, 20, 8 * WORLD, 8, 48, 0]
    assert df["dtype"].tolist()[:5] == ["float32", "float32", "float32", "float16", "float64"]
    assert df["dtype"].isna().tolist() == [False] * 5 + [True]
    assert df["completion"].tolist() == ["return", "wait", "return", "return", "return", "return"]
    assert df["async_op"].tolist() == [False, True, False, False, False, False]
    assert df["root"].tolist()[3] == 1
    assert df["phase"].tolist()[3:5] == ["decode", "decode"]
    assert df["step"].tolist()[3:5] == [7, 7]
    assert df["step"].isna().tolist() == [True, True, True, False, False, True]
    assert (df["t_end_ns"] >= df["t_start_ns"]).all()
    packed = df["api"].ne("broadcast") & ~df["async_op"]
    assert (df.loc[packed, "t_end_ns"] == df.loc[packed, "t_return_ns"]).all()
    assert df["pg_seq"].tolist() == list(range(6))


def test_threads_in_different_phases_each_get_their_own(tmp_path):
    """The hook caches the last (dtype, group, phase) per API; threads interleaving calls in
    different phases and dtypes must never get each other's."""
    n_threads, n_calls = 4, 400
    started = threading.Barrier(n_threads)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64]

    def work(i):
        started.wait()
        with profiler.phase(f"t{i}", step=i):
            for k in range(n_calls):
                with profiler.phase("inner", step=100 * i + k % 3):
                    dist.all_reduce(torch.ones(i + 1, dtype=dtypes[i]))

    with profiler.trace(tmp_path, flush_events=97) as s:
        _run_threads(work, [(i,) for i in range(n_threads)])
    df = _events(s)
    assert len(df) == n_threads * n_calls
    i = df["count"] - 1
    assert (df["phase_path"] == "t" + i.astype(str) + "/inner").all()
    assert (df["dtype"] == i.map(lambda j: str(dtypes[j]).removeprefix("torch."))).all()
    assert sorted(df["step"] - 100 * i) == sorted([k % 3 for k in range(n_calls)] * n_threads)


def test_a_value_that_does_not_pack_is_recorded_as_a_raw_row(tmp_path):
    class OddNumel(torch.Tensor):
        def numel(self):  # not an int64: the packed record cannot hold it
            return None

    with profiler.trace(tmp_path) as s:
        dist.all_reduce(torch.ones(3).as_subclass(OddNumel))
        dist.all_reduce(torch.ones(2))
    df = _events(s)
    assert df["api"].tolist() == ["all_reduce", "all_reduce"]
    assert df["count"].isna().tolist() == [True, False]
    assert df["count"].tolist()[1] == 2
    assert df["completion"].tolist() == ["return", "return"]


def test_part_files_read_back_with_the_schema_metadata_and_true_statistics(tmp_path):
    """Strings are written from dictionary arrays: a reader still gets `arrow_schema()`'s plain
    types, the trace's key-value metadata, and min/max statistics of values rows really have
    (null rows and unused dictionary entries never widen them)."""
    import glob

    import pyarrow.parquet as pq

    with profiler.trace(tmp_path, run_name="stats") as s:
        dist.all_reduce(torch.ones(2))                    # no phase
        with profiler.phase("prefill"):
            dist.all_reduce(torch.ones(2))
        with profiler.phase("decode", step=1):
            dist.broadcast(torch.ones(2), src=0)          # a raw row in the same part
    (part,) = glob.glob(f"{s.rank_dir}/part-*-00000.parquet")
    meta = pq.read_metadata(part)
    schema = meta.schema.to_arrow_schema()
    assert schema.metadata[b"commscope.run_id"] == b"stats"
    assert schema.metadata[b"commscope.rank"] == str(RANK).encode()
    assert schema.metadata[b"commscope.schema_version"] == profiler.SCHEMA_VERSION.encode()
    table = pq.read_table(part)
    expected = profiler.arrow_schema()
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in expected]
    stats = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).statistics
             for i in range(meta.num_columns)}
    assert (stats["phase"].min, stats["phase"].max, stats["phase"].null_count) == \
        ("decode", "prefill", 1)
    assert (stats["op"].min, stats["op"].max) == ("all_reduce", "broadcast")
    assert table["phase"].to_pylist() == [None, "prefill", "decode"]
    assert table["api"].to_pylist() == ["all_reduce", "all_reduce", "broadcast"]


def test_string_columns_are_stored_dictionary_encoded(tmp_path):
    """Several APIs share an op and all share a capture kind: the writer still stores one
    dictionary entry per value (a Parquet writer given a dictionary that holds a value twice
    falls back to plain strings on every row, ~2x the write cost), packed and raw rows alike."""
    import glob

    import pyarrow.parquet as pq

    with profiler.trace(tmp_path, run_name="dict") as s:
        dist.all_reduce(torch.ones(2))
        dist.all_gather_into_tensor(torch.empty(2 * WORLD), torch.ones(2))
        dist.all_reduce(torch.ones(2), async_op=True).wait()   # a raw row in the same part
        dist.broadcast(torch.ones(2), src=0)
    (part,) = glob.glob(f"{s.rank_dir}/part-*-00000.parquet")
    rg = pq.read_metadata(part).row_group(0)
    chunks = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    strings = [f.name for f in profiler.arrow_schema() if f.type == "string"]
    assert len(strings) == 16
    plain = [c for c in strings if "RLE_DICTIONARY" not in chunks[c].encodings]
    assert plain == []
    table = pq.read_table(part)
    assert table["api"].to_pylist() == ["all_reduce", "all_gather_into_tensor", "all_reduce",
                                        "broadcast"]
    assert table["op"].to_pylist() == ["all_reduce", "all_gather", "all_reduce", "broadcast"]
    assert table["capture"].to_pylist() == ["hook"] * 4
    assert table["completion"].to_pylist() == ["return", "return", "wait", "return"]


def test_columns_the_writer_always_fills_are_stored_required(tmp_path):
    """Recorded parts store the 13 columns the writer fills on every row (identity, per-API and
    per-group values, extra fields with defaults) as required Parquet columns, packed and raw rows
    alike; a trace that also holds a part with every column optional (as importers and older
    versions write) reads as one, without DuckDB's union by name."""
    import glob

    import pyarrow.parquet as pq

    with profiler.trace(tmp_path, run_name="req") as s:
        dist.all_reduce(torch.ones(2))                             # packed record
        dist.all_reduce(torch.ones(2), async_op=True).wait()       # raw row
        with profiler.phase("decode", step=4):
            dist.send(torch.ones(3), dst=5)
    (part,) = glob.glob(f"{s.rank_dir}/part-*-00000.parquet")
    meta = pq.read_metadata(part)
    required = {meta.schema.column(i).path for i in range(meta.num_columns)
                if meta.schema.column(i).max_definition_level == 0}
    assert required == {"run_id", "rank", "world_size", "host", "pid", "pg_size", "op", "api",
                        "capture", "completion", "async_op", "device", "source"}
    table = pq.read_table(part)
    assert table["async_op"].to_pylist() == [False, True, False]
    assert table["completion"].to_pylist() == ["return", "wait", "return"]
    assert table["pg_size"].to_pylist() == [WORLD] * 3
    assert table["source"].to_pylist() == ["hooks"] * 3
    assert table["pg_ranks"].to_pylist() == [list(range(WORLD))] * 3  # one group in the part

    # The same rows again under another pid's name, every column optional.
    optional = table.cast(profiler.arrow_schema(table.schema.metadata))
    pq.write_table(optional, part.replace("part-", "part-99999999"))
    t = analysis.Trace(s.run_dir)
    assert "union_by_name" not in t._source
    ev = t.events(columns=["seq", "op", "bytes", "async_op"])  # sorted by seq: pairs
    assert ev["seq"].tolist() == [0, 0, 1, 1, 2, 2]
    assert ev["op"].tolist() == ["all_reduce"] * 4 + ["send"] * 2
    assert ev["bytes"].tolist() == [8, 8, 8, 8, 12, 12]
    assert ev["async_op"].tolist() == [False, False, True, True, False, False]
