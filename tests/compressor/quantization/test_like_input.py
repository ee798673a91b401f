"""`quantize --like-input SOURCE` (issue 22): the input's stored format resolved into quantize options, and a
slimmed plain checkpoint written back as the compressed-tensors W4A16 its source was."""
import json

import pytest
import torch

from compressor import cli
from compressor.formats import QuantInfo, quantization_of
from compressor.quantization.like_input import quantize_fields_like
from compressor.testing import char_tokenizer, tiny_moe


@pytest.mark.parametrize("info, fields", [
    (QuantInfo("fp8", "fp8-block", 8, block=(128, 128)), {"scheme": "FP8_BLOCK", "experts": "FP8", "method": "rtn"}),
    (QuantInfo("fp8", "fp8-tensor", 8), {"scheme": "FP8", "method": "rtn"}),
    (QuantInfo("compressed-tensors", "pack-quantized", 4, group_size=32,
               schemes=("W4A16 int group group=32 (pack-quantized)",)), {"scheme": "W4A16", "group_size": 32}),
    (QuantInfo("compressed-tensors", "pack-quantized", 8, schemes=("W8A16 int channel (pack-quantized)",)),
     {"scheme": "W8A16", "group_size": "channel"}),
    (QuantInfo("compressed-tensors", "float-quantized", 8, schemes=("W8A8 float block (float-quantized)",)),
     {"scheme": "FP8_BLOCK"}),
])
def test_fields_reproduce_the_input_scheme(info, fields):
    assert quantize_fields_like(info)[0] == fields


@pytest.mark.parametrize("info, says", [
    (None, "not quantized"),
    (QuantInfo("mxfp4", "mxfp4", 4, block=(1, 32)), "W4A16 --group-size 32"),
    (QuantInfo("fp8", "fp8-block", 8, block=(64, 64)), "128, 128"),
    (QuantInfo("compressed-tensors", "pack-quantized", 8,
               schemes=("W4A16 int group group=128 (x)", "W8A16 int channel (x)")), "mixes schemes"),
])
def test_formats_without_an_exact_preset_are_refused_naming_the_nearest(info, says):
    with pytest.raises(ValueError, match=says):
        quantize_fields_like(info)


def test_cli_writes_the_source_format(tmp_path, capsys, studio_cache):
    from compressor.quantization.export import save_compressed
    from compressor.quantization.scheme import WeightScheme
    from compressor.quantization.sequential import quantize_model_
    from compressor.quantization.targets import QuantPlan
    source, plain = tmp_path / "source", tmp_path / "plain"
    model = tiny_moe("qwen3_moe")
    model.save_pretrained(plain)
    char_tokenizer().save_pretrained(plain)
    w4 = WeightScheme(bits=4, group_size=16)
    _, params = quantize_model_(model, None, QuantPlan.of({"experts": w4, "attention": w4}, method="rtn"))
    save_compressed(model, params, source, dtype=torch.bfloat16)
    want = quantization_of(json.loads((source / "config.json").read_text()))
    assert cli.main(["quantize", str(plain), "--out", str(tmp_path / "out"), "--like-input", str(source),
                     "--method", "rtn", "--shared-experts", "keep", "--dense-mlp", "keep"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["like_input"]["scheme"].startswith("RTN W4A16")
    got = quantization_of(json.loads((tmp_path / "out" / "config.json").read_text()))
    assert (got.method, got.bits, got.group_size) == (want.method, want.bits, want.group_size) == (
        "compressed-tensors", 4, 16)
