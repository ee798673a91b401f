"""run_recipe with evaluate.lm_eval: the figures of the compressed model and of the original land in the run's
metrics, on a tiny model (original in memory, and measured before it left memory) and on the demo model."""
import json

import pytest
import torch

from compressor.pipeline import run_recipe
from compressor.recipe import Recipe
from compressor.testing import char_tokenizer, tiny_moe


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    char_tokenizer().save_pretrained(folder)
    tiny_moe("qwen3_moe", width=32, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))


def recipe(model, **over) -> Recipe:
    d = {"model": str(model), "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
         "slimming": {"expert_keep_ratio": 0.5, "neuron_score": "activation"}, "stages": 1,
         "distill": {"steps": 0}, "evaluate": {"tokens": 256, "seq_len": 32, "speed": False,
                                               "lm_eval": {"tasks": ["sotu_cloze"], "limit": 12}}}
    for key, value in over.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    return Recipe.parse(d)


@pytest.mark.parametrize("distill", [{"steps": 0}, {"steps": 2, "batch_size": 2, "seq_len": 32, "cache_teacher_topk": 8}],
                         ids=["original-in-memory", "original-measured-first"])
def test_lm_eval_figures_land_in_the_run(tiny_dir, tmp_path, distill):
    res = run_recipe(recipe(tiny_dir, distill=distill), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    le = saved["evaluation"]["lm_eval"]
    assert le["backend"] == "hf" and le["limit"] == 12
    row = le["tasks"]["sotu_cloze"]
    assert row["model"]["n"] == row["baseline"]["n"] == 12
    assert saved["lm_eval:sotu_cloze"] == row["model"]["acc"] == res.metrics["lm_eval:sotu_cloze"]
    assert saved["baseline_lm_eval:sotu_cloze"] == row["baseline"]["acc"]
    assert "lm-eval sotu_cloze" in (tmp_path / "run" / "checkpoint" / "README.md").read_text()


def test_lm_eval_on_the_demo_run(tmp_path):
    r = recipe("demo", calibration={"tokens": 1024, "seq_len": 128}, evaluate={"tokens": 1024, "seq_len": 128,
               "lm_eval": {"tasks": ["sotu_cloze", "sotu_completion"], "limit": 40}})
    m = run_recipe(r, tmp_path / "run").metrics
    for task in ("sotu_cloze", "sotu_completion"):
        assert 0 <= m[f"lm_eval:{task}"] <= 1 and 0 <= m[f"baseline_lm_eval:{task}"] <= 1
    assert m["baseline_lm_eval:sotu_cloze"] > 0.4                     # the original demo is well above chance


def test_unknown_task_fails_before_any_work(tiny_dir, tmp_path):
    from compressor.evaluate.harness import LmEvalError
    with pytest.raises(LmEvalError, match="unknown lm-eval task not_a_task"):
        run_recipe(recipe(tiny_dir, evaluate={"lm_eval": {"tasks": ["not_a_task"]}}), tmp_path / "run")
    assert not (tmp_path / "run").exists()
