"""A small Llama-architecture decoder with real tensor and pipeline parallelism over torch.distributed.

RMSNorm, rotary embeddings, grouped-query attention with a KV cache, SwiGLU MLP, greedy decoding;
random weights from a fixed seed, so every configuration generates the same tokens as the
single-process run. Parallelism (rank = stage * tp + tp_index):

- TP: column-parallel q/k/v and gate/up projections, row-parallel o/down projections (one
  all_reduce each), vocab-parallel embedding (all_reduce) and vocab-sharded logits (all_gather
  of the sampled positions).
- PP: layers split into stages; each stage sends its activations to the next with send/recv;
  the last stage sends the sampled tokens back to the first.

    python -m commscope.models.llama --tp 2 --pp 2 --out traces   # spawns 4 gloo ranks
    python -m commscope.models.llama                             # single process reference

`run_prompts` runs several prompt lengths in one set of spawned ranks (one trace each, after an
untraced warm-up) and returns each run's wall-clock timings (time to first token, per step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.multiprocessing.spawn import ProcessException

from commscope import profiler


@dataclass(frozen=True)
class Config:
    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    rope_theta: float = 10000.0
    eps: float = 1e-5
    seed: int = 0

    def spec(self, dtype_bytes: int):
        """The same model as an `analysis.ModelSpec` (for predictions)."""
        from commscope.analysis import ModelSpec

        return ModelSpec("tiny-llama", self.hidden_size, self.num_layers, self.num_heads,
                         self.num_kv_heads, self.intermediate_size, self.vocab_size,
                         dtype_bytes=dtype_bytes)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a torch dtype name as `run` takes it ("float64" -> 8)."""
    return getattr(torch, dtype).itemsize


class Parallel:
    """This rank's place in the TP x PP grid and its process groups (None: single process)."""

    def __init__(self, tp: int, pp: int) -> None:
        self.tp, self.pp = tp, pp
        self.enabled = dist.is_initialized() and tp * pp > 1
        rank = dist.get_rank() if self.enabled else 0
        self.rank = rank
        self.stage, self.tp_rank = divmod(rank, tp)
        self.tp_group = self.pp_group = None
        if self.enabled:
            # Every rank creates every group (new_group is collective).
            for s in range(pp):
                g = dist.new_group([s * tp + i for i in range(tp)])
                if s == self.stage:
                    self.tp_group = profiler.label_group(g, "tp")
            for i in range(tp):
                g = dist.new_group([s * tp + i for s in range(pp)])
                if i == self.tp_rank:
                    self.pp_group = profiler.label_group(g, "pp")

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.pp - 1

    def peer(self, stage: int) -> int:
        return stage * self.tp + self.tp_rank

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp > 1:
            dist.all_reduce(x, group=self.tp_group)
        return x


def _shard(w: torch.Tensor, n: int, i: int, dim: int) -> torch.Tensor:
    return w.chunk(n, dim=dim)[i].contiguous()


