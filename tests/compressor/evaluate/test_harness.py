"""lm-evaluation-harness: the shipped offline tasks on tiny models and the demo, figures in the report, and clear
errors for unknown tasks, hub tasks offline and an unavailable vllm backend."""
import importlib.util
import json

import pytest
import torch

from compressor.evaluate import harness
from compressor.evaluate.harness import LmEvalError, check_lm_eval, resolve_backend, run_lm_eval
from compressor.evaluate.local_tasks import LOCAL_TASKS, TASK_DIR, jsonl_text, task_rows
from compressor.evaluate.quality import load_mc_task, mc_accuracy
from compressor.evaluate.report import evaluate, render_table
from compressor.recipe import EvaluateConfig, LmEvalConfig
from compressor.testing import tiny_inputs, tiny_moe


@pytest.mark.parametrize("name", LOCAL_TASKS)
def test_shipped_task_files_are_rebuilt_from_the_heldout_text(name):
    assert (TASK_DIR / f"{name}.jsonl").read_text(encoding="utf-8") == jsonl_text(task_rows(name))
    rows = task_rows(name)
    assert len(rows) == 400 and all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 for r in rows)
    labels = [r["label"] for r in rows]
    assert all(60 <= labels.count(k) <= 140 for k in range(4))        # the answer is not always in one place
    assert harness.local_task_config(name)["dataset_kwargs"]["data_files"]["test"] == str(TASK_DIR / f"{name}.jsonl")


def test_lm_eval_accuracy_equals_the_projects_own_choice_scoring(char_tokenizer):
    """With one token per character, lm-eval's log p(" " + choice | context) is what mc_accuracy computes."""
    model = tiny_moe("qwen3_moe")
    res = run_lm_eval(model, char_tokenizer, LmEvalConfig(tasks=["sotu_cloze"], limit=24), backend="hf")
    assert res["backend"] == "hf" and res["tasks"]["sotu_cloze"]["n"] == 24
    items = load_mc_task(TASK_DIR / "sotu_cloze.jsonl")[:24]
    ours = mc_accuracy(model, char_tokenizer, [{**it, "choices": [" " + c for c in it["choices"]]} for it in items])
    assert res["tasks"]["sotu_cloze"]["acc"] == pytest.approx(ours["accuracy"])


def test_report_carries_model_and_baseline_figures(char_tokenizer):
    model, base = tiny_moe("qwen3_moe", seed=0), tiny_moe("qwen3_moe", seed=3)
    cfg = EvaluateConfig(speed=False, lm_eval=LmEvalConfig(tasks=["sotu_completion"], limit=8))
    report = evaluate(model, base, char_tokenizer, cfg, windows=tiny_inputs(batch=4, seq=16))
    row = report.lm_eval["tasks"]["sotu_completion"]
    assert row["model"]["n"] == row["baseline"]["n"] == 8 and report.lm_eval["backend"] == "hf"
    head = report.headline()
    assert head["lm_eval:sotu_completion"] == row["model"]["acc"]
    assert head["baseline_lm_eval:sotu_completion"] == row["baseline"]["acc"]
    assert "lm-eval sotu_completion acc" in render_table(report)
    json.dumps(report.to_dict())


def test_demo_model_beats_chance_on_the_cloze_task():
    from compressor.sources import load_model
    demo = load_model("demo", dtype=torch.float32)
    res = run_lm_eval(demo.model, demo.tokenizer, LmEvalConfig(tasks=["sotu_cloze"], limit=100), backend="hf")
    assert res["tasks"]["sotu_cloze"]["acc"] > 0.4                      # chance is 0.25; the demo scores ~0.6


def test_unknown_task_is_refused_with_the_shipped_names():
    with pytest.raises(LmEvalError, match="unknown lm-eval task no_such_task_xyz.*sotu_completion, sotu_cloze"):
        check_lm_eval(LmEvalConfig(tasks=["sotu_cloze", "no_such_task_xyz"]))


def test_hub_task_offline_says_so(char_tokenizer, monkeypatch):
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LmEvalError, match="arc_easy fetch their data set from the Hugging Face hub.*sotu_cloze"):
        run_lm_eval(tiny_moe("qwen3_moe"), char_tokenizer, LmEvalConfig(tasks=["arc_easy"], limit=2), backend="hf")


def test_vllm_backend_not_available_is_a_clear_error(monkeypatch):
    if importlib.util.find_spec("vllm") is None:
        assert "not installed" in harness.vllm_unavailable_reason()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LmEvalError, match="backend vllm is not available: no CUDA GPU"):
        check_lm_eval(LmEvalConfig(tasks=["sotu_cloze"], backend="vllm"))
    assert resolve_backend("auto") == "hf" and resolve_backend("hf") == "hf"


def test_cli_eval_runs_lm_eval_and_refuses_unknown_names(capsys):
    from compressor.cli import main
    args = ["eval", "demo", "--no-perplexity", "--no-speed", "--no-progress", "--threads", "1"]
    assert main(args + ["--lm-eval", "sotu_cloze", "--lm-eval-limit", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lm_eval"]["tasks"]["sotu_cloze"]["model"]["n"] == 10 and out["lm_eval"]["backend"] == "hf"
    assert main(args + ["--lm-eval", "sotu_cloze,bogus_task_q"]) == 1
    assert "unknown lm-eval task bogus_task_q" in capsys.readouterr().err
    assert main(args + ["--lm-eval", "sotu_cloze", "--lm-eval-backend", "vllm"]) == 1
    assert "backend vllm is not available" in capsys.readouterr().err


def test_gsm8k_exact_match_is_read_under_the_strict_filter():
    results = {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,flexible-extract": 0.41,
                                     "exact_match_stderr,flexible-extract": 0.02, "exact_match,strict-match": 0.37,
                                     "exact_match_stderr,strict-match": 0.03},
                           "arc_easy": {"acc,none": 0.6, "acc_norm,none": 0.55}},
               "n-samples": {"gsm8k": {"original": 1319, "effective": 100}}}
    metrics = harness._metrics(results)
    assert metrics["gsm8k"] == {"exact_match": 0.37, "exact_match_stderr": 0.03, "n": 100}
    assert metrics["arc_easy"] == {"acc": 0.6, "acc_norm": 0.55}


def test_presets_expand_in_the_task_list(monkeypatch):
    assert harness.expand_presets(["sotu_cloze", "offline"]) == ["sotu_cloze"] + [t for t in LOCAL_TASKS
                                                                                 if t != "sotu_cloze"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LmEvalError, match="'papers' tasks .*arc_easy.*not reachable here.*offline preset"):
        check_lm_eval(LmEvalConfig(tasks=["papers"]))
