"""Run metadata of one rank: versions, host, GPUs and their interconnect (pynvml), NCCL env."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

__all__ = ["collect_metadata", "gpu_inventory", "versions", "comm_env"]

_ENV_PREFIXES = ("NCCL_", "TORCH_NCCL_")
_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID", "CUDA_VISIBLE_DEVICES")


def versions() -> dict[str, Any]:
    """Python, torch, commscope, and CUDA/NCCL versions where present."""
    from .._version import __version__

    out: dict[str, Any] = {"python": platform.python_version(), "commscope": __version__,
                           "platform": platform.platform()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        nccl = None
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_nccl_available():
                v = torch.cuda.nccl.version()
                nccl = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
        except Exception:
            nccl = None
        out["nccl"] = nccl
    except ImportError:
        out["torch"] = None
    return out


def comm_env() -> dict[str, str]:
    """NCCL_* / TORCH_NCCL_* variables and the launcher's rank variables."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(_ENV_PREFIXES) or k in _ENV_KEYS}


def gpu_inventory() -> dict[str, Any]:
    """GPUs, NVLink links and pairwise topology from NVML; `available: False` with a reason otherwise."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py (pynvml) is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML unavailable: {exc}"}
    except Exception as exc:  # a broken driver install must never break tracing
        return {"available": False, "reason": f"NVML failed: {exc!r}"}
    try:
        return {"available": True, **_inventory(pynvml)}
    except Exception as exc:
        return {"available": False, "reason": f"NVML query failed: {exc!r}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _inventory(nv: Any) -> dict[str, Any]:
    count = nv.nvmlDeviceGetCount()
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    gpus = []
    for i, h in enumerate(handles):
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        gpu: dict[str, Any] = {
            "index": i,
            "name": _text(nv.nvmlDeviceGetName(h)),
            "uuid": _text(nv.nvmlDeviceGetUUID(h)),
            "pci_bus_id": _text(nv.nvmlDeviceGetPciInfo(h).busId),
            "memory_total_bytes": int(mem.total),
        }
        try:
            gpu["driver"] = _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError:
            pass
        links = []
        for link in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                state = nv.nvmlDeviceGetNvLinkState(h, link)
            except nv.NVMLError:
                continue  # link index not present on this GPU
            entry: dict[str, Any] = {"link": link, "active": bool(state)}
            if state:
                try:
                    entry["remote_pci_bus_id"] = _text(nv.nvmlDeviceGetNvLinkRemotePciInfo_v2(h, link).busId)
                except (nv.NVMLError, AttributeError):
                    pass
                try:
                    entry["version"] = int(nv.nvmlDeviceGetNvLinkVersion(h, link))
                except nv.NVMLError:
                    pass
            links.append(entry)
        gpu["nvlinks"] = links
        gpu["nvlink_active"] = sum(1 for x in links if x["active"])
        gpus.append(gpu)
    levels = {
        getattr(nv, "NVML_TOPOLOGY_INTERNAL", 0): "same_board",
        getattr(nv, "NVML_TOPOLOGY_SINGLE", 10): "single_pcie_switch",
        getattr(nv, "NVML_TOPOLOGY_MULTIPLE", 20): "multiple_pcie_switches",
        getattr(nv, "NVML_TOPOLOGY_HOSTBRIDGE", 30): "host_bridge",
        getattr(nv, "NVML_TOPOLOGY_NODE", 40): "numa_node",
        getattr(nv, "NVML_TOPOLOGY_SYSTEM", 50): "system",
    }
    topology = []
    for i in range(count):
        for j in range(i + 1, count):
            try:
                level = nv.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j])
            except nv.NVMLError:
                continue
            nvlinked = any(x.get("remote_pci_bus_id") == gpus[j]["pci_bus_id"]
                           for x in gpus[i]["nvlinks"])
            topology.append({"gpu_a": i, "gpu_b": j, "pcie_path": levels.get(level, str(level)),
                             "nvlink": nvlinked})
    return {"count": count, "gpus": gpus, "topology": topology}


_CACHE: dict[str, Any] = {}


def collect_metadata() -> dict[str, Any]:
    """Everything about this process that does not change during a run (collected once)."""
    if not _CACHE:
        _CACHE.update(_collect())
    return dict(_CACHE)


def _collect() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "versions": versions(),
        "gpus": gpu_inventory(),
        "env": comm_env(),
    }
