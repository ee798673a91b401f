"""Quantized formats recognised from config.json (torch-free description) and the per-tensor dequantizers against
transformers' own and hand-computed values (issue 22)."""
import json

import pytest
import torch

from compressor.formats import QuantFormatError, QuantInfo, quantization_of
from compressor.formats.dequant import fp8_dequantize, mxfp4_dequantize
from compressor.formats.synthetic import fp8_quantize, mxfp4_quantize

DEEPSEEK_V3 = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]}
GPT_OSS = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}
W4A16 = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
         "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
             "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}}}}


@pytest.mark.parametrize("qcfg, want", [
    (DEEPSEEK_V3, ("fp8", "fp8-block", 8, (128, 128), "fp8-block 8-bit [128, 128]")),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, ("fp8", "fp8-tensor", 8, None, "fp8-tensor 8-bit")),
    (GPT_OSS, ("mxfp4", "mxfp4", 4, (1, 32), "mxfp4 4-bit")),
    (W4A16, ("compressed-tensors", "pack-quantized", 4, None, "pack-quantized 4-bit g128")),
])
def test_quantization_config_is_described(qcfg, want):
    q = quantization_of({"model_type": "x", "quantization_config": qcfg})
    assert (q.method, q.format, q.bits, q.block, q.label) == want
    d = json.loads(json.dumps(q.to_dict()))                      # JSON round trip
    assert QuantInfo(**{**d, "block": tuple(d["block"]) if d["block"] else None, "schemes": tuple(d["schemes"]),
                        "not_converted": tuple(d["not_converted"])}) == q


def test_plain_and_unknown_configs():
    assert quantization_of({"model_type": "qwen3_moe"}) is None
    with pytest.raises(QuantFormatError, match="'bitsandbytes' is not read by the studio"):
        quantization_of({"quantization_config": {"quant_method": "bitsandbytes"}})
    with pytest.raises(QuantFormatError, match="weight_block_size"):
        quantization_of({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}})


def test_fp8_block_equals_transformers_where_the_grid_divides():
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    w = torch.randn(3, 64, 96)                                  # fused experts [E, N, K], tiles 32 x 32
    q, s = zip(*(fp8_quantize(w[e], (32, 32)) for e in range(3)))
    q, s = torch.stack(q), torch.stack(s)
    want = Fp8Dequantize(None)._dequantize_one(q, s, output_dtype=torch.bfloat16)
    assert torch.equal(fp8_dequantize(q, s, block=(32, 32), dtype=torch.bfloat16), want)


def test_fp8_rounded_up_grid_is_cropped_by_hand():
    """DeepSeek-V3's kv_a_proj_with_mqa: 576 rows, tiles of 128 -> 5 scale rows (rounded up). Scaled down: 24 rows,
    tiles of 16 -> 2 scale rows. transformers 5.25 refuses the first and silently uses 12-row tiles on the second."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    w = torch.randn(24, 40)
    q, s = fp8_quantize(w, (16, 16))
    assert s.shape == (2, 3)
    got = fp8_dequantize(q, s, block=(16, 16), dtype=torch.float32)
    want = torch.empty(24, 40)
    for r in range(24):
        for c in range(40):
            want[r, c] = q[r, c].float() * s[r // 16, c // 16]
    assert torch.equal(got, want)
    assert (got - w).abs().max() <= w.abs().max() / 8            # e4m3 keeps 3 mantissa bits
    with pytest.raises(ValueError, match="not divisible by scale grid"):
        Fp8Dequantize(None)._dequantize_one(q, s, output_dtype=torch.float32)   # 40 cols, 3 scale cols
    assert not torch.equal(Fp8Dequantize(None)._dequantize_one(q[:, :32], s[:, :2], output_dtype=torch.float32),
                           got[:, :32])


def test_fp8_per_tensor_and_ue8m0_scales():
    w = torch.randn(8, 8)
    q, s = fp8_quantize(w, None)
    assert s.shape == (1, 1)
    assert torch.equal(fp8_dequantize(q, s, block=None, dtype=torch.float32), q.float() * s[0, 0])
    assert torch.equal(fp8_dequantize(q, s.reshape(()), block=(128, 128), dtype=torch.float32), q.float() * s[0, 0])
    e = torch.tensor([[127 - 3]], dtype=torch.uint8)               # ue8m0: 2 ** (124 - 127)
    assert torch.equal(fp8_dequantize(q, e, block=(128, 128), dtype=torch.float32, ue8m0=True), q.float() / 8)


def test_mxfp4_round_trip_through_transformers_dequantizer():
    p = torch.randn(2, 64, 48) * 0.1                             # gpt-oss gate_up_proj [E, H, 2I]
    blocks, scales = mxfp4_quantize(p)
    assert blocks.shape == (2, 48, 2, 16) and scales.shape == (2, 48, 2)
    got = mxfp4_dequantize(blocks, scales, dtype=torch.float32)
    assert got.shape == p.shape
    rel = (got - p).abs() / p.abs().reshape(2, 2, 32, 48).amax(2, keepdim=True).expand(2, 2, 32, 48).reshape(p.shape)
    assert rel.max() <= 0.25                                      # E2M1 steps of at most 2 ** e / 2 near amax
    assert torch.equal(mxfp4_dequantize(*mxfp4_quantize(got), dtype=torch.float32), got)   # grid values are fixed
