"""The feasibility rules (compressor/feasibility.py): by hand on small limits, read from a config and from a summary
the same way, and applied by the pipeline before any weight is read, by the CLI's recipe validation and by the
Compress tab's estimate."""
import json
import sys
import subprocess

import pytest

from compressor.feasibility import FeasibilityError, ModelLimits, check_slimming, expert_count_problems, slimming_problems
from compressor.recipe import Recipe, SlimmingConfig

DS = ModelLimits(family="deepseek_v3", num_experts=8, top_k=2, width=16, num_layers=3, groups=2, topk_group=1)


@pytest.mark.parametrize("keep,problem", [
    (8, None), (6, None), (4, None),
    (5, "keep a multiple of 2 experts"), (2, "keep at least 4 experts (2 groups x 2)"),
    (1, "the router picks top-2, so keep at least 2"), (9, "the model has only 8")])
def test_expert_counts_of_a_grouped_router_by_hand(keep, problem):
    got = expert_count_problems(DS, keep)
    assert (got == []) if problem is None else (problem in got[0])


def test_selected_groups_times_experts_per_group_must_cover_top_k():
    limits = ModelLimits(family="glm4_moe", num_experts=16, top_k=6, width=8, num_layers=4, groups=4, topk_group=2)
    assert "2 selected groups x 2 experts per group is fewer than top-6: keep at least 12" in \
        expert_count_problems(limits, 8)[0]
    assert expert_count_problems(limits, 12) == []


def test_every_stage_of_a_multi_stage_recipe_is_checked():
    limits = ModelLimits(family="x", num_experts=8, top_k=4, width=16, num_layers=4)
    assert slimming_problems(limits, SlimmingConfig(experts_keep=4), stages=1) == []
    # 8 -> 4 in 3 geometric steps passes through counts the router can still use; with top-k 4 and keep 4 every
    # intermediate count is >= 4, so it is fine; a family refusal and too many dropped layers are not
    refusing = ModelLimits(family="zaya", num_experts=8, top_k=2, width=16, num_layers=4,
                           refusals={"expert_pruning": "MLP router with E+1 balancing biases"})
    problems = slimming_problems(refusing, SlimmingConfig(experts_keep=4, layers_drop=4))
    assert "zaya: expert pruning is not possible: MLP router" in problems[0]
    assert "cannot drop 4 of 4 decoder layers" in problems[-1]
    with pytest.raises(FeasibilityError, match="expert pruning is not possible"):
        check_slimming(refusing, SlimmingConfig(experts_keep=4))
    assert slimming_problems(refusing, SlimmingConfig(expert_keep_ratio=0.5)) == []     # neurons: allowed


def test_limits_from_a_config_and_from_a_summary_agree():
    from compressor.inspect import inspect_model
    from compressor.testing import tiny_moe
    for family in ("deepseek_v3", "mixtral", "qwen3_moe"):
        model = tiny_moe(family)
        assert ModelLimits.from_config(model.config.to_dict()) == ModelLimits.from_summary(inspect_model(model))
    assert ModelLimits.from_config(tiny_moe("deepseek_v3").config.to_dict()) == DS


@pytest.fixture
def deepseek_dir(tmp_path):
    from compressor.testing import char_tokenizer, tiny_moe
    folder = tmp_path / "ds"
    tiny_moe("deepseek_v3").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def test_the_pipeline_refuses_before_reading_any_weight(deepseek_dir, tmp_path, monkeypatch):
    import compressor.pipeline as pipeline
    from compressor.engine import in_memory
    monkeypatch.setattr(in_memory, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    recipe = Recipe.parse({"model": str(deepseek_dir), "slimming": {"experts_keep": 5}, "distill": {"steps": 0}})
    with pytest.raises(FeasibilityError, match="routes in 2 expert groups: keep a multiple of 2"):
        pipeline.run_recipe(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_recipe_validate_names_what_the_model_cannot_take(deepseek_dir, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(Recipe.parse({"model": str(deepseek_dir), "slimming": {"experts_keep": 5}}).to_yaml())
    done = subprocess.run([sys.executable, "-m", "compressor", "recipe", "validate", str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 1 and "keep a multiple of 2 experts (e.g. 4)" in done.stderr
    path.write_text(Recipe.parse({"model": str(deepseek_dir), "slimming": {"experts_keep": 4}}).to_yaml())
    ok = subprocess.run([sys.executable, "-m", "compressor", "recipe", "validate", str(path)], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "valid recipe" in ok.stderr


def test_the_estimate_refuses_what_the_run_would(monkeypatch):
    from compressor.inspect import inspect_model
    from compressor.testing import tiny_moe
    from ui import services
    summary = {**inspect_model(tiny_moe("deepseek_v3")), "tie_word_embeddings": False}
    assert services.estimate_slimming(summary, {"experts_keep": 4}).params_active_after > 0
    with pytest.raises(FeasibilityError, match="keep a multiple of 2"):
        services.estimate_slimming(summary, {"experts_keep": 5})
    json.dumps(summary)
