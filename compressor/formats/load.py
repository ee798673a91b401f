"""Load a quantized checkpoint in memory, dequantized: the model holds plain weights in the compute dtype and its
config no `quantization_config`, so slimming, scoring and `save_pretrained` see an ordinary model.

Which dequantizer (rule):
  - FP8 whose every quantized weight is a whole number of `weight_block_size` tiles (or per tensor) and MXFP4:
    transformers' own, `from_pretrained(quantization_config=FineGrainedFP8Config(dequantize=True))` /
    `Mxfp4Config(dequantize=True)` (both run on the CPU);
  - FP8 with a rounded-up scale grid (DeepSeek-V3/R1, Kimi-K2: kv_a_proj_with_mqa [576, 7168] with a [5, 56]
    grid): transformers 5.25 derives the tile from the grid and refuses ("not divisible by scale grid"), or, where the
    grid happens to divide the weight, silently uses a wrong tile; and compressed-tensors, whose transformers load
    leaves compressed-tensors' quantization state (schemes, wrapped forwards) on every module: the studio's per-layer
    reader (`compressor.stream.skeleton.Skeleton`, the layer-by-layer path's own), every layer loaded in turn, so the
    peak is the dequantized model plus one layer's stored tensors.

    model, how = load_dequantized(Path("Qwen3-30B-A3B-FP8"), dtype=torch.bfloat16)   # how: "transformers" | "studio"
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def studio_dequantizer_needed(index) -> str | None:
    """Why transformers' own dequantizing load cannot be used for this ShardIndex (module docstring), else None."""
    info = index.quantization
    if info is None:
        return None
    if info.method == "compressed-tensors":
        return "compressed-tensors modules would keep their quantization state after transformers' load"
    if info.method == "fp8" and info.block is not None:
        bm, bn = info.block
        for name, kind in index.quant.kinds.items():
            shape = index.tensors[name].shape
            if kind == "fp8" and (shape[-2] % bm or shape[-1] % bn):
                return (f"{name} {list(shape)} is not a whole number of {list(info.block)} tiles (its scale grid is "
                        "rounded up), which transformers' FP8 dequantizer does not handle")
    return None


def load_dequantized(local: Path, *, dtype=None, experts_implementation: str | None = None,
                     kwargs: dict[str, Any] | None = None) -> tuple[torch.nn.Module, str]:
    """(model in eval mode with plain weights, "transformers" | "studio"): the rule of the module docstring.
    `dtype` None means config.json's dtype (bf16 for the hub's FP8 / MXFP4 checkpoints); `kwargs` go to
    `from_pretrained` (output_loading_info, ...)."""
    from compressor.stream.shards import ShardIndex

    index = ShardIndex.open(local)
    if studio_dequantizer_needed(index) is None:
        return _transformers_load(local, index, dtype, experts_implementation, kwargs or {}), "transformers"
    return _studio_load(local, index, dtype, experts_implementation), "studio"


def _transformers_load(local, index, dtype, experts_implementation, kwargs):
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config, Mxfp4Config

    info = index.quantization
    qc = FineGrainedFP8Config(dequantize=True) if info.method == "fp8" else Mxfp4Config(dequantize=True)
    kw = {**kwargs, "quantization_config": qc, "dtype": dtype if dtype is not None else index.quant.dtype}
    if experts_implementation is not None:
        kw["experts_implementation"] = experts_implementation
    return AutoModelForCausalLM.from_pretrained(local, local_files_only=True, **kw)


def _studio_load(local, index, dtype, experts_implementation):
    from compressor.stream.skeleton import Skeleton

    sk = Skeleton.open(local, index=index, dtype=dtype if isinstance(dtype, torch.dtype) else None)
    sk.load_globals_()
    for i in range(len(sk.layers)):
        sk.load_layer_(i)
    model = sk.model
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        from compressor.stream.shards import ShardError
        raise ShardError(f"{Path(local).name}: the checkpoint lacks {len(meta)} weights the model needs (e.g. "
                         f"{', '.join(meta[:3])}); the weights do not match config.json.")
    if experts_implementation is not None:
        model.set_experts_implementation(experts_implementation)
    return model.eval()
