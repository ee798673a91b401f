"""Recipes: YAML / JSON round trips, messages naming the bad field, and the `recipe` command."""
import json

import pytest

from compressor.cli import main
from compressor.commands.recipe import example_recipe
from compressor.recipe import RECIPE_VERSION, DistillConfig, Recipe, RecipeError

SPEC_YAML = """
model: demo
calibration: {tokens: 32768, seq_len: 256}
slimming:
  expert_keep_ratio: 0.5
  neuron_score: taylor
  experts_keep: null
  expert_score: reap
  layers_drop: 0
  sparsity: 0.0
  sparsity_allocation: owl
stages: 3
distill: {steps: 300, lr: 3.0e-4, temperature: 2.0, loss: forward_kl, ce_weight: 0.0, on_policy: 0.0}
evaluate: {perplexity: true, speed: true, tasks: []}
seed: 0
"""


def test_the_issue_yaml_parses_and_round_trips():
    recipe = Recipe.from_yaml(SPEC_YAML)
    assert recipe.slimming.expert_keep_ratio == 0.5 and recipe.stages == 3 and recipe.distill.steps == 300
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert Recipe.parse(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert Recipe.from_yaml(json.dumps(recipe.to_dict())) == recipe          # JSON is YAML
    assert recipe == example_recipe()


def test_version_1_recipes_keep_their_even_step_split():
    old = Recipe.from_yaml("version: 1\nstages: 3\ndistill: {steps: 300}\n")
    assert old.version == RECIPE_VERSION and old.distill.final_stage_share is None and old.execution.device == "cpu"
    two = Recipe.from_yaml("version: 2\nexecution: {streaming: \"on\"}\n")
    assert (two.version, two.execution.device, two.execution.streaming) == (RECIPE_VERSION, "cpu", "on")
    assert two.distill.final_stage_share == 0.8                                # version 2 already had the field
    assert Recipe.from_yaml("version: 2\nexecution: {device: auto}\n").execution.device == "auto"   # as written
    assert Recipe.from_yaml("stages: 1").execution.device == "auto"            # a new document: the default
    assert Recipe.from_yaml(old.to_yaml()) == old                              # the upgrade is written out
    assert Recipe.from_yaml("version: 1\ndistill: {final_stage_share: 0.5}").distill.final_stage_share == 0.5
    assert Recipe.from_yaml("stages: 3").distill.final_stage_share == 0.8     # no version: the current one


@pytest.mark.parametrize("text, names", [
    ("slimming: {expert_keep_ratio: 1.5}", ["slimming.expert_keep_ratio"]),
    ("slimming: {expert_keep_ratio: 0.5, neuron_scor: taylor}", ["slimming.neuron_scor", "unknown field"]),
    ("distill: {loss: cross_entropy}", ["distill.loss", "forward_kl"]),
    ("stages: 0", ["stages"]),
    ("calibration: {tokens: 100, seq_len: 256}", ["calibration", "seq_len"]),
    ("distill: {cache_teacher_topk: 16, on_policy: 0.5}", ["distill", "cache_teacher_topk", "on_policy"]),
    ("version: 7", ["version 7"]),
    ("- just a list", ["mapping"]),
    ("evaluate: {lm_eval: {tasks: ['a;b']}}", ["evaluate.lm_eval.tasks.0", "pattern"]),
    ("evaluate: {lm_eval: {backend: tpu}}", ["evaluate.lm_eval.backend", "vllm"]),
    ("quantize: {format: torchao, scheme: W4A16, method: rtn}", ["quantize", "torchao takes W8A16 or FP8"]),
    ("quantize: {format: torchao, scheme: W8A16}", ["quantize", "rounds to nearest only", "method rtn"]),
    ("quantize: {scheme: INT2}", ["quantize.scheme", "FP8"]),
    ("quantize: {experts: FP8_BLOCK}", ["quantize", "use FP8 for experts"]),
    ("quantize: {scheme: keep}", ["quantize.scheme"]),
    ("quantize: {experts: keep, shared_experts: keep, attention: keep, dense_mlp: keep}", ["nothing would be"]),
    ("quantize: {experts: keep}", ["give the experts a scheme"]),
    ("quantize: {scheme: FP8, group_size: 64}", ["group_size applies to the int schemes"]),
])
def test_bad_fields_are_named(text, names):
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(text)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("text, name, words", [
    ("seed: 99999999999999999999", "seed", "less than or equal to 4294967295"),
    ("seed: -1", "seed", "greater than or equal to 0"),
    ("evaluate: {tokens: 1000000000000}", "evaluate.tokens", "less than or equal to 50000000"),
    ("distill: {warmup_steps: 1000000000000}", "distill.warmup_steps", "less than or equal to 10000000"),
    ("distill: {clip_grad: .inf}", "distill.clip_grad", "finite number"),
    ("distill: {clip_grad: .nan}", "distill.clip_grad", "finite number"),
    ("distill: {lr: .inf}", "distill.lr", "finite number"),
    ("distill: {cache_teacher_topk: 100000000}", "distill.cache_teacher_topk", "less than or equal to 1048576"),
    ("slimming: {layers_drop: 1000000000}", "slimming.layers_drop", "less than or equal to 1024"),
    ("slimming: {experts_keep: 1000000000}", "slimming.experts_keep", "less than or equal to 4096"),
    ("model: " + "x" * 5000, "model", "at most 4096 characters"),
    ("evaluate: {tasks: [" + ", ".join(["t.jsonl"] * 65) + "]}", "evaluate.tasks", "at most 64 items"),
])
def test_numbers_and_strings_have_finite_bounds(text, name, words):
    """Values that used to pass and fail late in the worker (inf clip, 1e9 layers dropped, huge seeds)."""
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(text)
    assert f"{name}: " in str(info.value) and words in str(info.value), str(info.value)[:300]


def test_distill_cache_rule_on_the_config_itself():
    with pytest.raises(ValueError, match="hidden_mse_weight"):
        DistillConfig(cache_teacher_topk=8, hidden_mse_weight=1.0)
    assert DistillConfig(cache_teacher_topk=8).cache_teacher_topk == 8


def test_recipe_command_example_and_validate(tmp_path, capsys):
    assert main(["recipe", "--example"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# MoE Compression Studio recipe") and Recipe.from_yaml(text) == example_recipe()
    good = tmp_path / "r.yaml"
    good.write_text(text)
    assert main(["recipe", "validate", str(good)]) == 0
    captured = capsys.readouterr()
    assert Recipe.from_yaml(captured.out) == example_recipe() and "valid recipe" in captured.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("slimming: {experts_keep: 0}\n")
    assert main(["recipe", "validate", str(bad)]) == 1
    assert "slimming.experts_keep" in capsys.readouterr().err
    assert main(["recipe", "validate", str(tmp_path / "missing.yaml")]) == 1
    assert "not found" in capsys.readouterr().err


def test_lm_eval_and_quantize_round_trip():
    r = Recipe.from_yaml("evaluate: {lm_eval: {tasks: [sotu_cloze, arc_easy], limit: 50, num_fewshot: 2}}\n"
                         "quantize: {scheme: FP8}")
    assert r.evaluate.lm_eval.tasks == ["sotu_cloze", "arc_easy"] and r.evaluate.lm_eval.backend == "auto"
    assert r.quantize.scheme == "FP8" and r.quantize.method == "gptq" and r.quantize.format == "compressed-tensors"
    assert Recipe.from_yaml(r.to_yaml()) == r and Recipe.parse(json.loads(json.dumps(r.to_dict()))) == r
    assert Recipe.from_yaml("model: demo").quantize is None


def test_version_3_quantize_stays_torchao_round_to_nearest():
    old = Recipe.from_yaml("version: 3\nquantize: {}\n")
    assert (old.quantize.format, old.quantize.scheme, old.quantize.method) == ("torchao", "W8A16", "rtn")
    fp8 = Recipe.from_yaml("version: 3\nquantize: {scheme: FP8}\n").quantize
    assert (fp8.format, fp8.scheme, fp8.method) == ("torchao", "FP8", "rtn")
    assert Recipe.from_yaml("version: 3\nexecution: {device: auto}").execution.device == "auto"   # v3 had devices
    assert Recipe.from_yaml("version: 3").quantize is None


def test_mixed_precision_plan():
    q = Recipe.from_yaml("quantize: {scheme: W4A16, attention: W8A16, dense_mlp: keep, group_size: 64}").quantize
    assert q.class_schemes() == {"experts": "W4A16", "shared_experts": "W4A16", "attention": "W8A16",
                                 "dense_mlp": None}
    plan = q.plan()
    assert plan.method == "gptq" and plan.scheme("experts").group_size == 64 and plan.scheme("dense_mlp") is None
    assert plan.scheme("attention").group_size == 64 and plan.scheme("attention").bits == 8
    assert q.label == "GPTQ W4A16, attention W8A16, dense mlp keep"
    assert Recipe.from_yaml("quantize: {method: rtn}").quantize.label == "RTN W4A16"
