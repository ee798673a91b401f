"""Calibration hooks on every tiny family: routing, REAP, padding, neurons, block influence, hook removal."""
import pytest
import torch

from compressor.families import resolve_adapter
from compressor.importance import AnalyzeConfig, analyze, collect_scores
from compressor.testing import TINY_FAMILIES, tiny_inputs, tiny_moe

NO_TAYLOR = AnalyzeConfig(taylor=False)


def _batch(ids, mask=None):
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_frequency_sums_to_top_k_and_counts_every_token(family):
    model = tiny_moe(family)
    ids = tiny_inputs()
    report = analyze(model, [_batch(ids)], config=NO_TAYLOR)
    ex = report.experts
    assert ex.tokens == ids.numel() == report.meta["tokens"]
    assert torch.allclose(ex.frequency.sum(1), torch.full((len(ex.layers),), float(ex.top_k), dtype=torch.float64))
    assert (ex.counts.sum(1) == ex.top_k * ids.numel()).all()
    assert ex.layers == [b.layer for b in resolve_adapter(model).moe_blocks(model)]
    used = ex.counts > 0
    assert (ex.reap[used] > 0).all() and (ex.man[used] > 0).all()
    assert (ex.reap[~used] == 0).all() and (ex.man[~used] == 0).all() and (ex.max_abs[~used] == 0).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_reap_and_ean_sum_equal_direct_recomputation_on_two_tokens(family):
    model = tiny_moe(family)
    blocks = resolve_adapter(model).moe_blocks(model)
    seen = []
    handle = blocks[0].experts.register_forward_hook(lambda m, a, o: seen.append([t.detach().clone() for t in a]))
    ids = tiny_inputs(batch=1, seq=2)
    try:
        report = analyze(model, [_batch(ids)], config=NO_TAYLOR)
    finally:
        handle.remove()
    x, idx, w = seen[0]                                     # [2, H], [2, k], [2, k]
    E = blocks[0].num_experts
    expected_sum, expected_n, expected_ean = (torch.zeros(E, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        for t in range(2):
            for slot in range(idx.shape[1]):
                e = int(idx[t, slot])
                # f_e(x) through the family's own experts kernel, routing the token to e alone with weight 1
                f = blocks[0].experts(x[t:t + 1], torch.tensor([[e]]), torch.tensor([[1.0]], dtype=w.dtype))
                expected_sum[e] += float(w[t, slot]) * float(f.double().norm())
                expected_ean[e] += float(f.double().norm())
                expected_n[e] += 1
    expected = torch.where(expected_n > 0, expected_sum / expected_n.clamp_min(1), torch.zeros(E, dtype=torch.float64))
    assert torch.allclose(report.experts.reap[0], expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(report.experts.counts[0], expected_n)
    assert torch.allclose(report.experts.ean_sum[0], expected_ean, rtol=1e-5, atol=1e-7)   # REAP's ean_sum


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_padding_changes_nothing(family):
    model = tiny_moe(family)
    a, b = tiny_inputs(batch=1, seq=8, seed=1), tiny_inputs(batch=1, seq=12, seed=2)
    separate = analyze(model, [_batch(a), _batch(b)], config=NO_TAYLOR)
    padded_a = torch.cat([a, torch.zeros(1, 4, dtype=a.dtype)], 1)       # right padding, pad id 0
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 8:] = 0
    together = analyze(model, [_batch(torch.cat([padded_a, b]), mask)], config=NO_TAYLOR)
    assert together.meta["tokens"] == separate.meta["tokens"] == 20
    assert torch.equal(together.experts.counts, separate.experts.counts)
    for name in ("reap", "man", "weighted_frequency", "max_abs"):
        assert torch.allclose(getattr(together.experts, name), getattr(separate.experts, name), rtol=1e-4, atol=1e-6)
    assert torch.allclose(together.neurons.activation, separate.neurons.activation, rtol=1e-4, atol=1e-6)
    assert torch.equal(together.layers.tokens, separate.layers.tokens)
    assert torch.allclose(together.layers.block_influence, separate.layers.block_influence, rtol=1e-4, atol=1e-6)
    assert torch.allclose(together.layers.dlp, separate.layers.dlp, rtol=1e-4)
    for name, sq in separate.layers.wanda_inputs.items():
        assert torch.allclose(together.layers.wanda_inputs[name], sq, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_zeroed_down_column_scores_zero(family):
    model = tiny_moe(family)
    blk = resolve_adapter(model).moe_blocks(model)[0]
    ids = tiny_inputs(batch=2, seq=16)
    before = analyze(model, [_batch(ids)], config=NO_TAYLOR)
    e = int(before.experts.counts[0].argmax())               # a used expert
    with torch.no_grad():
        blk.down_weight()[e, :, 3] = 0                        # canonical view writes through to the parameter
    act = analyze(model, [_batch(ids)], config=NO_TAYLOR).neurons.activation
    assert act[0, e, 3] == 0
    assert (act[0, e, :3] > 0).all() and (act[0, e, 4:] > 0).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_block_influence_identity_zero_and_sign_flip_two(family):
    model = tiny_moe(family)
    layers = resolve_adapter(model).decoder_layers(model)
    # registered before the collector's hooks, so the collector sees the replaced output
    h1 = layers[0].register_forward_hook(lambda m, args, out: args[0])
    h2 = layers[1].register_forward_hook(lambda m, args, out: -args[0])
    try:
        report = analyze(model, [_batch(tiny_inputs())], config=AnalyzeConfig(taylor=False, want=("layers",)))
    finally:
        h1.remove()
        h2.remove()
    bi = report.layers.block_influence
    assert bi[0].item() == pytest.approx(0.0, abs=1e-6)
    assert bi[1].item() == pytest.approx(2.0, abs=1e-6)
    assert report.experts is None and report.neurons is None


def test_hooks_removed_after_context_even_on_error():
    model = tiny_moe("qwen2_moe")
    adapter = resolve_adapter(model)
    before = _hook_count(model)
    with collect_scores(model, adapter) as col:
        assert _hook_count(model) > before
        model(tiny_inputs())
    assert _hook_count(model) == before
    assert col.result()[0].counts.sum() > 0
    with pytest.raises(ZeroDivisionError):
        with collect_scores(model, adapter):
            1 / 0
    assert _hook_count(model) == before


def test_mask_of_the_wrong_size_is_refused_with_a_clear_message():
    model = tiny_moe("mixtral")
    with collect_scores(model, resolve_adapter(model)) as col:
        mask = torch.ones(1, 5, dtype=torch.long)
        mask[0, -1] = 0
        col.set_mask(mask)
        with pytest.raises(RuntimeError, match="set_mask"):
            model(tiny_inputs())


def test_wanda_inputs_cover_attention_shared_and_expert_maps_but_not_routers():
    model = tiny_moe("qwen2_moe")
    report = analyze(model, [_batch(tiny_inputs())], config=NO_TAYLOR)
    names = set(report.layers.wanda_inputs)
    assert "model.layers.0.self_attn.q_proj" in names
    assert "model.layers.0.mlp.shared_expert.down_proj" in names
    assert "model.layers.1.mlp.experts.gate_up" in names and "model.layers.1.mlp.experts.down" in names
    assert not any("shared_expert_gate" in n or n.endswith(".gate") for n in names)
    # q_proj sees every token: ||X_j||^2 equals the hand sum over the layer's normed inputs
    gate_up = report.layers.wanda_inputs["model.layers.1.mlp.experts.gate_up"]
    assert gate_up.shape == (8, 32) and (gate_up >= 0).all()
    assert ((report.layers.dlp > 0) & (report.layers.owl >= 0) & (report.layers.owl < 1)).all()