class Model:
    """Weights are generated whole from the seed on every rank, then sharded."""

    def __init__(self, cfg: Config, par: Parallel, dtype: torch.dtype) -> None:
        self.cfg, self.par, self.dtype = cfg, par, dtype
        g = torch.Generator().manual_seed(cfg.seed)
        h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
        hd = h // cfg.num_heads
        t, i = par.tp, par.tp_rank

        dev = torch.get_default_device()

        def rnd(*shape: int) -> torch.Tensor:
            # Generated on the CPU (the seeded generator's device), so every backend and device
            # gets the same weights.
            w = torch.randn(*shape, generator=g, dtype=torch.float64, device="cpu")
            return (w / shape[0] ** 0.5).to(dtype=dtype, device=dev)

        emb, head = rnd(v, h) * v ** 0.5 / 4, rnd(h, v)
        self.embed = _shard(emb, t, i, 0)            # vocab-parallel rows
        self.vocab_start = i * (v // t)
        self.lm_head = _shard(head, t, i, 1)         # vocab-sharded logits
        self.final_norm = torch.ones(h, dtype=dtype)
        per_stage = cfg.num_layers // par.pp
        self.layers = []
        for layer in range(cfg.num_layers):
            ws = {"q": rnd(h, h), "k": rnd(h, cfg.num_kv_heads * hd),
                  "v": rnd(h, cfg.num_kv_heads * hd), "o": rnd(h, h), "gate": rnd(h, f),
                  "up": rnd(h, f), "down": rnd(f, h)}
            if layer // per_stage != par.stage:
                continue
            self.layers.append({
                "q": _shard(ws["q"], t, i, 1), "k": _shard(ws["k"], t, i, 1),
                "v": _shard(ws["v"], t, i, 1), "o": _shard(ws["o"], t, i, 0),
                "gate": _shard(ws["gate"], t, i, 1), "up": _shard(ws["up"], t, i, 1),
                "down": _shard(ws["down"], t, i, 0),
                "attn_norm": torch.ones(h, dtype=dtype), "mlp_norm": torch.ones(h, dtype=dtype)})
        self.heads = cfg.num_heads // t
        self.kv_heads = cfg.num_kv_heads // t
        self.head_dim = hd
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        self.inv_freq = inv
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.cfg.eps) * w

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate (B, T, heads, head_dim) by positions `pos` (T,)."""
        ang = pos[:, None].to(torch.float64) * self.inv_freq[None, :]
        cos = ang.cos().to(x.dtype)[None, :, None, :]
        sin = ang.sin().to(x.dtype)[None, :, None, :]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.vocab_start
        mask = (local >= 0) & (local < self.embed.shape[0])
        x = self.embed[local.clamp(0, self.embed.shape[0] - 1)] * mask[..., None]
        return self.par.all_reduce(x)

    def cached_kv(self, idx: int, k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `idx`'s keys and values so far: the cache extended by this step's (B, T, ...)."""
        if len(self.cache) > idx:
            pk, pv = self.cache[idx]
            k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
            self.cache[idx] = (k, v)
        else:
            self.cache.append((k, v))
        return k, v

    def layer(self, idx: int, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        w = self.layers[idx]
        B, T, _ = x.shape
        hn = self.rms(x, w["attn_norm"])
        q = (hn @ w["q"]).view(B, T, self.heads, self.head_dim)
        k = (hn @ w["k"]).view(B, T, self.kv_heads, self.head_dim)
        v = (hn @ w["v"]).view(B, T, self.kv_heads, self.head_dim)
        q, k = self.rope(q, pos), self.rope(k, pos)
        k, v = self.cached_kv(idx, k, v)
        rep = self.heads // self.kv_heads
        kk = k.repeat_interleave(rep, dim=2).transpose(1, 2)
        vv = v.repeat_interleave(rep, dim=2).transpose(1, 2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, is_causal=T > 1)
        x = x + self.par.all_reduce(att.transpose(1, 2).reshape(B, T, -1) @ w["o"])
        hn = self.rms(x, w["mlp_norm"])
        mlp = (F.silu(hn @ w["gate"]) * (hn @ w["up"])) @ w["down"]
        return x + self.par.all_reduce(mlp)

    def next_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Greedy tokens from the last position's hidden state (last stage)."""
        local = self.rms(x[:, -1], self.final_norm) @ self.lm_head   # B x V/t
        if self.par.tp > 1:
            full = torch.empty(self.par.tp * local.numel(), dtype=local.dtype)
            # all_gather_single: all_gather_into_tensor is deprecated (FutureWarning).
            dist.all_gather_single(full, local.contiguous().view(-1), group=self.par.tp_group)
            local = torch.cat(full.view(self.par.tp, *local.shape).unbind(0), dim=-1)
        return local.argmax(-1)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor | None:
        """One step over `ids` (B x T); returns the next tokens on every first-stage rank."""
        par = self.par
        B, T = ids.shape
        if par.first:
            x = self.embed_tokens(ids)
        else:
            x = torch.empty(B, T, self.cfg.hidden_size, dtype=self.dtype)
            dist.recv(x, src=par.peer(par.stage - 1), group=par.pp_group)
        for i in range(len(self.layers)):
            x = self.layer(i, x, pos)
        if not par.last:
            dist.send(x.contiguous(), dst=par.peer(par.stage + 1), group=par.pp_group)
        tokens = self.next_tokens(x) if par.last else None
        if par.pp > 1:  # sampled tokens back to the first stage
            if par.last:
                dist.send(tokens, dst=par.peer(0), group=par.pp_group)
            elif par.first:
                tokens = torch.empty(B, dtype=torch.int64)
                dist.recv(tokens, src=par.peer(par.pp - 1), group=par.pp_group)
        return tokens


def generate(cfg: Config, par: Parallel, batch: int, prompt_len: int, output_len: int,
             dtype: torch.dtype, *, timings: dict | None = None,
             around_pass: Callable[[int], contextlib.AbstractContextManager] | None = None
             ) -> list[list[int]] | None:
    """Greedy generation; returns the tokens on first-stage ranks (None elsewhere).

    `timings` (a dict) receives this rank's wall clock (time.perf_counter_ns): start_ns,
    first_token_ns (prefill done; on the first stage the sampled tokens are back), step_end_ns
    (one per decode step) and end_ns. `around_pass(i)` returns a context manager entered around
    forward pass i (0 is the prefill, i the decode step i - 1): benchmarks/e2e_overhead.py
    switches tracing on and off with it, pass by pass."""
    model = Model(cfg, par, dtype)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=g, device="cpu")
    ids = ids.to(torch.get_default_device())
    out = []
    dev = torch.get_default_device()

    def clock() -> int:
        if dev.type == "cuda":  # kernels are asynchronous: time what has finished
            torch.cuda.synchronize(dev)
        return time.perf_counter_ns()

    steps: list[int] = []
    start = clock()
    around = around_pass or (lambda i: contextlib.nullcontext())
    with around(0), profiler.phase("prefill"):
        tok = model.forward(ids, torch.arange(prompt_len))
    first = clock()
    out.append(tok)
    for step in range(output_len - 1):
        with around(step + 1), profiler.phase("decode", step=step):
            cur = tok if tok is not None else torch.zeros(batch, dtype=torch.int64)
            tok = model.forward(cur[:, None], torch.tensor([prompt_len + step]))
        steps.append(clock())
        out.append(tok)
    if timings is not None:
        timings.update(start_ns=start, first_token_ns=first, step_end_ns=steps, end_ns=clock())
    if out[0] is None:
        return None
    return torch.stack(out, 1).tolist()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, a: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if a["backend"] == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        torch.set_default_device(f"cuda:{torch.cuda.current_device()}")
    dist.init_process_group(a["backend"], rank=rank, world_size=world)
    # As torchrun does (OMP_NUM_THREADS=1): ranks sharing the cores each get their share of
    # intra-op threads, so idle OpenMP threads spinning in one rank do not delay the others'
    # communication.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // world))
    cfg = Config(**a["model"])
    dtype = getattr(torch, a["dtype"])
    par = Parallel(a["tp"], a["pp"])
    if a.get("warmup"):  # untraced: connections, allocator and kernels warm before timing
        generate(cfg, par, a["batch"], min(a["prompts"]), 2, dtype)
    for prompt, name in zip(a["prompts"], a["run_names"]):
        dist.barrier()  # untraced (no session open): every rank starts the run together
        timings: dict = {}
        with profiler.trace(a["out"], run_name=name,
                            tags={"example": "llama", "tp": a["tp"], "pp": a["pp"],
                                  "prompt_len": prompt, "batch": a["batch"]}) as s:
            tokens = generate(cfg, par, a["batch"], prompt, a["output"], dtype, timings=timings)
        every = [None] * world if rank == 0 else None
        dist.gather_object(timings, every, dst=0)  # after the session: not traced
        if rank == 0:
            with open(os.path.join(s.run_dir, "tokens.json"), "w") as fh:
                json.dump(tokens, fh)
            with open(os.path.join(s.run_dir, "timings.json"), "w") as fh:
                json.dump({"clock": "time.perf_counter_ns", "ranks": every}, fh)
    dist.destroy_process_group()


