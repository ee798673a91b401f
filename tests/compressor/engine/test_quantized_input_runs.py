"""A recipe on a block-FP8 checkpoint, both drivers: the same plain checkpoint out, and the result says the input was
quantized and the output is not. (float32 compute dtype: the in-memory driver scores in float32 and the layered one in
the checkpoint's dtype, so on a bf16 checkpoint near-tied neurons may be chosen differently.)"""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.formats.synthetic import to_fp8_
from compressor.pipeline import run_recipe
from compressor.recipe import Recipe
from compressor.testing import char_tokenizer, tiny_moe


pytestmark = pytest.mark.usefixtures("studio_cache")


def _recipe(folder, streaming):
    return Recipe.parse({"model": str(folder), "stages": 1, "seed": 0,
                         "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
                         "slimming": {"expert_keep_ratio": 0.5, "experts_keep": 6},
                         "distill": {"steps": 0}, "evaluate": {"tokens": 256, "seq_len": 32, "speed": False},
                         "execution": {"streaming": streaming}})


def test_both_drivers_read_fp8_and_write_the_same_unquantized_checkpoint(tmp_path):
    src = tmp_path / "fp8"
    tiny_moe("qwen3_moe", layers=2).save_pretrained(src)        # float32: both drivers score in it
    to_fp8_(src, block=(16, 16))
    char_tokenizer().save_pretrained(src)
    with pytest.warns(UserWarning, match="quantized"):              # the in-memory load says so on stderr too
        off = run_recipe(_recipe(src, "off"), tmp_path / "off")
    on = run_recipe(_recipe(src, "on"), tmp_path / "on")
    for run in (on, off):
        q = run.metrics["source"]["quantization"]
        assert q["method"] == "fp8" and q["block"] == [16, 16]
        assert len(run.metrics["notes"]) == 1 and "written unquantized (float32)" in run.metrics["notes"][0]
        config = json.loads((run.checkpoint_dir / "config.json").read_text())
        assert "quantization_config" not in config
    a, b = (AutoModelForCausalLM.from_pretrained(r.checkpoint_dir).state_dict() for r in (on, off))
    assert a.keys() == b.keys() and {t.dtype for t in a.values()} == {torch.float32}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert on.metrics["source"]["fingerprint"] == off.metrics["source"]["fingerprint"]
