"""Tiny checkpoints in each hub layout (block and per-tensor FP8 on Qwen3-MoE and DeepSeek-V3, MXFP4 gpt-oss,
compressed-tensors W4A16) are described, read layer by layer and loaded in memory dequantized; the logits equal
transformers' own dequantized load where transformers reads the layout on a CPU (issue 22)."""
import json
import warnings

import pytest
import torch
import transformers as tf

from compressor.describe import describe_checkpoint
from compressor.formats.load import load_dequantized, studio_dequantizer_needed
from compressor.formats.synthetic import to_fp8_, to_mxfp4_
from compressor.sources import QuantizedInputWarning, load_model
from compressor.stream.shards import ShardIndex
from compressor.stream.skeleton import Skeleton
from compressor.testing import char_tokenizer, tiny_inputs, tiny_moe

LAYOUTS = {   # name -> (family, shape kwargs, writer, transformers' dequantizing config or None)
    "qwen3-fp8-block": ("qwen3_moe", {}, lambda p: to_fp8_(p, block=(16, 16)), tf.FineGrainedFP8Config),
    "qwen3-fp8-tensor": ("qwen3_moe", {}, lambda p: to_fp8_(p, block=None), tf.FineGrainedFP8Config),
    "deepseek-v3-fp8-block": ("deepseek_v3", {}, lambda p: to_fp8_(p, block=(16, 16)), None),   # rounded-up grid
    "gpt-oss-mxfp4": ("gpt_oss", {"width": 32}, to_mxfp4_, tf.Mxfp4Config),
}


def _w4a16(folder):
    from compressor.quantization.export import save_compressed
    from compressor.quantization.scheme import WeightScheme
    from compressor.quantization.sequential import quantize_model_
    from compressor.quantization.targets import QuantPlan
    model = tiny_moe("qwen3_moe", layers=3)
    w4 = WeightScheme(bits=4, group_size=16)
    _, params = quantize_model_(model, None, QuantPlan.of({"experts": w4, "attention": w4}, method="rtn"),
                                scale_dtype=torch.bfloat16)
    save_compressed(model, params, folder, dtype=torch.bfloat16)


@pytest.fixture(scope="module", params=[*LAYOUTS, "qwen3-ct-w4a16"])
def quantized(request, tmp_path_factory):
    """(layout name, folder, transformers' dequantizing config class or None)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "qwen3-ct-w4a16":
        _w4a16(folder)
        reference = None
    else:
        family, shape, write, reference = LAYOUTS[request.param]
        tiny_moe(family, dtype=torch.bfloat16, layers=3 if family != "deepseek_v3" else 2, **shape
                 ).save_pretrained(folder)
        write(folder)
    char_tokenizer().save_pretrained(folder)
    return request.param, folder, reference


def _streamed_logits(folder, ids):
    sk = Skeleton.open(folder)
    assert not hasattr(sk.config, "quantization_config") and sk.quantization is not None
    sk.load_globals_()
    for i in range(len(sk.layers)):
        sk.load_layer_(i)
    with torch.no_grad():
        return sk.model(ids).logits.float()


def test_described_from_headers(quantized):
    name, folder, _ = quantized
    s = describe_checkpoint(folder)
    raw = json.loads((folder / "config.json").read_text())
    assert s["quantization"]["method"] == raw["quantization_config"]["quant_method"]
    assert s["quantization"]["bits"] == (4 if "mxfp4" in name or "w4" in name else 8)
    assert raw["dtype"] in s["dtype"]                              # the compute dtype config.json names
    assert s["checkpoint_bytes"] < s["dequantized_bytes"]
    assert s["params_total"] > 0 and s["num_experts"] == 8


def test_layer_by_layer_equals_transformers_dequantized_load(quantized):
    name, folder, reference = quantized
    ids = tiny_inputs()
    streamed = _streamed_logits(folder, ids)
    if reference is not None:
        ref = tf.AutoModelForCausalLM.from_pretrained(folder, quantization_config=reference(dequantize=True))
        with torch.no_grad():
            want = ref(ids).logits.float()
        assert torch.equal(streamed, want)
    elif "ct" in name:
        from compressor.quantization.export import load_compressed
        with torch.no_grad():
            want = load_compressed(folder, dtype=torch.float32)(ids).logits.float()   # config.json: float32
        # equal weights except the fused experts, which transformers 5.25 leaves in the bf16 of the scales
        # (its CompressedTensorsDequantize) while the studio keeps config.json's float32: 1e-3 apart per weight
        assert (streamed - want).abs().max() <= 5e-3
    assert torch.isfinite(streamed).all()


def test_in_memory_load_is_dequantized_and_says_so(quantized):
    name, folder, reference = quantized
    ids = tiny_inputs()
    with pytest.warns(QuantizedInputWarning, match="quantized .* dequantized to (bfloat16|float32)"):
        loaded = load_model(str(folder))
    assert loaded.quantization["method"] in ("fp8", "mxfp4", "compressed-tensors") and loaded.notes
    assert getattr(loaded.model.config, "quantization_config", None) is None
    assert {p.dtype for p in loaded.model.parameters()} <= {torch.bfloat16, torch.float32}
    with torch.no_grad():
        got = loaded.model(ids).logits.float()
    assert torch.equal(got, _streamed_logits(folder, ids))
    how = "studio" if studio_dequantizer_needed(ShardIndex.open(folder)) else "transformers"
    assert how == ("transformers" if reference is not None else "studio")


def test_deepseek_v3_rounded_grid_is_read_with_its_config_tile(tmp_path):
    """kv_a_proj_with_mqa [24, 32] with 16 x 16 tiles has a 2 x 2 grid: the studio reads 16-row tiles."""
    tiny_moe("deepseek_v3", dtype=torch.bfloat16).save_pretrained(tmp_path)
    to_fp8_(tmp_path, block=(16, 16))
    index = ShardIndex.open(tmp_path)
    name = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    q, s = (index.read_stored([name, name + "_scale_inv"])[k] for k in (name, name + "_scale_inv"))
    assert q.shape == (24, 32) and s.shape == (2, 2)
    want = (q.float() * s.repeat_interleave(16, 0)[:24].repeat_interleave(16, 1)).to(torch.bfloat16)
    assert torch.equal(index.read([name])[name], want)
    assert "rounded up" in studio_dequantizer_needed(index)
    model, how = load_dequantized(tmp_path)
    assert how == "studio" and torch.equal(model.get_parameter(name), want)
