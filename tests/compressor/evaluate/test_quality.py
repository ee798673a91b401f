"""Quality metrics on hand-built language models whose predictions are known exactly."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from compressor.evaluate.quality import (baseline_reference, compare_quality, load_mc_task, mc_accuracy)
from compressor.evaluate.tasks import check_tasks, run_tasks
from compressor.testing import tiny_inputs, tiny_moe

V = 8


class FixedLM(nn.Module):
    """Predicts the same distribution (softmax of `logits` [V]) at every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def windows():
    return torch.randint(0, V, (6, 5), generator=torch.Generator().manual_seed(0))


def test_uniform_model_has_perplexity_v():
    q = compare_quality(FixedLM(torch.zeros(V)), None, windows(), batch_size=4)
    assert q.perplexity == pytest.approx(V, rel=1e-6) and q.tokens == 6 * 4
    assert q.agreement is None and q.kl_to_baseline is None


def test_model_against_itself_agrees_fully_with_zero_kl():
    model = tiny_moe("qwen3_moe")
    ids = tiny_inputs(batch=4, seq=10)
    q = compare_quality(model, model, ids, batch_size=3)
    assert q.agreement == 1.0 and q.kl_to_baseline == pytest.approx(0.0, abs=1e-6)
    assert q.perplexity == pytest.approx(q.baseline_perplexity)


def test_agreement_and_kl_hand_values():
    # model puts p = (.9, .1/7, ...) on token 0; baseline p = (.1/7, .9, ...) on token 1: argmaxes never agree
    a = torch.full((V,), math.log(0.1 / 7)); a[0] = math.log(0.9)
    b = torch.full((V,), math.log(0.1 / 7)); b[1] = math.log(0.9)
    q = compare_quality(FixedLM(a), FixedLM(b), windows(), batch_size=4)
    # KL(b || a) = .9 ln(.9 / (.1/7)) + (.1/7) ln((.1/7) / .9)
    expected = 0.9 * math.log(0.9 / (0.1 / 7)) + (0.1 / 7) * math.log((0.1 / 7) / 0.9)
    assert q.agreement == 0.0 and q.kl_to_baseline == pytest.approx(expected, rel=1e-5)


def test_reference_baseline_matches_live_baseline():
    model, base = tiny_moe("qwen3_moe", seed=0), tiny_moe("qwen3_moe", seed=3)
    ids = tiny_inputs(batch=4, seq=10)
    live = compare_quality(model, base, ids, batch_size=2)
    exact = compare_quality(model, baseline_reference(base, ids, batch_size=2, k=127), ids, batch_size=2)
    approx = compare_quality(model, baseline_reference(base, ids, batch_size=2, k=4), ids, batch_size=2)
    assert exact.agreement == live.agreement and exact.baseline_perplexity == pytest.approx(live.baseline_perplexity)
    assert exact.kl_to_baseline == pytest.approx(live.kl_to_baseline, rel=2e-3)       # float16 storage
    assert approx.kl_to_baseline < live.kl_to_baseline and not approx.kl_exact
    with pytest.raises(ValueError, match="other windows"):
        compare_quality(model, baseline_reference(base, ids, batch_size=2), ids[:2], batch_size=2)


def test_multiple_choice_accuracy(tmp_path, char_tokenizer):
    # the model gives 'a' probability 1/2 and every other id 1/254: ln p(a) = -0.693, ln p(b) = -5.537.
    # "a" (-0.69) beats "bb" (-11.07) either way; "aab" (-6.92, -2.31 per char) loses to "b" (-5.54) on the sum
    # but wins per character
    logits = torch.zeros(128); logits[char_tokenizer.convert_tokens_to_ids("a")] = math.log(127)
    model = FixedLM(logits)
    task = tmp_path / "quiz.jsonl"
    task.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Q", "choices": ["a", "bb"], "answer": 0},
        {"question": "Q", "choices": ["aab", "b"], "answer": 0},
    ]))
    res = mc_accuracy(model, char_tokenizer, load_mc_task(task))
    assert res == {"n": 2, "accuracy": 0.5, "accuracy_norm": 1.0}
    out = run_tasks(model, model, char_tokenizer, [str(task)])
    assert out["quiz"]["model"] == out["quiz"]["baseline"] == res


def test_bad_task_files_and_lm_eval_names(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q", "choices": ["a"], "answer": 3}\n')
    with pytest.raises(ValueError, match="line 1.*answer"):
        load_mc_task(bad)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        check_tasks(["nope.jsonl"])
    with pytest.raises(ValueError, match="hellaswag.*not a .jsonl file.*evaluate.lm_eval.tasks"):
        check_tasks(["hellaswag"])
    from compressor.evaluate.harness import LmEvalError, check_lm_eval
    from compressor.recipe import LmEvalConfig
    monkeypatch.setattr("compressor.evaluate.harness.lm_eval_available", lambda: False)
    with pytest.raises(LmEvalError, match="needs the `lm_eval` package: pip install"):
        check_lm_eval(LmEvalConfig(tasks=["sotu_cloze"]))
