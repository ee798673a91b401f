import json

import pytest

from compressor.evaluate.report import evaluate, render_table
from compressor.evaluate.quality import baseline_reference
from compressor.recipe import EvaluateConfig
from compressor.testing import tiny_inputs, tiny_moe


def test_evaluate_model_against_itself(tmp_path, char_tokenizer):
    model = tiny_moe("qwen3_moe")
    task = tmp_path / "t.jsonl"
    task.write_text('{"question": "Q:", "choices": [" yes", " no"], "answer": 0}\n')
    windows = tiny_inputs(batch=8, seq=24)
    cfg = EvaluateConfig(tasks=[str(task)])
    report = evaluate(model, model, char_tokenizer, cfg, windows=windows)
    assert report.quality.agreement == 1.0 and report.quality.kl_to_baseline == pytest.approx(0, abs=1e-6)
    assert report.size.params_total == report.baseline_size.params_total
    assert report.speed.prefill_speedup > 0 and report.speed.settings["interleaved"]
    assert report.kernels["model"]["implementation"] in ("eager", "grouped_mm")
    assert report.tasks["t"]["model"]["accuracy"] == report.tasks["t"]["baseline"]["accuracy"]
    json.dumps(report.to_dict())
    head = report.headline()
    assert head["top1_agreement"] == 1.0 and "prefill_speedup" in head
    table = render_table(report)
    for row in ("perplexity", "top-1 agreement", "params active / token", "prefill tokens/s", "t accuracy"):
        assert row in table


def test_evaluate_against_reference_without_speed(char_tokenizer):
    model, base = tiny_moe("qwen3_moe", seed=0), tiny_moe("qwen3_moe", seed=2)
    windows = tiny_inputs(batch=8, seq=24)
    ref = baseline_reference(base, windows, batch_size=8)
    report = evaluate(model, ref, char_tokenizer, EvaluateConfig(speed=False), windows=windows)
    assert report.speed is None and not report.quality.kl_exact and 0 <= report.quality.agreement < 1
    assert "top-k" in render_table(report)


def test_evaluate_without_baseline(char_tokenizer):
    report = evaluate(tiny_moe("qwen3_moe"), None, char_tokenizer, EvaluateConfig(speed=False),
                      windows=tiny_inputs(batch=4, seq=24))
    assert report.quality.agreement is None and report.baseline_size is None
    rows = {r.split("  ")[0]: r for r in render_table(report).splitlines()}
    assert rows["params total"].split()[-2:] == ["-", "-"]
