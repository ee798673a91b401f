"""The Compress form holds the residency and the expert merge (issue 27 item 4, issue 24), built and called without a
server: `execution.streaming` as auto / in memory / layer by layer with what auto picks for this model and why (the
pipeline's own rule), layer-local recovery steps, a pasted recipe's execution and block-wise values kept, and the
merge choice (prune by score, REAM, HC-SMoE, M-SMoE; REAM's group size) validated by the recipe's rules."""
import gradio as gr
import pytest
import yaml

from compressor.recipe import Recipe
from ui import compress, compress_controls, recipe_form

ORDER = compress_controls.ORDER
SUMMARY = {"family": "qwen3_moe", "num_experts": 8, "top_k": 2, "num_layers": 4, "params_total": 1_000_000,
           "params_active": 600_000, "expert_intermediate_size": 64, "hidden_size": 32, "vocab_size": 100,
           "moe_layers": [0, 1, 2, 3]}
MODEL = {"source": "demo", "label": "demo", "model_id": 1, "fingerprint": "d", "summary": SUMMARY}


def _values(**changes) -> list:
    """The form's values for the default recipe on MODEL, with `changes` by control name."""
    values = recipe_form.form_values(Recipe(model="demo"), SUMMARY)
    for name, value in changes.items():
        values[ORDER.index(name)] = value
    return values


def _recipe(values) -> Recipe:
    return Recipe.parse(yaml.safe_load(compress.preview(MODEL, *values)[1]))


def test_the_form_has_the_residency_and_the_merge_choices_after_the_old_controls():
    demo = gr.Blocks()
    with demo:
        tab = compress.build()
    assert ORDER[2] == "experts_keep" and ORDER[4] == "layers_drop" and ORDER[21] == "quantize"
    assert [c for c in tab.controls] == [getattr(tab, name) for name in ORDER]
    assert {v for _, v in tab.streaming.choices} == {"auto", "off", "on"}
    assert any("layer by layer" in label for label, _ in tab.streaming.choices)
    assert {v for _, v in tab.expert_merge.choices} == {"prune", "ream", "hc_smoe", "m_smoe"}


def test_auto_says_what_it_picks_for_this_model_from_the_machines_memory(monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "64gb")
    card, _, note, _, _ = compress.preview(MODEL, *_values())
    assert "auto picks in memory for this model" in note and "64.00 GB" in note and "msg-error" not in card
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "4mb")                   # 1 M params x 4 bytes x 5 > half of 4 MB
    card, _, note, _, shown = compress.preview(MODEL, *_values())
    assert "auto picks layer by layer for this model" in note and "more than half" in note
    assert "msg-error" in card and "distill.steps" in card            # what layer by layer refuses, named
    chosen = compress.preview(MODEL, *_values(streaming="off"))[2]
    assert "in memory (chosen)" in chosen and "auto would pick layer by layer" in chosen


def test_layer_by_layer_with_block_wise_recovery_is_a_recipe(monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "64gb")
    values = _values(streaming="on", blockwise_steps=25, steps=0, stages=1, keep_ratio=0.5)
    recipe = _recipe(values)
    assert recipe.execution.streaming == "on" and recipe.distill.blockwise_steps == 25
    card, _, note, _, blockwise = compress.preview(MODEL, *values)
    assert "msg-error" not in card and "layer by layer (chosen)" in note and blockwise["visible"] is True
    assert compress.preview(MODEL, *_values(streaming="off"))[4]["visible"] is False
    refused = compress.preview(MODEL, *_values(streaming="off", blockwise_steps=5, steps=0, stages=1))[0]
    assert "msg-error" in refused and "blockwise_steps" in refused


def test_a_pasted_recipes_execution_and_block_wise_values_are_kept():
    pasted = Recipe.parse({"model": "demo", "stages": 1, "slimming": {"expert_keep_ratio": 0.5},
                           "distill": {"steps": 0, "blockwise_steps": 40, "blockwise_lr": 5e-5, "batch_size": 2},
                           "execution": {"streaming": "on", "device": "cpu", "spill_mb": 64}})
    out = compress.load_recipe(MODEL, pasted.to_yaml(), None)
    values, status = list(out[:compress.N_CONTROLS]), out[compress.N_CONTROLS]
    values[2], values[4] = values[2]["value"], values[4]["value"]       # the fitted sliders' values
    assert values[ORDER.index("streaming")] == "on" and values[ORDER.index("blockwise_steps")] == 40
    assert _recipe(values) == pasted                                    # nothing reset to the defaults
    assert "Kept as loaded" in status and "execution.spill_mb: 64" in status and "reset" not in status


def test_the_merge_choice_makes_a_merge_recipe_and_comes_back(monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "64gb")
    values = _values(experts_keep=4, expert_merge="ream", merge_group_size=3)
    recipe = _recipe(values)
    assert (recipe.slimming.expert_merge, recipe.slimming.experts_keep, recipe.slimming.merge_group_size) == \
        ("ream", 4, 3)
    assert compress.preview(MODEL, *values)[3]["visible"] is True                 # REAM's C shows
    assert compress.preview(MODEL, *_values(experts_keep=4, expert_merge="hc_smoe"))[3]["visible"] is False
    assert _recipe(_values(experts_keep=4)).slimming.expert_merge is None         # prune by the expert score
    back = recipe_form.form_values(recipe, SUMMARY)
    assert back[ORDER.index("expert_merge")] == "ream" and back[ORDER.index("merge_group_size")] == 3


@pytest.mark.parametrize("changes, needle", [
    (dict(expert_merge="m_smoe"), "experts_keep"),                               # all experts kept: nothing to fold
    (dict(expert_merge="ream", experts_keep=4, sparsity=0.5), "sparsity"),       # the recipe's rule
])
def test_a_merge_the_recipe_refuses_is_refused_on_the_form(changes, needle):
    card, _, _, merge_group, _ = compress.preview(MODEL, *_values(**changes))
    assert "msg-error" in card and needle in card
    assert merge_group["visible"] is (changes["expert_merge"] == "ream")      # shown even while refused
