"""compressor.compare: same settings and seed for both models, teacher-forced agreement and top-5, checked by hand."""
import pytest
import torch

from compressor.compare import DecodeSettings, compare_models, generate, teacher_forced_steps
from compressor.testing import char_tokenizer, tiny_moe


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def pair():
    return tiny_moe("qwen3_moe", seed=0), tiny_moe("qwen3_moe", seed=5)


def test_a_model_against_itself_agrees_everywhere(tokenizer, pair):
    a, _ = pair
    cmp = compare_models(a, a, tokenizer, "hello", settings=DecodeSettings(max_new_tokens=6))
    assert cmp.a.token_ids == cmp.b.token_ids and len(cmp.a.token_ids) == 6
    assert cmp.same_prefix == 6 and cmp.agreement_rate == 1.0
    assert [s.position for s in cmp.steps] == list(range(5, 11))
    assert all(s.top_a == s.top_b for s in cmp.steps)


def test_sampling_repeats_with_the_seed_and_changes_without(tokenizer, pair):
    a, _ = pair
    s = DecodeSettings(max_new_tokens=12, do_sample=True, temperature=1.5, seed=3)
    first, again = generate(a, tokenizer, "abc", settings=s), generate(a, tokenizer, "abc", settings=s)
    other = generate(a, tokenizer, "abc", settings=DecodeSettings(**{**s.__dict__, "seed": 4}))
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


def test_greedy_continuation_is_the_argmax_chain(tokenizer, pair):
    a, _ = pair
    gen = generate(a, tokenizer, "xy", settings=DecodeSettings(max_new_tokens=3))
    ids = tokenizer("xy", return_tensors="pt").input_ids
    with torch.no_grad():
        for t in gen.token_ids:
            nxt = int(a(input_ids=ids).logits[0, -1].argmax())
            assert nxt == t
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)


def test_agreement_and_top5_match_a_direct_forward(tokenizer, pair):
    a, b = pair
    cmp = compare_models(a, b, tokenizer, "moe", settings=DecodeSettings(max_new_tokens=5))
    ids = torch.tensor([tokenizer("moe").input_ids + cmp.a.token_ids])
    with torch.no_grad():
        pa = a(input_ids=ids).logits[0].softmax(-1)
        pb = b(input_ids=ids).logits[0].softmax(-1)
    for step in cmp.steps:
        t = step.position
        assert step.agree == bool(pa[t - 1].argmax() == pb[t - 1].argmax())
        probs = [p for _, p in step.top_b]
        assert probs == sorted(probs, reverse=True) and len(probs) == 5
        assert probs[0] == pytest.approx(float(pb[t - 1].max()), rel=1e-5)
        assert step.token == tokenizer.decode([int(ids[0, t])])
    expected = sum(bool(pa[t - 1].argmax() == pb[t - 1].argmax()) for t in range(3, 8)) / 5
    assert cmp.agreement_rate == pytest.approx(expected)


def test_refusals(tokenizer, pair):
    a, _ = pair
    with pytest.raises(ValueError, match="prompt is empty"):
        compare_models(a, a, tokenizer, "  ", settings=DecodeSettings())
    with pytest.raises(ValueError, match="temperature"):
        DecodeSettings(temperature=0)
    other_vocab = tiny_moe("qwen3_moe", vocab=96)
    with pytest.raises(ValueError, match="different vocabularies"):
        teacher_forced_steps(a, other_vocab, tokenizer, torch.tensor([[5, 6, 7]]), start=1)
