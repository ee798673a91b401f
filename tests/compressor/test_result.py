"""The result contract (compressor/result.py): a stored metrics.json read into named fields, old and new."""
import torch

from compressor.result import EvalSet, RunResult

NEW = {"result_version": 1, "perplexity": 95.0, "baseline_perplexity": 92.0, "top1_agreement": 0.8,
       "kl_to_baseline": 0.05, "params_active": 100, "baseline_params_active": 200, "checkpoint_bytes": 4000,
       "source": {"model": "demo", "fingerprint": "abc", "dtype": "bfloat16"},
       "eval_set": {"text": "sotu held-out split", "tokens": 512, "seq_len": 64, "fingerprint": "f1"},
       "evaluation": {"quality": {"kl_exact": False},
                      "speed": {"prefill_speedup": 1.3, "prefill_speedup_range": [0.9, 1.6], "decode_speedup": 1.1,
                                "decode_speedup_range": [1.05, 1.2], "settings": {"kernel": "eager/float32",
                                                                                  "same_kernel": True}},
                      "lm_eval": {"tasks": {"sotu_cloze": {"model": {"acc": 0.4}, "baseline": {"acc": 0.5}}}}},
       "stages": [{"index": 1, "stage": "stage 1/2", "distill": {"steps": 2, "losses": [3.0, 2.5]}},
                  {"index": 2, "stage": "stage 2/2", "distill": {"steps": 3, "losses": [2.9, 2.4, 2.2]},
                   "perplexity": 95.0}],
       "timings": {"total": 12.5}}


def test_a_result_reads_into_named_fields():
    r = RunResult.read(NEW)
    assert r.version == 1 and r.final.perplexity == 95.0 and r.baseline.perplexity == 92.0
    assert r.final.kl_to_baseline == 0.05 and r.final.kl_exact is False        # the key Compare used to drop
    assert r.baseline.params_active == 200 and r.final.lm_eval == {"sotu_cloze": 0.4}
    assert r.baseline.lm_eval == {"sotu_cloze": 0.5} and r.base_model.dtype == "bfloat16"
    assert r.speed.kernel == "eager/float32" and r.speed.within_noise("prefill") is True
    assert r.speed.within_noise("decode") is False
    assert [(p.stage, p.step, p.loss) for p in r.loss_curve()] == [(1, 0, 3.0), (1, 1, 2.5), (2, 2, 2.9), (2, 3, 2.4),
                                                                 (2, 4, 2.2)]
    assert r.stage_starts() == [0, 2] and r.timings == {"total": 12.5}


def test_an_old_result_reads_and_says_why_it_is_not_comparable():
    old = {k: v for k, v in NEW.items() if k not in ("result_version", "eval_set")}
    old["stages"] = [{"index": 1, "distill": {"steps": 10, "first_loss": 3.0, "last_loss": 2.0}}]
    r = RunResult.read(old)
    assert r.version == 0 and r.eval_set is None
    assert [(p.step, p.loss) for p in r.loss_curve()] == [(0, 3.0), (1, 2.0)]
    assert "without a recorded evaluation set" in RunResult.read(NEW).comparable_with(r)
    assert RunResult.read({}).final.perplexity is None


def test_only_matching_base_models_and_evaluation_sets_compare():
    a = RunResult.read(NEW)
    assert a.comparable_with(RunResult.read(NEW)) is None
    other_eval = {**NEW, "eval_set": {**NEW["eval_set"], "tokens": 16384, "fingerprint": "f2"}}
    assert "different evaluation sets (512 tokens x 64" in a.comparable_with(RunResult.read(other_eval))
    other_base = {**NEW, "source": {"model": "upload", "fingerprint": "zzz"}}
    assert "different base models (demo and upload)" in a.comparable_with(RunResult.read(other_base))


def test_the_evaluation_set_fingerprint_follows_the_token_ids():
    w = torch.arange(12).reshape(3, 4)
    a, b = EvalSet.of(w, text="t"), EvalSet.of(w.clone(), text="t")
    assert a == b and a.tokens == 12 and a.seq_len == 4
    assert EvalSet.of(w[:2], text="t").fingerprint != a.fingerprint
