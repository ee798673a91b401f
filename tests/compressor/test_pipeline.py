"""run_recipe end to end on a tiny Qwen3-MoE saved as a Hugging Face folder (char tokenizer, the shipped corpus),
through the `run` and `eval` commands too."""
import contextlib
import io
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import compressor.data as data
from compressor.cli import main
from compressor.engine.stages import teacher_kind
from compressor.pipeline import run_recipe
from compressor.progress import Cancelled
from compressor.recipe import Recipe
from compressor.testing import char_tokenizer, tiny_moe

HELDOUT_CHARS = 40_000     # the char tokenizer encodes the whole held-out text slowly (~4 s); a slice is plenty here


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One thread, a private score cache, a short held-out text, for every test of this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MOE_STUDIO_CACHE", str(tmp_path_factory.mktemp("cache")))
    text = data.load_split("test")[:HELDOUT_CHARS]
    real = data.eval_windows
    mp.setattr(data, "eval_windows", lambda tok, **kw: real(tok, **{"text": text, **kw}))
    mp.setattr("compressor.engine.in_memory.eval_windows", data.eval_windows)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    mp.undo()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    char_tokenizer().save_pretrained(folder)
    tiny_moe("qwen3_moe", width=32, dtype=torch.bfloat16).save_pretrained(folder)      # stored like the demo model
    return folder


def tiny_recipe(model_dir, **over) -> Recipe:
    d = {"model": str(model_dir), "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
         "slimming": {"expert_keep_ratio": 0.5, "neuron_score": "taylor"}, "stages": 2,
         "distill": {"steps": 4, "batch_size": 2, "seq_len": 32, "lr": 1e-3, "warmup_steps": 1},
         "evaluate": {"tokens": 256, "seq_len": 32, "speed": True}, "seed": 0}
    for key, value in over.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    return Recipe.parse(d)


