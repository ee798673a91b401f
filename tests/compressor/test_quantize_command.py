"""`python -m compressor quantize`: in memory and layer by layer, and options refused with their reason."""
import json

import pytest
import torch
import transformers as tf

from compressor import cli
from compressor.quantization.export import is_compressed_tensors_checkpoint
from compressor.testing import char_tokenizer, tiny_inputs, tiny_moe


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "src"
    char_tokenizer().save_pretrained(out)
    tiny_moe("qwen3_moe", dtype=torch.bfloat16).save_pretrained(out)
    return out


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_gptq_w4_experts_w8_attention(folder, tmp_path, capsys, streaming):
    out = tmp_path / f"q-{streaming}"
    rc = cli.main(["quantize", str(folder), "--out", str(out), "--group-size", "16", "--attention", "W8A16",
                   "--calibration-tokens", "256", "--seq-len", "32", "--min-expert-tokens", "4",
                   "--streaming", streaming])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    gptq = report["details"]["gptq_matrices"] if "details" in report else report["gptq_matrices"]
    assert gptq > 0
    assert is_compressed_tensors_checkpoint(out) and (out / "tokenizer.json").is_file()
    with torch.no_grad():
        assert torch.isfinite(tf.AutoModelForCausalLM.from_pretrained(out)(tiny_inputs()).logits).all()


def test_bad_options_say_what_to_change(folder, tmp_path, capsys):
    assert cli.main(["quantize", str(folder), "--out", str(tmp_path / "x"), "--scheme", "FP8",
                     "--group-size", "16"]) == 1
    assert "group_size applies to the int schemes" in capsys.readouterr().err
    assert cli.main(["quantize", str(folder), "--out", str(tmp_path / "y"), "--method", "rtn"]) == 1
    assert "32 input columns are not a multiple of group_size 128" in capsys.readouterr().err
