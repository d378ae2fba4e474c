"""The Llama decoder of `commscope.models.llama` with 2D tensor parallelism (AsymGroup-style).

Ranks form a `TP2D` layout: row groups of possibly different sizes (e.g. one per node), each
splitting the hidden dimension evenly among its members, and column groups, one per hidden
segment, holding the segment's owner in every row group (see `analysis.TP2D`). Per layer:

- Work is split over all ranks by `split` weights (default equal; e.g. device capability):
  each rank computes a share of the attention heads and of the MLP columns, giving a partial
  sum of the sublayer output (B x T x h).
- The partial sums are reduced in two dimensions: reduce_scatter of the hidden dimension in the
  row group (`tp_row`), all_reduce of each owned hidden segment in its column group (`tp_col`),
  all_gather of the reduced slices in the row group. Row or column groups of one rank skip
  their step.
- Embedding and LM head are replicated (no communication), so every rank samples the tokens.

Same seeded weights as `llama`, so every layout generates the single-process tokens.
`delay_us` emulates a slower device: the rank sleeps that long per layer (half per sublayer).

    python -m commscope.models.llama2d --rows 2,1 --split 2,2,1 --out traces  # 3 gloo ranks
    commscope compare traces/llama2d_rows2-1 --model traces/llama2d_rows2-1/config.json \
        --batch 2 --prompt 16 --output 8 --tp2d-rows 2,1 --tp2d-cols 2,2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from commscope import profiler
from commscope.analysis import TP2D
from commscope.models.llama import Config, Model, _free_port

__all__ = ["Grid", "Model2D", "generate", "run", "proportional_split", "hf_config"]


def proportional_split(total: int, weights: list[float]) -> list[int]:
    """Integer shares of `total` proportional to `weights` (largest remainder, ties to the
    lower index); they sum to `total`."""
    w = torch.tensor(weights, dtype=torch.float64)
    if len(weights) == 0 or (w <= 0).any():
        raise ValueError(f"split weights must be positive, got {weights}")
    exact = total * w / w.sum()
    base = exact.floor().to(torch.int64)
    left = total - int(base.sum())
    order = sorted(range(len(weights)), key=lambda i: (-(float(exact[i] - base[i])), i))
    for i in order[:left]:
        base[i] += 1
    return base.tolist()


class Grid:
    """This rank's place in a `TP2D` layout and its row / column process groups."""

    def __init__(self, layout: TP2D, hidden: int) -> None:
        self.layout = layout
        self.enabled = dist.is_initialized() and layout.size > 1
        self.rank = dist.get_rank() if self.enabled else 0
        bad = [n for n in layout.rows if hidden % n]
        if bad:
            raise ValueError(f"hidden size {hidden} is not divisible by row groups of {bad}")
        self.slice = layout.hidden_slice(self.rank, hidden)
        self.row_group = None
        self.col_groups: list[tuple[int, int, object]] = []  # (start, end, group), absolute
        if not self.enabled:
            return
        # Every rank creates every group, in the same order (new_group is collective).
        for ranks in layout.row_ranks:
            if len(ranks) > 1:
                g = dist.new_group(list(ranks))
                if self.rank in ranks:
                    self.row_group = profiler.label_group(g, "tp_row")
        if len(layout.rows) > 1:
            for a, e, ranks in layout.segments:
                g = dist.new_group(list(ranks))
                if self.rank in ranks:
                    self.col_groups.append((int(a * hidden), int(e * hidden),
                                            profiler.label_group(g, "tp_col")))

    def reduce(self, part: torch.Tensor) -> torch.Tensor:
        """Sum of every rank's partial (B x T x h), on every rank, through row and column groups."""
        if not self.enabled:
            return part
        B, T, h = part.shape
        flat = part.reshape(-1, h).t().contiguous()  # h x tokens: hidden slices are row blocks
        lo, hi = self.slice
        if self.row_group is not None:
            mine = torch.empty(hi - lo, flat.shape[1], dtype=flat.dtype, device=flat.device)
            dist.reduce_scatter_single(mine, flat, group=self.row_group)
        else:
            mine = flat
        for a, e, group in self.col_groups:  # segments in global order on every rank
            seg = mine[a - lo:e - lo].contiguous()
            dist.all_reduce(seg, group=group)
            mine[a - lo:e - lo] = seg
        if self.row_group is not None:
            full = torch.empty_like(flat)
            dist.all_gather_single(full, mine, group=self.row_group)
        else:
            full = mine
        return full.t().reshape(B, T, h)


