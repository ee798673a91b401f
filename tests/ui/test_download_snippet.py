"""The Download tab's load snippet, run as a user runs it on the unzipped checkpoint (issue 27, item 1): a torchao
run's snippet generates, also from a checkpoint quantized before config.json named the experts kernel."""
import json

import pytest

from compressor.quantize import quantize_checkpoint
from compressor.recipe import QuantizeConfig
from compressor.testing import char_tokenizer, tiny_moe
from ui.download import load_snippet

TORCHAO = {"quantize": {"format": "torchao", "scheme": "W8A16"}}


@pytest.mark.parametrize("pinned", [True, False])
def test_a_torchao_runs_snippet_generates_from_its_checkpoint(tmp_path, monkeypatch, pinned):
    src, ckpt = tmp_path / "src", tmp_path / "run-7" / "checkpoint"
    char_tokenizer().save_pretrained(src)
    tiny_moe("qwen3_moe").save_pretrained(src)
    quantize_checkpoint(src, ckpt, QuantizeConfig(scheme="W8A16", method="rtn", format="torchao"))
    if not pinned:                                         # a run quantized before the config named the kernel
        cfg = json.loads((ckpt / "config.json").read_text())
        del cfg["experts_implementation"]
        (ckpt / "config.json").write_text(json.dumps(cfg))
    code = load_snippet(7, TORCHAO)
    assert "torchao" in code and 'experts_implementation="eager"' in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "snippet", "exec"), {})            # prints the continuation; raises if generate() fails


def test_an_unquantized_runs_snippet_is_the_plain_two_lines():
    code = load_snippet(3, {"perplexity": 9.0})
    assert 'from_pretrained(path)\n' in code and "torchao" not in code and "run-3/checkpoint" in code
    assert "compressed-tensors" in load_snippet(4, {"quantize": {"format": "compressed-tensors", "scheme": "W4A16"}})