def run_prompts(tp: int, pp: int, prompts: list[int], *, out: str = "traces",
                run_names: list[str] | None = None, batch: int = 2, output: int = 8,
                dtype: str = "float64", model: Config | None = None, backend: str = "gloo",
                warmup: bool = True) -> list[tuple[str, list[list[int]], dict]]:
    """Run one configuration (tp*pp spawned ranks) once per prompt length, one trace each.

    Returns per prompt (run_dir, tokens, timings): timings["ranks"][r] is rank r's `generate`
    timings (see `generate`). `warmup` runs an untraced short generation first."""
    cfg = model or Config()
    if cfg.num_layers % pp or cfg.num_kv_heads % tp or cfg.vocab_size % tp:
        raise ValueError(f"TP={tp}, PP={pp} does not divide the model {cfg}")
    if tp * pp < 2:
        raise ValueError("run_prompts needs at least 2 ranks (use generate for one process)")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    names = run_names or [f"llama_tp{tp}_pp{pp}_p{p}" for p in prompts]
    if len(names) != len(prompts):
        raise ValueError("run_names must have one name per prompt length")
    args = dict(tp=tp, pp=pp, out=out, run_names=list(names), batch=batch,
                prompts=[int(p) for p in prompts], output=output, dtype=dtype,
                model=asdict(cfg), backend=backend, warmup=warmup)
    try:
        mp.spawn(_rank_main, nprocs=tp * pp, args=(tp * pp, _free_port(), args))
    except ProcessException as exc:  # say which configuration and the rank's last line
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"TP={tp} PP={pp} ({backend}): a rank failed: {last}") from exc
    results = []
    for name in names:
        run_dir = os.path.join(os.path.abspath(out), name)
        with open(os.path.join(run_dir, "tokens.json")) as fh:
            tokens = json.load(fh)
        with open(os.path.join(run_dir, "timings.json")) as fh:
            results.append((run_dir, tokens, json.load(fh)))
    return results


