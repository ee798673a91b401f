"""A torchao checkpoint used as a user uses it (issue 27, item 1): the Download tab's two-line snippet (stock
`from_pretrained(path)`, no arguments) generates, and Compare runs a quantized checkpoint written before its
config.json named the experts kernel."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.compare import DecodeSettings, compare_models
from compressor.quantize import quantize_checkpoint
from compressor.recipe import QuantizeConfig
from compressor.testing import char_tokenizer, tiny_moe


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("q") / "w8"
    char_tokenizer().save_pretrained(src)
    tiny_moe("qwen3_moe").save_pretrained(src)
    quantize_checkpoint(src, out, QuantizeConfig(scheme="W8A16", method="rtn", format="torchao"))
    return src, out


def test_the_download_snippet_generates_with_the_quantized_checkpoint(quantized):
    _, out = quantized
    assert json.loads((out / "config.json").read_text())["experts_implementation"] == "eager"
    model = AutoModelForCausalLM.from_pretrained(out)                  # the snippet: no arguments
    assert model.config._experts_implementation == "eager"
    ids = torch.tensor([[3, 4, 5]])
    out_ids = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out_ids.shape == (1, 7)


def test_compare_runs_a_checkpoint_quantized_before_the_config_named_its_kernel(quantized, tmp_path):
    src, out = quantized
    old = tmp_path / "old"
    old.mkdir()
    for f in out.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((old / "config.json").read_text())
    del cfg["experts_implementation"]                                  # as a run quantized before the fix wrote it
    (old / "config.json").write_text(json.dumps(cfg))
    q = AutoModelForCausalLM.from_pretrained(old).eval()
    assert q.config._experts_implementation == "grouped_mm"              # torchao's tensors cannot run it
    ref = AutoModelForCausalLM.from_pretrained(src).eval()
    cmp = compare_models(ref, q, char_tokenizer(), "hello", settings=DecodeSettings(max_new_tokens=5))
    assert len(cmp.b.token_ids) == 5 and len(cmp.steps) == 5


def test_a_quantized_model_counts_the_parameters_of_the_model_it_was_made_from(quantized):
    """torchao's weights all report data_ptr() 0: counted by their own storages, not merged as if tied (the model
    card read params_total 2337536 and params_active -1201408 on the demo)."""
    from compressor.inspect import count_params
    src, out = quantized
    plain = count_params(AutoModelForCausalLM.from_pretrained(src))
    assert count_params(AutoModelForCausalLM.from_pretrained(out)) == plain
    assert 0 < plain.active < plain.total
