"""Write a random checkpoint of any size shard by shard, never holding more than one decoder layer in memory:
for benchmarks and memory tests of the layer-by-layer engine (a 30 GB Qwen3-30B-A3B-shaped model on a 24 GB box).

Init rule (as `compressor.testing.tiny_moe`): matrices ~ N(0, std^2) with std 0.02 (routers 0.08, so routing
depends on the input), norm weights 1, other vectors ~ N(0, 0.02^2), drawn directly in the checkpoint dtype. Tensors are written under the model's own
(fused) names, which `from_pretrained` loads natively.

    config = tiny_config("qwen3_moe", hidden=2048, experts=128, top_k=8, width=768, layers=24, vocab=151936)
    nbytes = write_synthetic_checkpoint(config, Path("synthetic"), dtype=torch.bfloat16)
"""
from __future__ import annotations

from pathlib import Path

import torch

from compressor.stream.skeleton import params_on_meta
from compressor.stream.writer import ShardWriter


def _random_like(name: str, p: torch.Tensor, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Filled in place, one slice of the first axis at a time (no float32 copy of a 1 GB expert tensor)."""
    out = torch.empty(p.shape, dtype=dtype)
    if p.dim() < 2 and "norm" in name:
        return out.fill_(1.0)
    std = 0.08 if name.endswith(("gate.weight", "router.weight")) and p.dim() == 2 else 0.02
    for part in (out if out.dim() >= 3 else [out]):
        part.normal_(0.0, std, generator=g)
    return out


@torch.no_grad()
def write_synthetic_checkpoint(config, out_dir: Path | str, *, dtype: torch.dtype = torch.bfloat16,
                               seed: int = 0) -> int:
    """Write config.json and one shard per decoder layer (+ one for embeddings / norm / head); return bytes written."""
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    with params_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    tied = {k for k in state if k == "lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    with ShardWriter(out, model=model, original_format=False) as writer:
        writer.write({k: _random_like(k, v, g, v.dtype) for k, v in state.items()
                      if not k.startswith("model.layers.") and k not in tied})
        for i in range(config.num_hidden_layers):
            prefix = f"model.layers.{i}."
            writer.write({k: _random_like(k, v, g, v.dtype) for k, v in state.items() if k.startswith(prefix)})
    model.config.save_pretrained(out)
    return writer.bytes