def run(tp: int = 1, pp: int = 1, *, out: str = "traces", run_name: str | None = None,
        batch: int = 2, prompt: int = 16, output: int = 8, dtype: str = "float64",
        model: Config | None = None, backend: str = "gloo") -> tuple[str | None, list[list[int]]]:
    """Run one configuration (spawning tp*pp ranks); returns (run_dir, tokens)."""
    cfg = model or Config()
    if cfg.num_layers % pp or cfg.num_kv_heads % tp or cfg.vocab_size % tp:
        raise ValueError(f"TP={tp}, PP={pp} does not divide the model {cfg}")
    if tp * pp == 1:
        tokens = generate(cfg, Parallel(1, 1), batch, prompt, output, getattr(torch, dtype))
        return None, tokens
    name = run_name or f"llama_tp{tp}_pp{pp}"
    (run_dir, tokens, _), = run_prompts(tp, pp, [prompt], out=out, run_names=[name],
                                        batch=batch, output=output, dtype=dtype, model=cfg,
                                        backend=backend, warmup=False)
    return run_dir, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--out", default="traces")
    ap.add_argument("--run-name")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--output", type=int, default=8)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    a = ap.parse_args()
    run_dir, tokens = run(a.tp, a.pp, out=a.out, run_name=a.run_name, batch=a.batch,
                          prompt=a.prompt, output=a.output, dtype=a.dtype, backend=a.backend)
    print(f"tokens: {tokens}")
    if run_dir:
        print(f"trace: {run_dir}")


if __name__ == "__main__":
    main()
