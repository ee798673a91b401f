"""compressed-tensors checkpoints reload in stock transformers with the in-memory quantized model's logits."""
import json

import pytest
import torch
import transformers as tf
from safetensors import safe_open

from compressor.quantization.export import save_compressed
from compressor.quantization.scheme import SCHEMES, WeightScheme
from compressor.quantization.sequential import quantize_model_
from compressor.quantization.targets import QuantPlan
from compressor.testing import tiny_moe

W4 = WeightScheme(bits=4, group_size=16)


def _ids():
    return torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(1))


def _round_trip(tmp_path, schemes, method="gptq", dtype=torch.float32):
    model = tiny_moe("qwen3_moe")
    ids = _ids()
    _, params = quantize_model_(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}],
                                QuantPlan.of(schemes, method=method), scale_dtype=dtype)
    save_compressed(model, params, tmp_path, dtype=dtype)
    with torch.no_grad():                       # both in float32, from the weights as stored in `dtype`
        want = model.to(dtype).float()(ids).logits
        got = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)(ids).logits
    assert torch.isfinite(got).all()
    return want, got, json.loads((tmp_path / "config.json").read_text())["quantization_config"]


def test_w4a16_everywhere_is_the_hub_layout(tmp_path):
    want, got, qc = _round_trip(tmp_path, {"experts": W4, "attention": W4})
    assert torch.allclose(got, want, atol=1e-5)
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["config_groups"]["group_0"]["targets"] == ["Linear"] and qc["ignore"] == ["lm_head"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.experts.5.gate_proj.weight_packed").dtype == torch.int32
    assert "model.layers.1.mlp.experts.7.down_proj.weight_scale" in keys
    assert "model.layers.0.mlp.experts.gate_up_proj" not in keys
    assert "model.layers.0.mlp.gate.weight" in keys                  # the router stays dense


def test_mixed_precision_experts_w4_attention_w8_bf16(tmp_path):
    want, got, qc = _round_trip(tmp_path, {"experts": W4, "attention": SCHEMES["W8A16"]}, dtype=torch.bfloat16)
    # the reload multiplies q by the bf16 scale in float32; `want` rounds that product to bf16 once more
    assert torch.allclose(got, want, atol=1e-2 * want.abs().max())
    groups = qc["config_groups"]
    assert qc["format"] == "mixed-precision" and len(groups) == 2
    assert "experts" in groups["group_0"]["targets"][0] and groups["group_0"]["weights"]["num_bits"] == 4
    assert "self_attn" in groups["group_1"]["targets"][0] and groups["group_1"]["weights"]["num_bits"] == 8


def test_fp8_experts_and_block_fp8_attention(tmp_path):
    block = WeightScheme(type="float", bits=8, group_size=None, block=(16, 16))
    want, got, qc = _round_trip(tmp_path, {"experts": SCHEMES["FP8"], "attention": block}, method="rtn")
    assert torch.allclose(got, want, atol=1e-5)
    assert qc["config_groups"]["group_1"]["weights"]["strategy"] == "block"


def test_dense_fused_experts_are_refused(tmp_path):
    model = tiny_moe("qwen3_moe")
    _, params = quantize_model_(model, None, QuantPlan.of({"attention": W4}, method="rtn"))
    with pytest.raises(ValueError, match="fused experts kept dense"):
        save_compressed(model, params, tmp_path, dtype=torch.float32)


@pytest.mark.parametrize("klass,scheme,match", [
    ("attention", WeightScheme(bits=4, symmetric=False, group_size=16), "asymmetric"),
    ("experts", SCHEMES["FP8_BLOCK"], "block-FP8 experts")])
def test_unreadable_schemes_are_refused(tmp_path, klass, scheme, match):
    model = tiny_moe("qwen3_moe", hidden=128, width=128)
    schemes = {"experts": SCHEMES["W8A16"], klass: scheme}
    _, params = quantize_model_(model, None, QuantPlan.of(schemes, method="rtn"))
    with pytest.raises(ValueError, match=match):
        save_compressed(model, params, tmp_path, dtype=torch.float32)


def test_tied_head_is_saved_once(tmp_path):
    model = tiny_moe("qwen3_moe")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    _, params = quantize_model_(model, None, QuantPlan.of({"attention": W4, "experts": W4}, method="rtn"))
    save_compressed(model, params, tmp_path, dtype=torch.bfloat16)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys()) and "model.embed_tokens.weight" in set(f.keys())
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)


def test_plain_reload_holds_only_the_architecture_parameters(tmp_path):
    from compressor.quantization.export import load_compressed
    model = tiny_moe("qwen3_moe")
    n = sum(p.numel() for p in model.parameters())
    ids = _ids()
    _, params = quantize_model_(model, None, QuantPlan.of({"experts": W4, "attention": SCHEMES["W8A16"]},
                                                          method="rtn"))
    with torch.no_grad():
        want = model(ids).logits
    save_compressed(model, params, tmp_path, dtype=torch.float32)
    plain = load_compressed(tmp_path)
    assert sum(p.numel() for p in plain.parameters()) == n
    assert not any(hasattr(m, "quantization_scheme") for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, want, atol=1e-5)
