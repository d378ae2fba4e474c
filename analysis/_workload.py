"""Model, workload and parallel-configuration descriptions for predicting communication."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ModelSpec", "Workload", "ParallelConfig", "TP2D", "PRESETS"]


@dataclass(frozen=True)
class ModelSpec:
    """What a decoder-only transformer's communication depends on."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 0            # routed experts per MoE layer (0: dense model)
    experts_per_token: int = 0      # top-k
    moe_intermediate_size: int = 0
    first_dense_layers: int = 0     # leading layers with a dense MLP (DeepSeek-style)
    dtype_bytes: int = 2

    @property
    def moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.num_experts else 0

    @classmethod
    def from_preset(cls, name: str) -> ModelSpec:
        """A known model by name (case-insensitive): see `PRESETS`."""
        for k, v in PRESETS.items():
            if k.lower() == name.lower():
                return v
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")

    @classmethod
    def from_hf_config(cls, path: str | os.PathLike) -> ModelSpec:
        """From a Hugging Face `config.json` (file or folder holding one)."""
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, "config.json")
        with open(p) as fh:
            c = json.load(fh)
        heads = int(c["num_attention_heads"])
        experts = int(c.get("num_local_experts") or c.get("n_routed_experts")
                      or c.get("num_experts") or 0)
        dtype = str(c.get("torch_dtype") or c.get("dtype") or "bfloat16")
        return cls(
            name=str(c.get("_name_or_path") or c.get("model_type") or os.path.basename(p)),
            hidden_size=int(c["hidden_size"]), num_layers=int(c["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(c.get("num_key_value_heads") or heads),
            intermediate_size=int(c.get("intermediate_size") or 4 * c["hidden_size"]),
            vocab_size=int(c["vocab_size"]), num_experts=experts,
            experts_per_token=int(c.get("num_experts_per_tok") or 0) if experts else 0,
            moe_intermediate_size=int(c.get("moe_intermediate_size") or 0),
            first_dense_layers=int(c.get("first_k_dense_replace") or 0) if experts else 0,
            dtype_bytes={"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
                         "float8": 1}.get(dtype, 2))


PRESETS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("Llama-2-7B", 4096, 32, 32, 32, 11008, 32000),
    ModelSpec("Llama-2-13B", 5120, 40, 40, 40, 13824, 32000),
    ModelSpec("Llama-2-70B", 8192, 80, 64, 8, 28672, 32000),
    ModelSpec("Llama-3-8B", 4096, 32, 32, 8, 14336, 128256),
    ModelSpec("Llama-3-70B", 8192, 80, 64, 8, 28672, 128256),
    ModelSpec("Mistral-7B", 4096, 32, 32, 8, 14336, 32000),
    ModelSpec("Mixtral-8x7B", 4096, 32, 32, 8, 14336, 32000, num_experts=8,
              experts_per_token=2, moe_intermediate_size=14336),
    ModelSpec("Qwen2.5-72B", 8192, 80, 64, 8, 29568, 152064),
    ModelSpec("DeepSeek-V3", 7168, 61, 128, 128, 18432, 129280, num_experts=256,
              experts_per_token=8, moe_intermediate_size=2048, first_dense_layers=3),
)}


@dataclass(frozen=True)
class Workload:
    """`batch` sequences of `prompt_len` tokens each, generating `output_len` tokens."""

    batch: int
    prompt_len: int
    output_len: int

    @property
    def prefill_tokens(self) -> int:
        return self.batch * self.prompt_len

    @property
    def decode_tokens(self) -> int:
        """Tokens in one decode step (one per sequence)."""
        return self.batch


@dataclass(frozen=True)
class TP2D:
    """A 2D tensor-parallel layout: ranks in row groups, hidden-dim segments in column groups.

    `rows` are the sizes of the row groups; row group i holds the next rows[i] ranks and splits
    the hidden dimension evenly among its members (member j owns [j/rows[i], (j+1)/rows[i]) of
    it). Each segment of the hidden dimension between two consecutive boundaries of any row group
    is owned by one member of every row group: those members form its column group (one rank per
    row group; a rank of a small row group sits in several column groups). A sublayer's partial
    sums are reduced with a reduce_scatter in the row group, an all_reduce of each segment in its
    column group and an all_gather in the row group. Even r x c grids are `TP2D.grid(r, c)`:
    rows (c,)*r, cols (r,)*c; uneven (AsymGroup) layouts list different row sizes, e.g. (2, 1).
    `cols` (the column-group sizes) is derived from `rows`; a given value must agree.
    """

    rows: tuple[int, ...]
    cols: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        rows = tuple(int(r) for r in self.rows)
        if not rows or min(rows) < 1:
            raise ValueError(f"TP2D rows must be positive group sizes, got {self.rows!r}")
        object.__setattr__(self, "rows", rows)
        derived = tuple(len(rows) for _ in self.segments)
        if self.cols and tuple(int(c) for c in self.cols) != derived:
            raise ValueError(f"TP2D rows={list(rows)} give column groups {list(derived)} "
                             f"(one rank per row group per hidden segment), not {list(self.cols)}")
        object.__setattr__(self, "cols", derived)

    @classmethod
    def grid(cls, r: int, c: int) -> TP2D:
        """An even r x c grid: r row groups of c ranks, c column groups of r ranks."""
        return cls((c,) * r, (r,) * c)

    @property
    def size(self) -> int:
        return sum(self.rows)

    @property
    def row_ranks(self) -> list[tuple[int, ...]]:
        """The ranks of each row group (consecutive)."""
        starts = [sum(self.rows[:i]) for i in range(len(self.rows))]
        return [tuple(range(s, s + n)) for s, n in zip(starts, self.rows)]

    @property
    def segments(self) -> list[tuple[Fraction, Fraction, tuple[int, ...]]]:
        """(start, end, column-group ranks) per hidden segment; start/end as fractions of h."""
        cuts = sorted({Fraction(j, n) for n in self.rows for j in range(n + 1)})
        groups = self.row_ranks
        return [(a, b, tuple(g[int(a * len(g))] for g in groups))
                for a, b in zip(cuts[:-1], cuts[1:])]

    def hidden_slice(self, rank: int, hidden: int) -> tuple[int, int]:
        """[start, end) of the hidden dimension `rank` owns in its row group."""
        for g in self.row_ranks:
            if rank in g:
                j, n = g.index(rank), len(g)
                return j * hidden // n, (j + 1) * hidden // n
        raise ValueError(f"rank {rank} is not in {self}")


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    sequence_parallel: bool = False
    tp2d: TP2D | None = None

    @property
    def tp_size(self) -> int:
        return self.tp2d.size if self.tp2d else self.tp

    @property
    def devices(self) -> int:
        return self.tp_size * self.pp * self.dp

    def label(self) -> str:
        parts = []
        if self.tp2d:
            parts.append(f"TP2D rows={list(self.tp2d.rows)} cols={list(self.tp2d.cols)}")
        elif self.tp > 1:
            parts.append(f"TP={self.tp}" + ("+SP" if self.sequence_parallel else ""))
        if self.pp > 1:
            parts.append(f"PP={self.pp}")
        if self.ep > 1:
            parts.append(f"EP={self.ep}")
        if self.dp > 1:
            parts.append(f"DP={self.dp}")
        return " x ".join(parts) or "single device"
