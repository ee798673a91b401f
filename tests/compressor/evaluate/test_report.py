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


def test_model_and_baseline_speed_use_one_kernel_and_dtype(char_tokenizer):
    """The slimmed model (expert width 15: grouped_mm cannot run it on CPU) and the original are timed in the same
    kernel, chosen on the baseline among the kernels both run; the speed-up comes with the range of its rounds."""
    from compressor.evaluate.kernels import candidate_labels
    base, model = tiny_moe("qwen3_moe", width=16), tiny_moe("qwen3_moe", width=15)
    assert candidate_labels(model) < candidate_labels(base)                 # grouped_mm/float32 is base-only
    report = evaluate(model, base, char_tokenizer, EvaluateConfig(), windows=tiny_inputs(batch=8, seq=24))
    st = report.speed.settings
    assert report.kernels["model"] == report.kernels["baseline"] and st["same_kernel"]
    assert st["kernel"] in candidate_labels(model) and st["kernels"] == {"model": st["kernel"], "baseline": st["kernel"]}
    lo, hi = report.speed.prefill_speedup_range
    assert lo <= report.speed.prefill_speedup <= hi
    assert len(report.speed.rounds["prefill"]) == len(report.speed.rounds["baseline_prefill"]) == 3
    head = report.headline()
    assert head["speed_kernel"] == st["kernel"] and head["prefill_speedup_low"] == lo
    assert "decode tokens/s" in render_table(report) and f"both in {st['kernel']}" in render_table(report)


def test_a_reference_baseline_lends_its_kernel_when_the_model_can_run_it(char_tokenizer):
    from compressor.evaluate.kernels import apply_kernel_
    from compressor.evaluate.speed import measure_speed
    base, model = tiny_moe("qwen3_moe", width=16), tiny_moe("qwen3_moe", width=16, seed=3)
    windows = tiny_inputs(batch=8, seq=24)
    ref = baseline_reference(base, windows, batch_size=8)
    apply_kernel_(base, "eager")
    ref.speed = ref.speeds["eager/float32"] = measure_speed(base, prompt_ids=windows[:2])
    ref.speed.settings["kernel"] = "eager/float32"
    report = evaluate(model, ref, char_tokenizer, EvaluateConfig(), windows=windows)
    st = report.speed.settings
    assert st["kernel"] == "eager/float32" and st["same_kernel"] and not st["interleaved"]
    assert report.speed.baseline_prefill_tokens_per_s == ref.speed.prefill_tokens_per_s
    ref.speeds = {"grouped_mm/bfloat16": ref.speed}                           # timed only in a kernel it cannot use
    ref.speed.settings["kernel"] = "grouped_mm/bfloat16"
    slimmed = tiny_moe("qwen3_moe", width=15, seed=3)
    other = evaluate(slimmed, ref, char_tokenizer, EvaluateConfig(), windows=windows).speed.settings
    assert other["same_kernel"] is False and other["kernel"].startswith("best kernel each")
