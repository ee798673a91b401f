"""run_recipe works layer by layer when the recipe (or the model's size) asks for it, with the same outputs as in
memory; what needs the whole model is refused before any work."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.pipeline import run_recipe
from compressor.recipe import Recipe
from compressor.testing import char_tokenizer, tiny_moe


pytestmark = pytest.mark.usefixtures("studio_cache")


def _recipe(folder, streaming: str, **extra) -> Recipe:
    return Recipe.parse({"model": str(folder), "stages": 1, "seed": 0,
                         "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
                         "slimming": {"expert_keep_ratio": 0.5, "experts_keep": 6, "neuron_score": "taylor"},
                         "distill": {"steps": 0}, "evaluate": {"tokens": 256, "seq_len": 32, "speed": False},
                         "execution": {"streaming": streaming}, **extra})


def test_streamed_recipe_gives_the_in_memory_checkpoint_and_figures(tiny_dir, tmp_path):
    events = []
    on = run_recipe(_recipe(tiny_dir, "on"), tmp_path / "on", on_progress=events.append)
    off = run_recipe(_recipe(tiny_dir, "off"), tmp_path / "off")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "on" / "checkpoint", dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "off" / "checkpoint", dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert on.metrics["perplexity"] == pytest.approx(off.metrics["perplexity"], rel=1e-5)
    assert on.metrics["params_total"] == off.metrics["params_total"]
    assert on.metrics["execution"]["streaming"] is True
    assert (on.metrics["execution"]["residency"], off.metrics["execution"]["residency"]) == ("layer by layer",
                                                                                              "in memory")
    assert off.metrics["execution"]["reason"] == "streaming off (asked)"
    assert on.metrics["source"]["dtype"] == off.metrics["source"]["dtype"]
    saved = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert saved["stages"][0]["stage"].endswith("(layer by layer)")
    assert (tmp_path / "on" / "recipe.yaml").is_file() and (tmp_path / "on" / "checkpoint" / "README.md").is_file()
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and events[-1].stage == "done"
    assert on.result.base_model.fingerprint == off.result.base_model.fingerprint     # comparable both ways
    assert on.result.comparable_with(off.result) is None


def test_both_drivers_export_the_stored_dtype_when_config_names_none(tmp_path):
    """config.json without a dtype and bf16 weights: both drivers write bf16 (the export wrote float32 in memory
    and bfloat16 layer by layer, a checkpoint twice the size depending on the machine's memory)."""
    from safetensors import safe_open

    from compressor.testing import char_tokenizer
    src = tmp_path / "src"
    tiny_moe("qwen3_moe", layers=2, dtype=torch.bfloat16).save_pretrained(src)
    char_tokenizer().save_pretrained(src)
    config = json.loads((src / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (src / "config.json").write_text(json.dumps(config))
    for mode in ("on", "off"):
        run_recipe(_recipe(src, mode), tmp_path / mode)
        dtypes = set()
        for shard in (tmp_path / mode / "checkpoint").glob("*.safetensors"):
            with safe_open(shard, "pt") as f:
                dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"BF16"}, mode


def test_what_needs_the_whole_model_is_refused_before_any_work(tiny_dir, tmp_path):
    recipe = _recipe(tiny_dir, "on", stages=3)
    recipe.distill.steps = 10
    with pytest.raises(ValueError, match=r"runs layer by layer \(streaming on \(asked\)\), so: distill.steps is 10 "
                                         r".*stages is 3"):
        run_recipe(recipe, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_a_family_that_cannot_stream_is_refused_before_any_work(tmp_path):
    """zaya's layers pass routing state along: refused by the layer-by-layer driver's check, before scoring."""
    src = tmp_path / "zaya"
    tiny_moe("zaya", layers=2).save_pretrained(src)
    char_tokenizer().save_pretrained(src)
    with pytest.raises(ValueError, match=r"zaya cannot be processed layer by layer: its decoder layers pass routing "
                                         r"state.*execution.streaming: off"):
        run_recipe(_recipe(src, "on", slimming={"expert_keep_ratio": 0.5}), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
