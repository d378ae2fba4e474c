"""The communication an LLM inference step must issue, compared with what was measured.

Counts are per rank, averaged over all ranks of the configuration (a send issued only by the
ranks of one pipeline stage counts (p-1)/p per rank), per prefill for phase `prefill` and per
generated token for phase `decode`. Bytes are the nccl-tests size S. Notation: T tokens in the
step (prefill: batch x prompt_len; decode: batch), h hidden size, b bytes per element, V vocab,
L layers, t = TP size, p = PP size.

- TP (Megatron column -> row parallel): 2 all_reduce of T*h*b per layer; a vocab-parallel
  embedding adds one all_reduce of T*h*b (first stage); vocab-sharded logits add an all_gather
  of batch*V*b (last stage, sampled positions only).
- Sequence parallelism: each all_reduce becomes a reduce_scatter + an all_gather of T*h*b.
- PP: p-1 stage boundaries per forward; each TP rank of a stage sends the activations T*h*b to
  its peer in the next stage (`pp_sends="hidden"`); vLLM-style `"hidden+residual"` sends 2*T*h*b;
  `pp_tp_split=True` sends T*h*b/t per TP rank and all_gathers T*h*b on the receiver; the last
  stage returns the sampled token ids (batch x 8 bytes) to the first (`pp_token_return`).
- 2D TP (`TP2D`: row groups, hidden segments owned by column groups; see its docstring): per
  layer and sublayer (attention, MLP) each row group of s > 1 ranks runs a reduce_scatter and an
  all_gather of T*h*b; each hidden segment [a, e) runs an all_reduce of T*(e-a)*h*b in its
  column group (one rank per row group, when there are > 1 row groups). Embedding and LM head
  are replicated (no communication), as in `commscope.models.llama2d`.
- EP (MoE layers): a dispatch and a combine all_to_all, each rank sending T*k*h*b*(e-1)/e.
- DP: nothing per token.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._bandwidth import bandwidth
from ._matching import row_waits
from ._workload import ModelSpec, ParallelConfig, Workload

__all__ = ["predict_schedule", "compare", "advise", "SCHEDULE_COLUMNS"]

SCHEDULE_COLUMNS = ["phase", "op", "pg_dim", "pg_size", "bytes", "count", "predicted_us",
                    "predicted_us_per_call", "what"]


def _rows(model: ModelSpec, T: int, sampled: int, cfg: ParallelConfig, pp_sends: str,
          pp_tp_split: bool, pp_token_return: bool) -> list[tuple]:
    h, b, L = model.hidden_size, model.dtype_bytes, model.num_layers
    t, p = cfg.tp, cfg.pp
    act = T * h * b
    rows: list[tuple] = []  # (op, pg_dim, pg_size, bytes, count_per_rank, what)
    if cfg.tp2d is not None:
        rows.extend(_tp2d_rows(cfg.tp2d, T, h, b, 2 * L / p))
    elif t > 1:
        if cfg.sequence_parallel:
            rows.append(("reduce_scatter", "tp", t, act, 2 * L / p,
                         "SP: reduce-scatter after attention and MLP"))
            rows.append(("all_gather", "tp", t, act, 2 * L / p,
                         "SP: all-gather before attention and MLP"))
        else:
            rows.append(("all_reduce", "tp", t, act, 2 * L / p,
                         "TP: row-parallel attention output and MLP down projection"))
        rows.append(("all_reduce", "tp", t, act, 1 / p, "TP: vocab-parallel embedding"))
        rows.append(("all_gather", "tp", t, sampled * model.vocab_size * b, 1 / p,
                     "TP: vocab-sharded logits of the sampled positions"))
    if p > 1:
        mult = 2 if pp_sends == "hidden+residual" else 1
        tp_ranks = cfg.tp_size
        nbytes = mult * act // (tp_ranks if pp_tp_split and tp_ranks > 1 else 1)
        per_rank = (p - 1) / p
        rows.append(("send", "pp", 2, nbytes, per_rank, "PP: activations to the next stage"))
        rows.append(("recv", "pp", 2, nbytes, per_rank, "PP: activations from the previous stage"))
        if pp_tp_split and tp_ranks > 1:
            rows.append(("all_gather", "tp", tp_ranks, mult * act, per_rank,
                         "PP+TP: re-assemble the split activations"))
        if pp_token_return:
            rows.append(("send", "pp", 2, sampled * 8, 1 / p,
                         "PP: sampled token ids (int64) back to the first stage"))
            rows.append(("recv", "pp", 2, sampled * 8, 1 / p,
                         "PP: sampled token ids from the last stage"))
    if cfg.ep > 1 and model.num_experts:
        e, k = cfg.ep, model.experts_per_token
        a2a = int(T * k * h * b * (e - 1) / e)
        n_moe = model.moe_layers / p
        rows.append(("all_to_all", "ep", e, a2a, n_moe, "EP: dispatch tokens to experts"))
        rows.append(("all_to_all", "ep", e, a2a, n_moe, "EP: combine expert outputs"))
    return rows


def _tp2d_rows(g: Any, T: int, h: int, b: int, sublayers: float) -> list[tuple]:
    """Per sublayer: reduce_scatter and all_gather of T*h*b in each row group (of > 1 rank), and
    an all_reduce of each hidden segment (T*len*b) in its column group (of > 1 rank). Counts are
    per rank, averaged over the g.size ranks."""
    out: list[tuple] = []
    n = g.size
    for size in sorted({s for s in g.rows if s > 1}):
        share = sum(s for s in g.rows if s == size) / n  # ranks in row groups of this size
        out.append(("reduce_scatter", "tp_row", size, T * h * b, sublayers * share,
                    "2D TP: reduce-scatter partial sums over the hidden dim in the row group"))
        out.append(("all_gather", "tp_row", size, T * h * b, sublayers * share,
                    "2D TP: all-gather the reduced hidden slices in the row group"))
    r = len(g.rows)
    if r > 1:
        for a, e, _ in g.segments:
            seg = int(e * h) - int(a * h)  # floor boundaries, as TP2D.hidden_slice
            out.append(("all_reduce", "tp_col", r, T * seg * b, sublayers * r / n,
                        "2D TP: all-reduce a hidden segment across row groups (column group)"))
    return out


def predict_schedule(model: ModelSpec, workload: Workload, config: ParallelConfig,
                     cost_model: Any = None, *, pp_sends: str = "hidden",
                     pp_tp_split: bool = False, pp_token_return: bool = True) -> pd.DataFrame:
    """Collectives per rank of one prefill and of one decode step (see module doc).

    Columns: phase, op, pg_dim, pg_size, bytes, count (per rank), predicted_us (count x
    per-call time from `cost_model`, NaN without one), predicted_us_per_call, what.
    """
    if pp_sends not in ("hidden", "hidden+residual"):
        raise ValueError("pp_sends must be 'hidden' or 'hidden+residual'")
    out = []
    for phase, T in (("prefill", workload.prefill_tokens), ("decode", workload.decode_tokens)):
        for op, dim, size, nbytes, count, what in _rows(model, T, workload.batch, config,
                                                        pp_sends, pp_tp_split, pp_token_return):
            per_call = _predict(cost_model, op, size, nbytes)
            out.append((phase, op, dim, int(size), int(nbytes), float(count),
                        per_call * count, per_call, what))
    df = pd.DataFrame(out, columns=SCHEDULE_COLUMNS)
    # Same collective from several sources (embedding + layers): one row.
    agg = df.groupby(["phase", "op", "pg_dim", "pg_size", "bytes"], sort=False).agg(
        count=("count", "sum"), predicted_us=("predicted_us", lambda s: s.sum(min_count=1)),
        predicted_us_per_call=("predicted_us_per_call", "first"),
        what=("what", lambda s: "; ".join(dict.fromkeys(s))))
    return agg.reset_index()[SCHEDULE_COLUMNS]


def _predict(cost_model: Any, op: str, size: int, nbytes: int) -> float:
    if cost_model is None:
        return float("nan")
    # CostModelWarnings (extrapolated sizes, unmeasured group sizes) reach the caller: the
    # model warns once per curve, so a schedule does not flood.
    try:
        return float(cost_model.predict(op, size, nbytes))
    except KeyError:
        if op in ("send", "recv"):
            # A recv is the other end of a send (traces often calibrate only one side); with no
            # point-to-point curve at all, a 2-rank all_gather of 2S moves S each way.
            other = "send" if op == "recv" else "recv"
            for fallback in ((other, 2, nbytes), ("all_gather", 2, 2 * nbytes)):
                try:
                    return float(cost_model.predict(*fallback))
                except KeyError:
                    pass
        return float("nan")


def compare(events: pd.DataFrame, model: ModelSpec, workload: Workload,
            config: ParallelConfig, cost_model: Any = None, **options: Any) -> pd.DataFrame:
    """Predicted vs measured per (phase, op, pg_dim, bytes).

    Measured counts and times are per rank (total over ranks / world size), decode ones per
    decode step (the trace's distinct `step` values in phase `decode`). measured_us is the time
    in the calls minus the time spent waiting for the last participant (what the cost model
    predicts); measured_wait_us is that wait. Columns: phase, op, pg_dim, bytes,
    predicted_count, measured_count, count_error, predicted_us, measured_us, time_error
    (relative), measured_wait_us, time_basis ('device' | 'host' | 'mixed': which clock timed
    the measured calls), status ('matched', 'measured only', 'predicted only').
    """
    pred = predict_schedule(model, workload, config, cost_model, **options)
    ev = events[events["phase"].isin(["prefill", "decode"])].copy()
    world = max(int(events["rank"].nunique()), 1)
    steps = ev.loc[ev["phase"] == "decode", "step"].nunique() or 1
    # The cost model predicts the transfer itself, so the measured time excludes waiting for
    # the last participant to arrive (reported separately as measured_wait_us).
    wait = row_waits(events).loc[ev.index].astype("float64").fillna(0)
    ev["wait_us"] = wait / 1e3
    # Same time basis as the waits: device time where the rows have it, host time otherwise.
    timed = bandwidth(ev)
    ev["duration_us"] = timed["duration_ns"].astype("float64") / 1e3 - ev["wait_us"]
    ev["time_basis"] = timed["time_basis"]
    ev["pg_dim"] = ev["pg_dim"].fillna("(unlabelled)")
    meas = ev.groupby(["phase", "op", "pg_dim", "bytes"]).agg(
        measured_count=("op", "size"), measured_us=("duration_us", "sum"),
        measured_wait_us=("wait_us", "sum"),
        time_basis=("time_basis", lambda b: b.iloc[0] if b.nunique() == 1 else "mixed"),
    ).reset_index()
    norm = np.where(meas["phase"] == "decode", world * steps, world)
    for c in ("measured_count", "measured_us", "measured_wait_us"):
        meas[c] = meas[c] / norm
    p = pred.rename(columns={"count": "predicted_count"})[
        ["phase", "op", "pg_dim", "bytes", "predicted_count", "predicted_us", "what"]]
    m = p.merge(meas, on=["phase", "op", "pg_dim", "bytes"], how="outer", indicator=True)
    m["status"] = m["_merge"].map({"both": "matched", "left_only": "predicted only",
                                   "right_only": "measured only"}).astype(str)
    m["count_error"] = m["measured_count"].fillna(0) - m["predicted_count"].fillna(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m["time_error"] = (m["predicted_us"] - m["measured_us"]) / m["measured_us"]
    cols = ["phase", "op", "pg_dim", "bytes", "predicted_count", "measured_count", "count_error",
            "predicted_us", "measured_us", "time_error", "measured_wait_us", "time_basis", "status",
            "what"]
    return m[cols].sort_values(["phase", "status", "op", "bytes"]).reset_index(drop=True)


def memory_per_device_gb(model: ModelSpec, workload: Workload, tp: int, pp: int) -> float:
    """Weights plus KV cache per device (GB), model sharded over tp x pp."""
    h, L, b = model.hidden_size, model.num_layers, model.dtype_bytes
    kv_dim = h * model.num_kv_heads // model.num_heads
    attn = h * (h + 2 * kv_dim) + h * h
    if model.num_experts:
        moe_ffn = 3 * h * model.moe_intermediate_size * model.num_experts
        mlp = (model.first_dense_layers * 3 * h * model.intermediate_size
               + model.moe_layers * moe_ffn) / L
    else:
        mlp = 3 * h * model.intermediate_size
    params = L * (attn + mlp) + 2 * model.vocab_size * h
    kv = 2 * L * kv_dim * b * workload.batch * (workload.prompt_len + workload.output_len)
    return (params * b + kv) / (tp * pp) / 1e9


def _valid(model: ModelSpec, tp: int, pp: int, ep: int) -> str | None:
    if model.num_heads % tp:
        return f"{model.num_heads} heads not divisible by TP={tp}"
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        return f"{model.num_kv_heads} KV heads neither divisible by nor dividing TP={tp}"
    if model.num_layers % pp:
        return f"{model.num_layers} layers not divisible by PP={pp}"
    if ep > 1 and (not model.num_experts or model.num_experts % ep):
        return f"{model.num_experts} experts not divisible by EP={ep}"
    return None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def advise(devices: int, model: ModelSpec, workload: Workload, cost_model: Any = None, *,
           max_pp: int | None = None, sequence_parallel: bool = False,
           device_memory_gb: float = 80.0) -> pd.DataFrame:
    """Valid (TP, PP, DP[, EP]) configurations for `devices`, ranked by predicted communication
    time per decoded token, then per prefill, then volume, each with a one-sentence trade-off.

    Columns: config, tp, pp, dp, ep, decode_us_per_token, prefill_us, decode_bytes_per_token,
    prefill_bytes, memory_gb (weights + KV cache per device), rank, why. Invalid configurations
    (divisibility, or not fitting `device_memory_gb` with 10 % headroom) are listed last with
    the reason; expert weights are counted unsharded by EP (conservative).
    """
    rows = []
    for tp in _divisors(devices):
        for pp in _divisors(devices // tp):
            if max_pp and pp > max_pp:
                continue
            dp = devices // (tp * pp)
            eps = [1] + ([e for e in _divisors(tp * dp) if e > 1 and model.num_experts
                          and model.num_experts % e == 0] if model.num_experts else [])
            for ep in eps:
                cfg = ParallelConfig(tp=tp, pp=pp, dp=dp, ep=ep,
                                     sequence_parallel=sequence_parallel and tp > 1)
                why_not = _valid(model, tp, pp, ep)
                mem = memory_per_device_gb(model, workload, tp, pp)
                if why_not is None and mem > 0.9 * device_memory_gb:
                    why_not = (f"needs {mem:.0f} GB per device (weights + KV cache) of "
                               f"{device_memory_gb:.0f} GB")
                if why_not:
                    rows.append(dict(config=cfg.label(), tp=tp, pp=pp, dp=dp, ep=ep,
                                     valid=False, memory_gb=mem, why=why_not))
                    continue
                s = predict_schedule(model, workload, cfg, cost_model)
                vol = s["bytes"] * s["count"]
                rows.append(dict(
                    config=cfg.label(), tp=tp, pp=pp, dp=dp, ep=ep, valid=True, memory_gb=mem,
                    decode_us_per_token=_total(s, "decode"),
                    prefill_us=_total(s, "prefill"),
                    decode_bytes_per_token=float(vol[s["phase"] == "decode"].sum()),
                    prefill_bytes=float(vol[s["phase"] == "prefill"].sum())))
    df = pd.DataFrame(rows)
    if "decode_us_per_token" not in df:
        df["decode_us_per_token"] = df["prefill_us"] = df["decode_bytes_per_token"] = np.nan
    ok = df[df["valid"]].sort_values(["decode_us_per_token", "prefill_us",
                                      "decode_bytes_per_token"]).reset_index(drop=True)
    ok["rank"] = pd.array(np.arange(1, len(ok) + 1), dtype="Int64")
    best = ok.iloc[0] if len(ok) else None
    ok["why"] = [_explain(r, best) for r in ok.to_dict("records")]
    bad = df[~df["valid"]]
    cols = ["rank", "config", "tp", "pp", "dp", "ep", "decode_us_per_token", "prefill_us",
            "decode_bytes_per_token", "prefill_bytes", "memory_gb", "why"]
    return pd.concat([ok, bad], ignore_index=True).reindex(columns=cols)


def _total(schedule: pd.DataFrame, phase: str) -> float:
    """Predicted time of a phase: 0 with nothing to send, NaN when some call is not predicted."""
    t = schedule.loc[schedule["phase"] == phase, "predicted_us"]
    return 0.0 if t.empty else float(t.sum(min_count=len(t)))


def _fmt_bytes(v: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


def _explain(r: dict, best: Any) -> str:
    dec, vol = r["decode_us_per_token"], r["decode_bytes_per_token"]
    parts = []
    if r["tp"] > 1:
        parts.append(f"TP={r['tp']} puts 2 all_reduce per layer on every token's critical path")
    if r["pp"] > 1:
        parts.append(f"PP={r['pp']} only sends activations between {r['pp'] - 1} stage "
                     f"boundaries but adds pipeline latency (bubbles, not modelled here)")
    if r["ep"] > 1:
        parts.append(f"EP={r['ep']} adds 2 all_to_all per MoE layer")
    if r["dp"] > 1:
        parts.append(f"DP={r['dp']} replicates the model: no per-token communication, "
                     f"but each replica must fit its share")
    head = "; ".join(parts) or "one device: no communication"
    t = f"{dec:,.0f} us/token" if dec == dec else "time not predicted (no cost model)"
    rel = ""
    if best is not None and dec == dec and best["decode_us_per_token"] > 0 and r["rank"] != 1:
        rel = f", {dec / best['decode_us_per_token']:.1f}x the best"
    return f"{head} — {t}{rel}, {_fmt_bytes(vol)} per token per rank."

