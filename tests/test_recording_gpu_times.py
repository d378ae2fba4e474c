"""Device times on the host clock (issue 11, hooks): the arithmetic and the written columns,
with hand-made values (the CUDA path itself runs in tests/test_cuda.py on a GPU)."""

from __future__ import annotations

import torch

from commscope.profiler._cuda_events import gpu_times_ns
from commscope.profiler._groups import GroupInfo
from commscope.profiler._rows import R, X, register_api
from commscope.profiler._writer import Identity, rows_to_table

REF_HOST_NS = 1_700_000_000_123_456_789


def test_event_times_map_onto_the_host_wall_clock():
    # Reference event at REF_HOST_NS; start event 2.5 ms after it; the call took 0.125 ms.
    assert gpu_times_ns(REF_HOST_NS, 2.5, 0.125) == (
        REF_HOST_NS + 2_500_000, REF_HOST_NS + 2_625_000, 125_000)
    # CUDA reports float milliseconds (0.5 us resolution): rounded to whole nanoseconds.
    assert gpu_times_ns(0, 0.0015005, 0.0000004) == (1_500, 1_500, 0)
    start, end, dur = gpu_times_ns(REF_HOST_NS, 1234.56789, 3.0000001)
    assert end - start == dur == 3_000_000


def _row(api, seq, t0, gpu):
    x = [None, "return", None, None, False, None, "cuda:0", gpu]
    gi = GroupInfo("0", 2, (0, 1), "nccl")
    return [api, t0, t0 + 50_000, t0 + 50_000, torch.float32, 1024, 1024, 1024, gi, seq, seq,
            None, 1, x]


def test_device_times_are_written_next_to_host_times():
    api = register_api("all_reduce", "all_reduce")
    t0 = REF_HOST_NS + 2_000_000
    rows = [_row(api, 0, t0, gpu_times_ns(REF_HOST_NS, 2.5, 0.125)),
            _row(api, 1, t0 + 100_000, None),     # no device timing (e.g. CPU tensor)
            _row(api, 2, t0 + 200_000, 7_000)]    # a bare duration from an older producer
    rows[1][R.X][X.DEVICE] = "cpu"
    table = rows_to_table(rows, Identity("run", 0, 2, "host", 1, "0"), {})
    got = table.select(["gpu_start_ns", "gpu_end_ns", "gpu_duration_ns", "t_start_ns",
                        "pg_size", "bytes", "device"]).to_pylist()
    assert got == [
        dict(gpu_start_ns=REF_HOST_NS + 2_500_000, gpu_end_ns=REF_HOST_NS + 2_625_000,
             gpu_duration_ns=125_000, t_start_ns=t0, pg_size=2, bytes=4096, device="cuda:0"),
        dict(gpu_start_ns=None, gpu_end_ns=None, gpu_duration_ns=None, t_start_ns=t0 + 100_000,
             pg_size=2, bytes=4096, device="cpu"),
        dict(gpu_start_ns=None, gpu_end_ns=None, gpu_duration_ns=7_000, t_start_ns=t0 + 200_000,
             pg_size=2, bytes=4096, device="cuda:0"),
    ]


class _Done:
    """Stand-in for a finished torch.cuda.Event (no CUDA on this machine): the pool bookkeeping
    under test never touches the device."""

    device = None

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: _Done) -> float:
        return end.ms - self.ms


def test_rows_sharing_one_event_pair_resolve_once_and_return_it_once():
    """A CUDA-graph replay's rows share one [start, end] pair: each row gets the same device
    time, and the two events go back to the pool once (twice would hand one event to two
    calls at the same time)."""
    from commscope.profiler._cuda_events import POOL, resolve_gpu_times

    api = register_api("all_reduce", "all_reduce")
    pair = [_Done(1.0), _Done(1.25)]
    rows = [_row(api, i, REF_HOST_NS, pair) for i in range(3)]
    before = list(POOL._free.get(None, []))
    try:
        assert resolve_gpu_times(rows, final=False) == []
        assert [r[R.X][X.GPU] for r in rows] == [(None, None, 250_000)] * 3
        returned = POOL._free.get(None, [])[len(before):]
        assert [id(e) for e in returned] == [id(pair[0]), id(pair[1])]
    finally:
        POOL._free[None] = before
