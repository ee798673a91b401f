"""`python -m compressor run RECIPE --nproc 2` gives the one-process run: the same distillation loss curve, final
weights and perplexity, with the engine and N in metrics.json; the teacher's top-k cache is reused by the second run."""
import json

import pytest
import torch
from safetensors.torch import load_file

import compressor.data as data
from compressor.cli import main
from compressor.recipe import Recipe
from compressor.testing import char_tokenizer, tiny_moe


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private studio cache, one thread, a short held-out text (the char tokenizer is slow on the whole text)."""
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    text = data.load_split("test")[:40_000]
    real = data.eval_windows
    monkeypatch.setattr("compressor.engine.in_memory.eval_windows", lambda tok, **kw: real(tok, **{"text": text, **kw}))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(before)


def run(root, recipe: Recipe, *extra) -> dict:
    (root / "recipe.yaml").write_text(recipe.to_yaml())
    out = root / f"run{'-'.join(extra)}"
    assert main(["run", str(root / "recipe.yaml"), "--out", str(out), "--no-progress", *extra]) == 0
    return json.loads((out / "metrics.json").read_text()) | {"weights": load_file(out / "checkpoint" /
                                                                                  "model.safetensors")}


def test_two_processes_give_the_one_process_run(env):
    model = env / "model"
    char_tokenizer().save_pretrained(model)
    tiny_moe("qwen3_moe", width=32, dtype=torch.float32).save_pretrained(model)
    recipe = Recipe.parse({
        "model": str(model), "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
        "slimming": {"expert_keep_ratio": 0.5, "neuron_score": "activation"}, "stages": 1,
        "distill": {"steps": 3, "batch_size": 2, "seq_len": 32, "lr": 1e-3, "warmup_steps": 1,
                    "cache_teacher_topk": 16},
        "evaluate": {"tokens": 256, "seq_len": 32, "speed": False}, "seed": 0})
    one, two = run(env, recipe), run(env, recipe, "--nproc", "2")
    assert one["execution"]["distill"] == {"engine": "single", "nproc": 1, "teacher": "top-16 cache",
                                           "teacher_cache": {**one["execution"]["distill"]["teacher_cache"],
                                                             "hit": False}}
    assert two["execution"]["distill"]["engine"] == "fsdp2" and two["execution"]["distill"]["nproc"] == 2
    assert two["execution"]["distill"]["teacher_cache"]["hit"]                    # built by the first run
    d1, d2 = one["stages"][0]["distill"], two["stages"][0]["distill"]
    assert (d1["engine"], d2["engine"], d2["nproc"]) == ("single", "fsdp2", 2)
    assert d2["losses"] == pytest.approx(d1["losses"], abs=1e-6) and len(d1["losses"]) == 3
    worst = max((one["weights"][k] - two["weights"][k]).abs().max().item() for k in one["weights"])
    assert worst < 1e-5
    assert two["perplexity"] == pytest.approx(one["perplexity"], rel=1e-4)
