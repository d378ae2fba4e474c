"""Issue 14, recording: nothing lost on SIGTERM or hang, no collectives inside init, fresh group
info after re-init, `commscope run` forwards only the signals its child did not get.

Real gloo processes; the signal tests check each process's exit status as well as its rows.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch.multiprocessing as mp

from commscope import analysis
from tests import distributed, workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(fn, world: int, out_dir: str, *, init: bool = True, timeout_s: float = 120.0):
    """Start `world` gloo ranks running fn(rank, world, out_dir); returns the processes."""
    ctx = mp.get_context("spawn")
    errq = ctx.SimpleQueue()
    port = distributed.free_port()
    procs = [ctx.Process(target=distributed._entry,
                         args=(r, world, port, fn, (out_dir,), errq, timeout_s, init))
             for r in range(world)]
    for p in procs:
        p.start()
    _KEEP.append(errq)  # the children unpickle it after start(): keep it alive
    return procs


_KEEP: list = []


def _join(procs, timeout_s: float = 240.0) -> list[int | None]:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return codes


def _wait_for(pattern: str, timeout_s: float = 120.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = glob.glob(pattern)
        if found:
            return found
        time.sleep(0.1)
    return []


def _holds_pg_seq(pattern: str, pg_seq: int) -> bool:
    import pyarrow.parquet as pq

    for path in glob.glob(pattern):
        try:
            if pg_seq in pq.read_table(path, columns=["pg_seq"])["pg_seq"].to_pylist():
                return True
        except OSError:  # replaced while being read
            pass
    return False


# -- item 1: SIGTERM during a flush ----------------------------------------------------------------
def test_sigterm_during_flush_writes_every_row_and_terminates(tmp_path):
    codes = _join(_start(workers.sigterm_in_flush_worker, 2, str(tmp_path)))
    assert codes == [0, -signal.SIGTERM]  # rank 1 dies of the SIGTERM, as it would untraced
    df = analysis.load_events(tmp_path / "term_in_flush")
    r1 = df[df["rank"] == 1].sort_values("seq")
    # 1 async (never waited, carried over two flushes) + 9 blocking: none lost.
    assert len(r1) == 10
    assert r1["completion"].tolist() == ["unobserved"] + ["return"] * 9
    assert r1["seq"].tolist() == list(range(10))


def test_sigterm_while_another_thread_flushes_writes_every_row_and_terminates(tmp_path):
    codes = _join(_start(workers.sigterm_while_thread_flushes_worker, 2, str(tmp_path)))
    assert codes == [0, -signal.SIGTERM]  # not survived, no error raised into the user's thread
    df = analysis.load_events(tmp_path / "term_thread")
    r1 = df[df["rank"] == 1].sort_values("seq")
    assert r1["completion"].tolist() == ["unobserved"] + ["return"] * 4
    assert r1["error"].isna().all()


# -- item 2: a hung call is on disk before the process is killed -----------------------------------
def test_hung_call_is_written_by_the_timer_and_named_by_find_mismatches(tmp_path):
    procs = _start(workers.hang_worker, 2, str(tmp_path), timeout_s=600)
    try:
        assert _wait_for(str(tmp_path / "rank1_done")), "rank 1 did not finish its calls"
        pattern = str(tmp_path / "hang" / "rank_00000" / "part-*-inflight.parquet")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _holds_pg_seq(pattern, 2):
            time.sleep(0.1)  # the timer rewrites the file with the calls in flight
        inflight = glob.glob(pattern)
    finally:
        for p in procs:  # SIGKILL: no atexit, no close
            p.kill()
        _join(procs)
    assert len(inflight) == 1
    df = analysis.load_events(tmp_path / "hang")
    r0 = df[df["rank"] == 0].sort_values("seq")
    assert r0["pg_seq"].tolist() == [0, 1, 2]
    assert r0["completion"].tolist() == ["return", "return", "started"]
    assert r0["t_end_ns"].isna().tolist() == [False, False, True]
    assert r0["bytes"].tolist() == [64, 64, 64]
    assert df[df["rank"] == 1]["pg_seq"].tolist() == [0, 1]
    mm = analysis.find_mismatches(df)
    assert len(mm) == 1
    assert mm["kind"].iloc[0] == "missing" and list(mm["ranks"].iloc[0]) == [1]
    assert int(mm["pg_seq"].iloc[0]) == 2


# -- item 3: no collectives inside init; agreement through the store -------------------------------
def test_agreement_uses_the_store_not_collectives(tmp_path):
    distributed.run_ranks(workers.init_under_trace_worker, 2, str(tmp_path), init=False)
    seen = [(tmp_path / f"seq_{r}.txt").read_text().split() for r in range(2)]
    # The group's own sequence number counts collectives issued on it: none by commscope.
    assert [s[:2] for s in seen] == [["0", "1"], ["0", "1"]]
    assert seen[0][2] == seen[1][2]  # one run folder agreed on
    df = analysis.load_events(seen[0][2])
    assert df.groupby("rank").size().to_dict() == {0: 1, 1: 1}


def test_unhooked_init_agrees_without_interleaving_collectives(tmp_path):
    distributed.run_ranks(workers.lazy_agreement_worker, 2, str(tmp_path), init=False)
    df = analysis.load_events(tmp_path / "lazy")
    for rank in (0, 1):
        mine = df[df["rank"] == rank].sort_values("seq")
        assert mine["pg_seq"].tolist() == list(range(6))
        assert mine["bytes"].tolist() == [16] * 6 and mine["error"].isna().all()
    meta = [json.loads((tmp_path / "lazy" / f"rank_{r:05d}" / "metadata.json").read_text())
            for r in range(2)]
    assert [m["clock_sync"] for m in meta] == ["same host as rank 0"] * 2
    assert [m["run_id"] for m in meta] == ["lazy", "lazy"]


def test_new_group_right_after_trace_opens_does_not_deadlock(tmp_path):
    distributed.run_ranks(workers.new_group_under_trace_worker, 2, str(tmp_path))
    df = analysis.load_events(tmp_path / "newgroup")
    for rank in (0, 1):
        mine = df[df["rank"] == rank].sort_values("seq")
        assert mine["op"].tolist() == ["all_reduce"] * 3
        assert mine["pg_size"].tolist() == [2, 2, 2] and mine["pg_seq"].tolist() == [0, 0, 0]
        assert mine["pg_name"].nunique() == 3  # three new groups
    assert sorted(os.listdir(tmp_path / "newgroup")) == ["rank_00000", "rank_00001"]


# -- item 4: a group name reused after destroy/re-init ---------------------------------------------
def test_group_reinit_under_the_same_name_gets_fresh_size(tmp_path):
    distributed.run_ranks(workers.reinit_worker, 2, str(tmp_path))
    df = analysis.load_events(tmp_path / "reinit")
    for rank in (0, 1):
        mine = df[df["rank"] == rank].sort_values("seq")
        assert mine["pg_name"].nunique() == 1  # the same name "0" both times
        assert mine["pg_size"].tolist() == [2, 1]
        assert mine["bytes"].tolist() == [24, 12]  # 3 float32 x group size
        assert [list(r) for r in mine["pg_ranks"]] == [[0, 1], [0]]


# -- item 6: commscope run and Ctrl-C --------------------------------------------------------------
_COUNTER = r"""
import os, signal, sys, time
path = sys.argv[1]
got = []
def on_int(signum, frame):
    got.append(time.monotonic())
    with open(path, "a") as fh:
        fh.write("INT\n")
