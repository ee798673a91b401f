"""`python -m compressor inspect / slim` on quantized checkpoints as a user runs them: layer by layer and in memory
give the same bf16 checkpoint, which stock transformers loads (issue 22)."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor import cli
from compressor.formats.synthetic import to_fp8_, to_mxfp4_
from compressor.testing import char_tokenizer, tiny_inputs, tiny_moe



pytestmark = pytest.mark.usefixtures("studio_cache")


def _folder(tmp_path, family, write, **shape):
    folder = tmp_path / family
    tiny_moe(family, dtype=torch.bfloat16, layers=3, **shape).save_pretrained(folder)
    write(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def _slim(folder, out, streaming, capsys):
    args = ["slim", str(folder), "--out", str(out), "--expert-keep-ratio", "0.5", "--experts-keep", "6",
            "--tokens", "256", "--seq-len", "32", "--no-cache", "--streaming", streaming]
    assert cli.main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("family, write, shape, exact", [
    ("qwen3_moe", lambda p: to_fp8_(p, block=(16, 16)), {}, True),
    # gpt-oss: the in-memory run scores in float32 and the streamed one in bf16 (scores ~1e-5 apart on the plain
    # bf16 model too); on the 4-bit grid that flips one near-tied neuron choice in layer 1, so layer 0 is compared
    ("gpt_oss", to_mxfp4_, {"width": 32}, False),
])
def test_slim_both_ways_writes_the_same_plain_checkpoint(tmp_path, capsys, family, write, shape, exact):
    folder = _folder(tmp_path, family, write, **shape)
    assert cli.main(["inspect", str(folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization"]["bits"] in (4, 8) and info["checkpoint_bytes"] < info["dequantized_bytes"]
    on = _slim(folder, tmp_path / "on", "on", capsys)
    with pytest.warns(UserWarning, match="the input is quantized"):
        off = _slim(folder, tmp_path / "off", "off", capsys)
    assert on["streamed"] is True and off["streamed"] is False and on["params_after"] == off["params_after"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "on" / "checkpoint")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "off" / "checkpoint")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if exact or ".layers.0." in k)
    config = json.loads((tmp_path / "on" / "checkpoint" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    for out in ("on", "off"):                                      # the report says the input was quantized
        report = json.loads((tmp_path / out / "slim_report.json").read_text())
        assert report["input_quantization"]["bits"] in (4, 8)
        assert "written unquantized (bfloat16)" in report["notes"][0]
    assert a.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 6
    with torch.no_grad():
        assert torch.isfinite(a(tiny_inputs()).logits).all()
