"""The two drivers are twins: the same recipe on the same float32 checkpoint gives bitwise the same checkpoint and the
same figures in memory and layer by layer, for every cut the layer-by-layer driver runs (neurons and experts by
score, layer drop, Wanda sparsity with OWL over sequential calibration, a REAM expert merge)."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.pipeline import run_recipe
from compressor.recipe import Recipe

CUTS = {
    "neurons+experts": {"expert_keep_ratio": 0.5, "experts_keep": 6, "neuron_score": "taylor"},
    "layers": {"layers_drop": 1},
    "sparsity": {"sparsity": 0.5, "sparsity_allocation": "owl"},
    "merge": {"experts_keep": 6, "expert_merge": "ream"},
}


pytestmark = pytest.mark.usefixtures("studio_cache")


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_both_drivers_give_the_same_checkpoint_and_figures(tiny_dir, tmp_path, cut):
    runs = {}
    for streaming in ("off", "on"):
        recipe = Recipe.parse({"model": str(tiny_dir), "stages": 1, "seed": 0,
                               "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
                               "slimming": CUTS[cut], "distill": {"steps": 0},
                               "evaluate": {"tokens": 256, "seq_len": 32, "speed": False},
                               "execution": {"streaming": streaming}})
        runs[streaming] = run_recipe(recipe, tmp_path / streaming)
    memory, layered = runs["off"], runs["on"]
    assert (memory.metrics["execution"]["residency"], layered.metrics["execution"]["residency"]) == (
        "in memory", "layer by layer")
    a, b = (AutoModelForCausalLM.from_pretrained(r.checkpoint_dir, dtype=torch.float32).state_dict()
            for r in (memory, layered))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    for key in ("params_total", "params_active"):
        assert memory.metrics[key] == layered.metrics[key]
    assert memory.metrics["perplexity"] == pytest.approx(layered.metrics["perplexity"], rel=1e-5)
    assert memory.metrics["source"] == layered.metrics["source"]          # fingerprint, export dtype, quantization