@pytest.fixture(scope="module")
def cli_run(env, model_dir, tmp_path_factory):
    """`python -m compressor run recipe.yaml --out DIR`, once for the module: (out dir, exit code, stdout)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "recipe.yaml").write_text(tiny_recipe(model_dir).to_yaml())
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["run", str(root / "recipe.yaml"), "--out", str(root / "run"), "--no-progress"])
    return root / "run", code, buf.getvalue()


def test_cli_run_writes_checkpoint_recipe_and_metrics(cli_run, model_dir):
    out, code, stdout = cli_run
    assert code == 0 and f"checkpoint: {out / 'checkpoint'}" in stdout and "wall time:" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.json", "recipe.yaml"]
    reloaded = AutoModelForCausalLM.from_pretrained(out / "checkpoint")     # stock transformers, no remote code
    assert reloaded.model.layers[0].mlp.experts.down_proj.shape[-1] == 16
    assert reloaded.dtype == torch.bfloat16                                  # saved in the source's dtype
    assert Recipe.load(out / "recipe.yaml") == tiny_recipe(model_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params_active"] < metrics["baseline_params_active"]
    assert 0 < metrics["top1_agreement"] <= 1 and metrics["kl_to_baseline"] > 0 and metrics["prefill_speedup"] > 0
    assert [s["target"]["width"] for s in metrics["stages"]] == [24, 16]    # 32 * 0.71 -> 24 (multiple of 8), 16
    assert [s["distill"]["steps"] for s in metrics["stages"]] == [1, 3]         # 4 steps, last stage 80%: round(3.2)
    assert all(s["perplexity"] > 0 for s in metrics["stages"])
    assert {"load", "calibrate", "slim", "distill", "final_evaluate", "export"} <= set(metrics["timings"])
    # the final model is evaluated once: stage 1 by itself, stage 2's row is the final evaluation's (issue 27, 5)
    assert "stage_evaluate" not in metrics["stages"][1]["seconds"] and "stage_evaluate" in metrics["stages"][0]["seconds"]
    assert metrics["stages"][1]["perplexity"] == metrics["perplexity"]
    assert metrics["stages"][1]["evaluated"] == "final evaluation of the exported checkpoint"
    card = (out / "checkpoint" / "README.md").read_text()
    assert "expert_keep_ratio: 0.5" in card and "held-out perplexity" in card and "stage 2/2" in card


def test_cli_eval_against_the_original(cli_run, model_dir, capsys):
    out, _, _ = cli_run
    args = ["eval", str(out / "checkpoint"), "--baseline", str(model_dir), "--tokens", "256", "--seq-len", "32",
            "--no-progress"]
    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "metrics.json").read_text())
    assert report["quality"]["perplexity"] == pytest.approx(saved["perplexity"], rel=1e-4)   # same weights, windows
    assert report["size"]["params_active"] == saved["params_active"]
    assert report["kernels"]["model"]["implementation"] in ("eager", "grouped_mm")
    assert main(args + ["--no-speed"]) == 0
    table = capsys.readouterr().out
    assert "top-1 agreement" in table and "prefill tokens/s" not in table


def test_cached_teacher_progress_and_rerun(env, model_dir, tmp_path):
    out, events = tmp_path / "run", []
    recipe = tiny_recipe(model_dir, stages=1, distill={"cache_teacher_topk": 8},
                         slimming={"expert_keep_ratio": 1.0, "experts_keep": 6, "expert_score": "frequency"})
    first = run_recipe(recipe, out, on_progress=events.append)
    assert first.metrics["evaluation"]["quality"]["kl_exact"] is False       # the original left memory
    assert AutoModelForCausalLM.from_pretrained(out / "checkpoint").config.num_experts == 6
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"load", "teacher-cache", "calibrate", "slim", "distill", "evaluate", "export"} <= {e.stage for e in events}
    assert any(e.loss is not None and e.tokens_per_s and e.eta_s is not None for e in events if e.stage == "distill")
    second = run_recipe(recipe, out)                                          # same folder: outputs replaced
    assert second.stages[0]["scores_cache_hit"] and not first.stages[0]["scores_cache_hit"]
    assert second.metrics["perplexity"] == pytest.approx(first.metrics["perplexity"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.json", "recipe.yaml"]


def test_cancel_leaves_no_partial_files(env, model_dir, tmp_path):
    out, seen = tmp_path / "run", []
    with pytest.raises(Cancelled):
        run_recipe(tiny_recipe(model_dir), out, on_progress=seen.append,
                   should_cancel=lambda: any(e.stage == "distill" for e in seen))
    assert not out.exists()
    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(Cancelled):
        run_recipe(tiny_recipe(model_dir), keep, should_cancel=lambda: True)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]


def test_layer_drop_with_hidden_state_loss_from_the_previous_stage(env, model_dir, tmp_path):
    recipe = tiny_recipe(model_dir, stages=1, slimming={"expert_keep_ratio": 1.0, "layers_drop": 1},
                         distill={"steps": 2, "hidden_mse_weight": 0.5, "loss": "reverse_kl", "ce_weight": 0.5,
                                  "teacher": "previous_stage"},
                         evaluate={"speed": False})
    result = run_recipe(recipe, tmp_path / "run")
    dropped = result.stages[0]["slimming"]["operations"][0]
    assert dropped["layers_after"] == 1 and len(dropped["kept"]) == 1
    assert AutoModelForCausalLM.from_pretrained(result.checkpoint_dir).config.num_hidden_layers == 1
    assert result.stages[0]["distill"]["steps"] == 2 and "prefill_speedup" not in result.metrics


@pytest.mark.parametrize("teacher,cached,steps,kind", [
    ("original", False, 3, "original"), ("original", True, 3, "original_cache"),
    ("previous_stage", False, 3, "previous_copy"), ("previous_stage", True, 3, "previous_cache"),
    ("original", True, 0, "none"), ("previous_stage", True, 0, "none"), ("previous_stage", False, 0, "none")])
def test_the_teacher_of_a_stage(teacher, cached, steps, kind):
    assert teacher_kind(teacher=teacher, cached=cached, steps=steps) == kind


def test_a_previous_stage_cached_teacher_with_a_first_stage_of_no_steps(env, model_dir, tmp_path):
    """1 step over 3 stages gives 0/0/1 steps; the first stages used to slice a teacher cache that was never built
    ('NoneType' object has no attribute 'slice'). The card names the saved dtype (bf16), not the float32 work copy."""
    recipe = tiny_recipe(model_dir, stages=3, distill={"steps": 1, "cache_teacher_topk": 8, "teacher": "previous_stage"},
                         evaluate={"speed": False})
    result = run_recipe(recipe, tmp_path / "run")
    assert ["distill" in s for s in result.stages] == [False, False, True]
    assert result.stages[2]["distill"]["steps"] == 1
    card = (result.checkpoint_dir / "README.md").read_text()
    assert '"dtype": "bfloat16"' in card and '"dtype": "float32"' not in card


def test_the_stored_result_has_its_evaluation_set_and_every_distillation_step(cli_run):
    from compressor.result import RunResult
    out, _, _ = cli_run
    result = RunResult.read(json.loads((out / "metrics.json").read_text()))
    assert result.version == 1 and result.eval_set.tokens == 256 and result.eval_set.seq_len == 32
    assert len(result.loss_curve()) == 4 and result.stage_starts() == [0, 1]      # 1 + 3 steps, every one kept
    assert result.final.perplexity > 0 and result.baseline.perplexity > 0 and result.speed.same_kernel
    assert result.base_model.dtype == "bfloat16" and result.comparable_with(result) is None


def test_a_run_reuses_the_scores_explore_computed_on_the_same_model_and_calibration(env, model_dir, tmp_path):
    """Explore's analysis job (`compressor.scoring`) and the pipeline build the same calibration batches for the same
    settings and key the cache by what was computed, so the run's first stage finds the scores."""
    from compressor.scoring import analyze_source, scoring_inputs
    analyze_source(scoring_inputs(str(model_dir), tokens=256, seq_len=32, batch_size=4, taylor=True), streaming="off")
    recipe = tiny_recipe(model_dir, stages=1, distill={"steps": 0}, evaluate={"speed": False})
    assert run_recipe(recipe, tmp_path / "run").stages[0]["scores_cache_hit"] is True
