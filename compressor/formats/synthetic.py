"""Write a plain checkpoint again in a quantized hub layout, from the formats' documented keys (for tests and
benchmarks: tiny models in every on-disk format without the hub or a GPU).

    model.save_pretrained(out)                      # the bf16 / fp32 checkpoint, hub key layout
    to_fp8_(out, block=(128, 128))                  # DeepSeek-V3 / Qwen3-FP8 layout (block=None: per tensor)
    to_mxfp4_(out)                                  # gpt-oss layout (experts only)

FP8 (`quant_method: fp8`, transformers' `FineGrainedFP8Config`): every 2-D decoder-layer Linear weight except the
router (`*.gate.weight`, `*.router.weight`) becomes float8_e4m3fn q = clamp(W / s, ±448) with
s = amax(|tile|) / 448 per (bm, bn) tile (the grid rounded up, as DeepSeek-V3 ships it), stored as
`weight_scale_inv` float32. MXFP4 (`transformers/integrations/mxfp4.py`): each experts tensor P (gate_up_proj
[E, H, 2I], down_proj [E, I, H]) is transposed to [E, R, C], split in groups of 32 along C, scaled by
2 ** e with e = ceil(log2(amax / 6)) and rounded to the nearest E2M1 value; `P_blocks` holds two 4-bit codes per
byte (low nibble first), `P_scales` e + 127.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FP8_MAX = 448.0
_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp8_quantize(w: torch.Tensor, block: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [N, K], scale_inv float32 [ceil(N/bm), ceil(K/bn)] or [1, 1]) of a 2-D `w`."""
    w = w.float()
    N, K = w.shape
    bm, bn = block or (N, K)
    gm, gn = -(-N // bm), -(-K // bn)
    padded = torch.zeros(gm * bm, gn * bn)
    padded[:N, :K] = w
    amax = padded.reshape(gm, bm, gn, bn).abs().amax(dim=(1, 3))                   # [gm, gn]
    s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    full = s.repeat_interleave(bm, 0).repeat_interleave(bn, 1)[:N, :K]
    q = (w / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, s


def _fp8_target(name: str, t: torch.Tensor) -> bool:
    module = name.rsplit(".", 1)[0]
    return (name.endswith(".weight") and t.dim() == 2 and ".layers." in name
            and not module.endswith((".gate", ".router")) and "norm" not in module.rsplit(".", 1)[-1])


def _rewrite(folder: Path, convert, qcfg: dict) -> None:
    """Apply `convert(name, tensor) -> {name: tensor}` to every shard, fix the index, set quantization_config."""
    weight_map = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out = {}
        for name, t in load_file(shard).items():
            out.update(convert(name, t))
        save_file(out, shard, metadata={"format": "pt"})
        weight_map.update({k: shard.name for k in out})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(data, indent=2))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def to_fp8_(folder: Path | str, *, block: tuple[int, int] | None = (128, 128)) -> None:
    """Rewrite a saved checkpoint in place as FP8 (module docstring)."""
    def convert(name, t):
        if not _fp8_target(name, t):
            return {name: t}
        q, s = fp8_quantize(t, block)
        return {name: q, name + "_scale_inv": s}

    qcfg = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3"}
    if block is not None:
        qcfg["weight_block_size"] = list(block)
    _rewrite(Path(folder), convert, qcfg)


def mxfp4_quantize(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks uint8 [E, R, C/32, 16], scales uint8 [E, R, C/32]) of an experts tensor `p` [E, C, R]."""
    x = p.float().transpose(1, 2).contiguous()                                    # [E, R, C]
    E, R, C = x.shape
    g = x.reshape(E, R, C // 32, 32)
    amax = g.abs().amax(-1, keepdim=True).clamp(min=2.0 ** -126)
    e = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    v = g / torch.exp2(e)
    idx = (v.abs().unsqueeze(-1) - _E2M1).abs().argmin(-1) + 8 * (v < 0).long()   # [E, R, G, 32] codes 0..15
    packed = (idx[..., 0::2] | (idx[..., 1::2] << 4)).to(torch.uint8)
    return packed, (e.squeeze(-1) + 127).to(torch.uint8)


def to_mxfp4_(folder: Path | str) -> None:
    """Rewrite a saved gpt-oss checkpoint in place as MXFP4 experts (module docstring)."""
    def convert(name, t):
        if not name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            return {name: t}
        blocks, scales = mxfp4_quantize(t)
        return {name + "_blocks": blocks, name + "_scales": scales}

    _rewrite(Path(folder), convert, {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})
