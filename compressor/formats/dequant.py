"""Tensor-only dequantizers, one per on-disk format: quantized tensors in, one float tensor out.

    fp8_dequantize(w_fp8, scale_inv, block=(128, 128), dtype=torch.bfloat16)    # [N, K] -> [N, K]
    mxfp4_dequantize(blocks, scales, dtype=torch.bfloat16)                      # [E, R, G, 16] -> [E, G*32, R]
    CompressedDequantizer(folder, dtype).dequantize(module, {"weight_packed": ..., "weight_scale": ..., ...})

FP8 (block or per tensor; `transformers/integrations/finegrained_fp8.py`'s layout): W[r, c] = q[r, c] *
scale_inv[r // bm, c // bn] for a (bm, bn) tile, or * scale_inv (one value) per tensor. The scale grid is
ceil(N / bm) x ceil(K / bn): the hub rounds it up where a dimension is not a multiple of the tile (DeepSeek-V3's
kv_a_proj_with_mqa is [576, 7168] with a [5, 56] grid), which transformers 5.25's load-time `Fp8Dequantize` refuses
("not divisible by scale grid"), so the tile is taken from the config and the grid cropped here. ue8m0 scales
(uint8 exponents, bias 127, or torch.float8_e8m0fnu) become 2 ** (e - 127). Leading dimensions (fused experts
[E, N, K] with [E, N/bm, K/bn] scales) are kept.

MXFP4 (gpt-oss; `transformers/integrations/mxfp4.py`): transformers' own `convert_moe_packed_tensors` (E2M1 pairs
per byte, low nibble first, times 2 ** (scale - 127)), which runs on the CPU and returns the transposed
[E, cols, rows] layout the gpt-oss experts hold in memory.

compressed-tensors: the library's own per-module `BaseCompressor.decompress` for the scheme's format (pack-quantized
int4/int8 unpacking, float-quantized FP8 times scale, naive int8), as its `CompressedTensorsDequantizer` calls it;
the scales are taken in float32 first (the library multiplies in the scale's dtype; transformers' load in float32).
"""
from __future__ import annotations

import torch


def _scale_values(scale: torch.Tensor, *, ue8m0: bool = False) -> torch.Tensor:
    """float32 scales; E8M0 exponent bytes (uint8 or float8_e8m0fnu) as 2 ** (e - 127)."""
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if scale.dtype == torch.uint8 and ue8m0:
        return (scale.to(torch.float32) - 127.0).exp2()
    if e8m0 is not None and scale.dtype == e8m0:
        return scale.view(torch.uint8).to(torch.float32).sub_(127.0).exp2_()
    return scale.to(torch.float32)


def fp8_dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, *, block: tuple[int, int] | None,
                   dtype: torch.dtype = torch.bfloat16, ue8m0: bool = False) -> torch.Tensor:
    """W = q * scale_inv per (bm, bn) tile, grid rounded up and cropped (module docstring); per tensor when `block`
    is None or the scale holds one value. `weight` [..., N, K] float8; `scale_inv` [..., ceil(N/bm), ceil(K/bn)]."""
    s = _scale_values(scale_inv, ue8m0=ue8m0)
    q = weight.to(torch.float32, copy=True)                        # [..., N, K], scaled in place below
    if block is None or s.numel() == 1:
        return q.mul_(s.reshape(-1)[0] if s.numel() == 1 else s).to(dtype)
    bm, bn = block
    rows, cols = q.shape[-2:]
    grid = (-(-rows // bm), -(-cols // bn))
    if tuple(s.shape[-2:]) != grid or s.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"FP8 scale grid {list(s.shape)} does not fit weight {list(q.shape)} with tiles "
                         f"{list(block)} (expected {[*q.shape[:-2], *grid]})")
    if rows % bm == 0 and cols % bn == 0:           # whole tiles: broadcast the grid over a view, in place
        q.unflatten(-1, (grid[1], bn)).unflatten(-3, (grid[0], bm)).mul_(s[..., :, None, :, None])
    else:                                           # rounded-up grid: expand it and crop to the weight
        q.mul_(s.repeat_interleave(bm, dim=-2)[..., :rows, :].repeat_interleave(bn, dim=-1)[..., :cols])
    return q.to(dtype)


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16
                     ) -> torch.Tensor:
    """transformers' `convert_moe_packed_tensors`: [E, R, G, 16] uint8 + [E, R, G] uint8 -> [E, G*32, R]."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not pair "
                         "(expected [..., G, 16] and [..., G])")
    return convert_moe_packed_tensors(blocks, scales, dtype=dtype)


class CompressedDequantizer:
    """compressed-tensors' schemes of one checkpoint (its config.json), applied one module at a time."""

    def __init__(self, quantization_config: dict, dtype: torch.dtype = torch.bfloat16):
        from compressed_tensors.compressors import BaseCompressor
        from compressed_tensors.compressors.format import infer_module_format
        from compressed_tensors.config import CompressionFormat
        from compressed_tensors.quantization import QuantizationConfig

        self.dtype = dtype
        self.config = QuantizationConfig.model_validate(quantization_config)
        self.groups = []               # (scheme, compressor, param names), as CompressedTensorsDequantizer builds them
        for scheme in self.config.config_groups.values():
            if scheme.format is None:
                scheme.format = CompressionFormat(infer_module_format(torch.nn.Linear, scheme))
            compressor = BaseCompressor.get_value_from_registry(scheme.format)
            self.groups.append((scheme, compressor, tuple(compressor.compression_param_names(scheme))))

    def modules(self, names) -> dict[str, tuple[int, tuple[str, ...]]]:
        """module name -> (group index, the param names it stores), for stored tensor `names` (name matching only:
        compressed-tensors' `match_quantizable_tensors`, first group wins as in its dequantizer)."""
        from compressed_tensors.utils.match import match_quantizable_tensors

        present = dict.fromkeys(names)
        out: dict[str, tuple[int, tuple[str, ...]]] = {}
        for g, (scheme, _, params) in enumerate(self.groups):
            for module, _ in match_quantizable_tensors(present, ignore=self.config.ignore or [],
                                                       targets=scheme.targets, param_targets=[params[0]]):
                if module not in out:
                    out[module] = (g, tuple(p for p in params if f"{module}.{p}" in present))
        return out

    def dequantize(self, group: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """The module's dense weight from its local-name state dict (`weight_packed`, `weight_scale`, ...)."""
        scheme, compressor, _ = self.groups[group]
        state = {k: v.float() if k.endswith("_scale") and v.is_floating_point() else v for k, v in state.items()}
        return compressor.decompress(state, scheme)["weight"].to(self.dtype)    # q * scale in float32, as transformers
