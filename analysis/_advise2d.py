"""Choose a 2D tensor-parallel layout (`TP2D`) for heterogeneous devices (AsymGroup-style).

Devices are described by the node they sit on, a relative compute capability and memory. A
candidate layout is a `TP2D` over the devices ordered by node (row groups are consecutive runs
of that order) plus a work split: "equal" (what a symmetric framework does) or "capability"
(shares proportional to capability). Per sublayer (attention, MLP; two per layer), the model
used by `commscope.models.llama2d` runs, each phase waiting for its slowest participant:

    compute   max over devices of  C/2 * share / capability
    + max over row groups    reduce_scatter(T*h*b) on its row group
    + max over devices       sum of all_reduce(T*seg*b) over the column groups it belongs to
    + max over row groups    all_gather(T*h*b) on its row group

C is the compute time of one whole layer on a device of capability 1 (`compute_us_per_layer`,
or 2*T*params_per_layer + 4*T*context*h FLOPs at `tflops_per_capability`). A group whose devices
all sit on one node uses the "intra" cost model, any other group the "inter" one.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from ._schedule import memory_per_device_gb
from ._workload import TP2D, ModelSpec, Workload

__all__ = ["advise_tp2d", "load_devices", "TP2D_ADVICE_COLUMNS"]

TP2D_ADVICE_COLUMNS = ["rank", "rows", "cols", "symmetric", "split", "groups", "shares",
                       "predicted_layer_us", "compute_us", "comm_us", "memory_gb_max",
                       "fits_memory", "gain_vs_best_symmetric_pct", "bottleneck"]


def _check_devices(devices: list[dict]) -> list[dict]:
    if not isinstance(devices, (list, tuple)) or not devices:
        raise ValueError("devices must be a non-empty list of {node, capability, memory_gb}")
    out = []
    for i, d in enumerate(devices):
        missing = [k for k in ("node", "capability", "memory_gb") if k not in d]
        if missing:
            raise ValueError(f"device {i} lacks {', '.join(missing)} (has {sorted(d)})")
        cap, mem = float(d["capability"]), float(d["memory_gb"])
        if not cap > 0 or not mem > 0:
            raise ValueError(f"device {i}: capability and memory_gb must be > 0, got {d}")
        out.append(dict(index=i, node=str(d["node"]), capability=cap, memory_gb=mem))
    return out


def _layer_compute_us(model: ModelSpec, workload: Workload, phase: str, tflops: float) -> float:
    h = model.hidden_size
    kv = h * model.num_kv_heads // model.num_heads
    params = h * (h + 2 * kv) + h * h + 3 * h * model.intermediate_size
    if phase == "prefill":
        T, ctx = workload.prefill_tokens, workload.prompt_len / 2
    else:
        T, ctx = workload.decode_tokens, workload.prompt_len + workload.output_len / 2
    return (2 * T * params + 4 * T * ctx * h) / (tflops * 1e12) * 1e6


def _candidates(nodes: list[str]) -> list[tuple[int, ...]]:
    """Even grids over all devices, and node-aligned row groups (each node's devices split
    into equal row groups), as row-size tuples over the node-ordered devices."""
    n = len(nodes)
    out = {(c,) * (n // c) for c in range(1, n + 1) if n % c == 0}
    counts = [sum(1 for x in nodes if x == u) for u in dict.fromkeys(nodes)]
    per_node = [[(g,) * (k // g) for g in range(1, k + 1) if k % g == 0] for k in counts]
    for combo in itertools.product(*per_node):
        out.add(tuple(itertools.chain.from_iterable(combo)))
    return sorted(out, key=lambda r: (len(r), r))


def advise_tp2d(devices: list[dict], model: ModelSpec, workload: Workload,
                cost_models: dict[str, Any], *, phase: str = "decode",
                compute_us_per_layer: float | None = None,
                tflops_per_capability: float = 100.0) -> pd.DataFrame:
    """Candidate 2D TP layouts for heterogeneous `devices`, best (lowest predicted layer time
    that fits in memory) first; see the module doc for the model.

    `devices`: list of dicts with `node`, `capability` (relative compute) and `memory_gb`;
    `cost_models`: {"intra": CostModel, "inter": CostModel} (one used for both when only one is
    given). Columns: rank, rows and cols (group sizes), symmetric (even grid and equal split),
    split, groups (device indices per row group), shares (work fraction per device, in the
    order of `groups`), predicted_layer_us, compute_us, comm_us, memory_gb_max (largest
    per-device need in GB: weights + KV cache times its share), fits_memory (each need within
    90 % of its device's memory), gain_vs_best_symmetric_pct, bottleneck.
    """
    devs = _check_devices(devices)
    if phase not in ("decode", "prefill"):
        raise ValueError(f"phase must be 'decode' or 'prefill', got {phase!r}")
    if not cost_models or not set(cost_models) <= {"intra", "inter"}:
        raise ValueError(f"cost_models must map 'intra' and/or 'inter' to a CostModel, "
                         f"got keys {sorted(cost_models or {})}")
    models = {k: cost_models.get(k) or next(iter(cost_models.values()))
              for k in ("intra", "inter")}
    order = {u: i for i, u in enumerate(dict.fromkeys(d["node"] for d in devs))}
    devs = sorted(devs, key=lambda d: (order[d["node"]], d["index"]))
    nodes = [d["node"] for d in devs]
    cap = np.array([d["capability"] for d in devs])
    mem = np.array([d["memory_gb"] for d in devs])
    C = (compute_us_per_layer if compute_us_per_layer is not None
         else _layer_compute_us(model, workload, phase, tflops_per_capability))
    T = workload.decode_tokens if phase == "decode" else workload.prefill_tokens
    act = T * model.hidden_size * model.dtype_bytes
    total_gb = memory_per_device_gb(model, workload, 1, 1)
    splits = ["equal"] + (["capability"] if np.ptp(cap) > 0 else [])

    def cost(op: str, ranks: tuple[int, ...], nbytes: float) -> float:
        if len(ranks) < 2:
            return 0.0
        link = "intra" if len({nodes[r] for r in ranks}) == 1 else "inter"
        # Extrapolation warnings reach the user (the model warns once per curve).
        return float(models[link].predict(op, len(ranks), nbytes))

    rows_out = []
    for rows in _candidates(nodes):
        lay = TP2D(rows)
        groups = lay.row_ranks
        rs = [cost("reduce_scatter", g, act) for g in groups]
        ag = [cost("all_gather", g, act) for g in groups]
        ar = np.zeros(len(devs))
        for a, e, ranks in lay.segments:
            ar[list(ranks)] += cost("all_reduce", ranks, float(act * (e - a)))
        for split in splits:
            share = np.full(len(devs), 1 / len(devs)) if split == "equal" else cap / cap.sum()
            compute = C / 2 * share / cap
            sub = compute.max() + max(rs) + ar.max() + max(ag)
            need = total_gb * share
            slow = int(np.argmax(compute))
            rows_out.append(dict(
                rows=lay.rows, cols=lay.cols, split=split,
                symmetric=len(set(rows)) == 1 and split == "equal",
                groups=tuple(tuple(devs[r]["index"] for r in g) for g in groups),
                shares=tuple(float(s) for s in share), predicted_layer_us=2 * sub,
                compute_us=2 * compute.max(), comm_us=2 * (sub - compute.max()),
                memory_gb_max=float(need.max()), fits_memory=bool((need <= 0.9 * mem).all()),
                bottleneck=(f"compute on device {devs[slow]['index']} (node {nodes[slow]}); "
                            f"column all_reduce {2 * ar.max():,.1f} us on device "
                            f"{devs[int(np.argmax(ar))]['index']}; row groups "
                            f"{2 * (max(rs) + max(ag)):,.1f} us")))
    df = pd.DataFrame(rows_out)
    df = df.sort_values(["fits_memory", "predicted_layer_us", "symmetric"],
                        ascending=[False, True, False], kind="stable").reset_index(drop=True)
    sym = df[df["symmetric"] & df["fits_memory"]]
    sym = sym if len(sym) else df[df["symmetric"]]
    best_sym = float(sym["predicted_layer_us"].min()) if len(sym) else float("nan")
    df["gain_vs_best_symmetric_pct"] = (best_sym - df["predicted_layer_us"]) / best_sym * 100
    df["rank"] = np.arange(1, len(df) + 1)
    return df[TP2D_ADVICE_COLUMNS]


def load_devices(path: str) -> dict[str, Any]:
    """Read a devices file (JSON) for `advise_tp2d`: either a list of devices or an object
    {"devices": [...], "cost_models": {"intra": PATH, "inter": PATH}, "compute_us_per_layer":
    US, "tflops_per_capability": TF}; cost-model paths are relative to the file. Returns
    {"devices", "cost_models" (loaded CostModels), and the options given}. Errors name the file.
    """
    import json
    import os

    from ._costmodel import CostModel

    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the devices file ({exc})") from None
    doc = {"devices": doc} if isinstance(doc, list) else doc
    if not isinstance(doc, dict) or "devices" not in doc:
        raise ValueError(f"{path}: expected a list of devices or an object with 'devices'")
    unknown = set(doc) - {"devices", "cost_models", "compute_us_per_layer",
                          "tflops_per_capability", "comment"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    try:
        _check_devices(doc["devices"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    out = dict(doc)
    base = os.path.dirname(os.path.abspath(path))
    models = {}
    for link, p in (doc.get("cost_models") or {}).items():
        if link not in ("intra", "inter"):
            raise ValueError(f"{path}: cost_models keys are 'intra' and 'inter', got {link!r}")
        models[link] = CostModel.load(os.path.join(base, p))
    out["cost_models"] = models
    return out