signal.signal(signal.SIGINT, on_int)
with open(path, "a") as fh:
    fh.write("ready\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not (got and time.monotonic() > got[0] + 2.0):
    time.sleep(0.05)
"""


def _run_counter(tmp_path, tty: bool):
    script = tmp_path / "counter.py"
    script.write_text(_COUNTER)
    count = tmp_path / "count.txt"
    cmd = [sys.executable, "-m", "commscope", "run", "--out", str(tmp_path / "out"), "--",
           sys.executable, str(script), str(count)]
    if tty:
        import fcntl
        import termios

        master, slave = os.openpty()

        def take_tty():  # the new session's controlling terminal: Ctrl-C reaches its group
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        p = subprocess.Popen(cmd, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                             start_new_session=True, preexec_fn=take_tty)
        os.close(slave)
    else:
        master = None
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (count.exists() and "ready" in count.read_text()):
            time.sleep(0.1)
        assert count.exists(), "the child never started"
        time.sleep(0.5)  # commscope run is waiting on the child
        if tty:
            os.write(master, b"\x03")  # Ctrl-C: the terminal signals the foreground group
        else:
            p.send_signal(signal.SIGINT)  # to commscope run only
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
        if master is not None:
            os.close(master)
    return rc, count.read_text().splitlines()


def test_run_does_not_forward_a_ctrl_c_the_child_already_got(tmp_path):
    rc, lines = _run_counter(tmp_path, tty=True)
    assert lines == ["ready", "INT"]
    assert rc == 0


def test_run_forwards_a_sigint_sent_to_it_alone(tmp_path):
    rc, lines = _run_counter(tmp_path, tty=False)
    assert lines == ["ready", "INT"]
    assert rc == 0


@pytest.fixture(autouse=True)
def _no_torch_logs(monkeypatch):
    monkeypatch.delenv("TORCH_LOGS", raising=False)