class Model2D(Model):
    """Weights generated whole from the seed (as `llama.Model`), then this rank's work share."""

    def __init__(self, cfg: Config, grid: Grid, dtype: torch.dtype,
                 split: list[float] | None = None, delay_us: float = 0.0) -> None:
        self.cfg, self.grid, self.dtype, self.delay_us = cfg, grid, dtype, delay_us
        n, r = grid.layout.size, grid.rank
        split = split or [1.0] * n
        if len(split) != n:
            raise ValueError(f"split has {len(split)} weights for {n} ranks")
        g = torch.Generator().manual_seed(cfg.seed)
        h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
        hd = h // cfg.num_heads

        def rnd(*shape: int) -> torch.Tensor:  # same draws, same order as llama.Model
            w = torch.randn(*shape, generator=g, dtype=torch.float64, device="cpu")
            return (w / shape[0] ** 0.5).to(dtype)

        def span(total: int) -> tuple[int, int]:
            counts = proportional_split(total, split)
            return sum(counts[:r]), sum(counts[:r + 1])

        h0, h1 = span(cfg.num_heads)
        f0, f1 = span(f)
        self.work_share = (f1 - f0) / f
        rep = cfg.num_heads // cfg.num_kv_heads
        kv0, kv1 = h0 // rep, -(-h1 // rep)  # the KV heads this rank's query heads read
        self.q_kv = [q // rep - kv0 for q in range(h0, h1)]
        self.embed, self.lm_head = rnd(v, h) * v ** 0.5 / 4, rnd(h, v)
        self.vocab_start = 0
        self.final_norm = torch.ones(h, dtype=dtype)
        self.layers = []
        for _ in range(cfg.num_layers):
            ws = {"q": rnd(h, h), "k": rnd(h, cfg.num_kv_heads * hd),
                  "v": rnd(h, cfg.num_kv_heads * hd), "o": rnd(h, h), "gate": rnd(h, f),
                  "up": rnd(h, f), "down": rnd(f, h)}
            self.layers.append({
                "q": ws["q"][:, h0 * hd:h1 * hd].contiguous(),
                "k": ws["k"][:, kv0 * hd:kv1 * hd].contiguous(),
                "v": ws["v"][:, kv0 * hd:kv1 * hd].contiguous(),
                "o": ws["o"][h0 * hd:h1 * hd].contiguous(),
                "gate": ws["gate"][:, f0:f1].contiguous(), "up": ws["up"][:, f0:f1].contiguous(),
                "down": ws["down"][f0:f1].contiguous(),
                "attn_norm": torch.ones(h, dtype=dtype), "mlp_norm": torch.ones(h, dtype=dtype)})
        self.heads, self.kv_heads, self.head_dim = h1 - h0, kv1 - kv0, hd
        self.inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.layer_ns: list[int] = []

    def _compute_delay(self) -> None:
        if self.delay_us > 0:  # emulated slower device: half the layer's delay per sublayer
            time.sleep(self.delay_us / 2e6)

    def layer(self, idx: int, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        w = self.layers[idx]
        B, T, h = x.shape
        hn = self.rms(x, w["attn_norm"])
        if self.heads:
            q = self.rope((hn @ w["q"]).view(B, T, self.heads, self.head_dim), pos)
            k = self.rope((hn @ w["k"]).view(B, T, self.kv_heads, self.head_dim), pos)
            v = (hn @ w["v"]).view(B, T, self.kv_heads, self.head_dim)
            k, v = self.cached_kv(idx, k, v)
            sel = torch.tensor(self.q_kv)
            kk, vv = k[:, :, sel].transpose(1, 2), v[:, :, sel].transpose(1, 2)
            att = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, is_causal=T > 1)
            part = att.transpose(1, 2).reshape(B, T, -1) @ w["o"]
        else:  # no heads on this rank: it still takes part in the reduction
            part = torch.zeros(B, T, h, dtype=x.dtype)
        self._compute_delay()
        x = x + self.grid.reduce(part)
        hn = self.rms(x, w["mlp_norm"])
        mlp = (F.silu(hn @ w["gate"]) * (hn @ w["up"])) @ w["down"]
        self._compute_delay()
        return x + self.grid.reduce(mlp)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One step over `ids` (B x T); the next tokens (every rank samples them)."""
        x = self.embed[ids]
        for i in range(len(self.layers)):
            start = time.perf_counter_ns()
            x = self.layer(i, x, pos)
            self.layer_ns.append(time.perf_counter_ns() - start)
        return (self.rms(x[:, -1], self.final_norm) @ self.lm_head).argmax(-1)


def generate(model: Model2D, batch: int, prompt_len: int, output_len: int) -> list[list[int]]:
    """Greedy generation (same prompts as `llama.generate`); phases prefill / decode."""
    g = torch.Generator().manual_seed(model.cfg.seed + 1)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), generator=g, device="cpu")
    with profiler.phase("prefill"):
        tok = model.forward(ids, torch.arange(prompt_len))
    out = [tok]
    for step in range(output_len - 1):
        with profiler.phase("decode", step=step):
            tok = model.forward(tok[:, None], torch.tensor([prompt_len + step]))
        out.append(tok)
    return torch.stack(out, 1).tolist()


def hf_config(cfg: Config, dtype: str) -> dict:
    """The model as a Hugging Face-style config.json (`ModelSpec.from_hf_config` reads it)."""
    return {"model_type": "tiny-llama", "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size, "torch_dtype": dtype}


def _rank_main(rank: int, world: int, port: int, a: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # One intra-op thread per rank: several ranks share the host's cores, and spinning
    # OpenMP threads of one rank would steal them from the others.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg, dtype = Config(**a["model"]), getattr(torch, a["dtype"])
    layout = TP2D(tuple(a["rows"]))
    delays = a["delays_us"] or [0.0] * world
    # Groups before the session (as llama.py): new_group is a collective of its own.
    grid = Grid(layout, cfg.hidden_size)
    model = Model2D(cfg, grid, dtype, a["split"], delays[rank])
    with profiler.trace(a["out"], run_name=a["run_name"],
                        tags={"example": "llama2d", "rows": list(layout.rows),
                              "cols": list(layout.cols)}) as s:
        tokens = generate(model, a["batch"], a["prompt"], a["output"])
    per_rank = [None] * world if rank == 0 else None
    dist.gather_object({"layer_ns": model.layer_ns, "work_share": model.work_share,
                        "delay_us": delays[rank]}, per_rank, dst=0)  # after the session
    if rank == 0:
        with open(os.path.join(s.run_dir, "tokens.json"), "w") as fh:
            json.dump(tokens, fh)
        with open(os.path.join(s.run_dir, "config.json"), "w") as fh:  # for `commscope compare`
            json.dump(hf_config(cfg, a["dtype"]), fh, indent=1)
        with open(os.path.join(s.run_dir, "layers.json"), "w") as fh:
            json.dump({"clock": "time.perf_counter_ns", "layers": cfg.num_layers,
                       "ranks": per_rank}, fh)
    dist.destroy_process_group()


def run(rows: tuple[int, ...], *, out: str = "traces", run_name: str | None = None,
        batch: int = 2, prompt: int = 16, output: int = 8, dtype: str = "float64",
        model: Config | None = None, split: list[float] | None = None,
        delays_us: list[float] | None = None) -> tuple[str | None, list[list[int]]]:
    """Run the layout TP2D(rows) on sum(rows) spawned gloo ranks; returns (run_dir, tokens).

    `split`: per-rank work weights (default equal); `delays_us`: per-rank emulated compute delay
    per layer. run_dir/layers.json holds each rank's per-layer wall times, run_dir/config.json
    the model (for `commscope compare --model`)."""
    cfg = model or Config()
    layout = TP2D(tuple(rows))
    n = layout.size
    for name, v in (("split", split), ("delays_us", delays_us)):
        if v is not None and len(v) != n:
            raise ValueError(f"{name} has {len(v)} values for {n} ranks")
    if n == 1:
        m = Model2D(cfg, Grid(layout, cfg.hidden_size), getattr(torch, dtype))
        return None, generate(m, batch, prompt, output)
    name = run_name or "llama2d_rows" + "-".join(map(str, layout.rows))
    args = dict(rows=list(layout.rows), out=out, run_name=name, batch=batch, prompt=prompt,
                output=output, dtype=dtype, model=asdict(cfg), split=split, delays_us=delays_us)
    os.makedirs(out, exist_ok=True)
    before = set(os.listdir(out))
    mp.spawn(_rank_main, nprocs=n, args=(n, _free_port(), args))
    # A reused name gets a suffix (the profiler decides): read the folder actually created.
    created = sorted(set(os.listdir(out)) - before)
    run_dir = os.path.join(os.path.abspath(out), created[0] if created else name)
    with open(os.path.join(run_dir, "tokens.json")) as fh:
        return run_dir, json.load(fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="2,2", help="row group sizes, e.g. 2,2 or 2,1")
    ap.add_argument("--split", help="per-rank work weights, e.g. 2,2,1 (default equal)")
    ap.add_argument("--out", default="traces")
    ap.add_argument("--run-name")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--output", type=int, default=8)
    a = ap.parse_args()
    rows = tuple(int(x) for x in a.rows.split(","))
    split = [float(x) for x in a.split.split(",")] if a.split else None
    run_dir, tokens = run(rows, out=a.out, run_name=a.run_name, batch=a.batch, prompt=a.prompt,
                          output=a.output, split=split)
    print(f"tokens: {tokens}")
    if run_dir:
        print(f"trace: {run_dir}")


if __name__ == "__main__":
    main()
