"""CUDA-event timing, the NCCL backend and pynvml telemetry (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from commscope import analysis
from commscope.profiler._metadata import gpu_inventory
from tests import workers  # noqa: F401  (same import path as the gloo tests)
from tests.distributed import run_ranks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (CUDA timing, NCCL, pynvml)")


def nccl_worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    from commscope import profiler

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    x = torch.ones(1 << 20, device="cuda")
    with profiler.trace(out_dir, run_name="nccl"):
        for _ in range(3):
            dist.all_reduce(x)
        w = dist.all_reduce(x, async_op=True)
        torch.cuda._sleep(1_000_000)  # queue GPU work behind the collective
        w.wait()
        y = torch.empty(1 << 20, device="cuda")
        dist.broadcast(y, src=0)
    torch.cuda.synchronize()
    dist.destroy_process_group()


def test_cuda_event_timing_on_nccl(tmp_path):
    run_ranks(nccl_worker, 1, str(tmp_path), init=False)
    df = analysis.load_events(tmp_path / "nccl")
    assert len(df) == 5
    assert set(df["backend"]) == {"nccl"} and set(df["device"]) == {"cuda:0"}
    assert df["gpu_duration_ns"].notna().all()
    assert (df["gpu_duration_ns"] > 0).all()
    # Device start/end on the host wall clock (reference event at the first CUDA call).
    assert df["gpu_start_ns"].notna().all() and df["gpu_end_ns"].notna().all()
    assert ((df["gpu_end_ns"] - df["gpu_start_ns"]) == df["gpu_duration_ns"]).all()
    meta0 = analysis.load_metadata(tmp_path / "nccl")[0]
    inside = (df["gpu_start_ns"] >= meta0["t_open_ns"]) & (df["gpu_end_ns"] <= meta0["t_close_ns"])
    assert inside.all(), df[["t_start_ns", "gpu_start_ns", "gpu_end_ns"]]
    assert df["bytes"].tolist() == [4 << 20] * 5
    meta = analysis.load_metadata(tmp_path / "nccl")[0]
    assert meta["versions"]["nccl"] and meta["versions"]["cuda"]
    assert meta["gpus"]["available"] is True and meta["gpus"]["count"] >= 1


def pool_worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    from commscope import profiler
    from commscope.profiler._cuda_events import POOL

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    x = torch.ones(1 << 10, device="cuda")
    with profiler.trace(out_dir, run_name="pool", flush_events=16):
        for _ in range(200):
            dist.all_reduce(x)
    with open(f"{out_dir}/created.txt", "w") as fh:
        fh.write(str(POOL.created))
    dist.destroy_process_group()


def test_cuda_events_come_from_a_pool(tmp_path):
    run_ranks(pool_worker, 1, str(tmp_path), init=False)
    df = analysis.load_events(tmp_path / "pool")
    assert len(df) == 200 and df["gpu_duration_ns"].notna().all()
    # 400 events used; allocations bounded by what can be unresolved at once (flush_events).
    assert int((tmp_path / "created.txt").read_text()) <= 4 * 16


def test_pynvml_inventory():
    inv = gpu_inventory()
    assert inv["available"] is True, inv
    assert inv["count"] == torch.cuda.device_count() or inv["count"] >= 1
    g = inv["gpus"][0]
    assert g["name"] and g["uuid"] and g["pci_bus_id"] and g["memory_total_bytes"] > 0
    assert isinstance(g["nvlinks"], list)
