"""A randomly initialised Hugging Face Llama with transformers' own tensor-parallel plan, on gloo.

It knows nothing about commscope; trace it without changing it:

    commscope run --out traces --run-name hf_tp2 -- \\
        torchrun --nproc-per-node 2 examples/hf_tp.py

Needs `pip install transformers accelerate` (transformers >= 5); the model is built from a tiny
LlamaConfig and saved locally, so nothing is downloaded.
"""

import os
import tempfile

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.distributed import DistributedConfig


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = [tempfile.mkdtemp(prefix="hf-tiny-llama-") if rank == 0 else None]
    dist.broadcast_object_list(folder, src=0)
    if rank == 0:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128)
        LlamaForCausalLM(cfg).save_pretrained(folder[0])
    dist.barrier()
    model = LlamaForCausalLM.from_pretrained(
        folder[0], distributed_config=DistributedConfig(tp_size=world), dtype=torch.float32)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    if rank == 0:
        print(f"hf_tp: generated {out[0, 8:].tolist()} on {world} ranks")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
