"""Adapters: every family's MoE blocks, canonical weights and single-expert maths agree with the model's own forward."""
import pytest
import torch

from compressor.families import UnsupportedModelError, resolve_adapter
from compressor.testing import TINY_FAMILIES, tiny_inputs, tiny_moe


def _captured_expert_calls(model, blocks, ids):
    seen = {}
    hooks = [b.experts.register_forward_hook(lambda m, a, o: seen.__setitem__(id(m), (a, o))) for b in blocks]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_expert_maths_reproduce_the_fused_forward(family):
    model = tiny_moe(family)
    adapter = resolve_adapter(model)
    blocks = adapter.moe_blocks(model)
    assert adapter.family == family
    assert all(b.num_experts == 8 and b.intermediate_size == 16 and b.hidden_size == 32 for b in blocks)
    seen = _captured_expert_calls(model, blocks, tiny_inputs())
    for b in blocks:
        (x, idx, w), out = seen[id(b.experts)]
        ref = torch.zeros_like(x)
        for e in range(b.num_experts):
            tok, pos = torch.where(idx == e)
            ref.index_add_(0, tok, b.expert_output(b.expert_hidden(x[tok], e), e) * w[tok, pos, None])
        torch.testing.assert_close(ref, out, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_canonical_weights_match_single_expert_maths(family):
    """expert_hidden uses the stored layout; canonical gate/up/down must describe the same linear maps."""
    model = tiny_moe(family)
    b = resolve_adapter(model).moe_blocks(model)[0]
    x = torch.randn(5, b.hidden_size)
    gate, up, down = b.gate_weight()[3], b.up_weight()[3], b.down_weight()[3]
    assert gate.shape == up.shape == (b.intermediate_size, b.hidden_size)
    assert down.shape == (b.hidden_size, b.intermediate_size)
    # An expert's hidden activation is a function of (x @ gate.T, x @ up.T) alone: zeroing up row i kills neuron i
    # for the SwiGLU families; for GPT-OSS ((up + 1) * glu) zeroing the gate row AND bias gives glu = 0.
    with torch.no_grad():
        gate[4].zero_()
        if b.layout.has_bias:
            g_pos, _ = b.gate_up_positions(torch.tensor([4]))
            b.experts.gate_up_proj_bias[3, g_pos] = 0.0
        h = b.expert_hidden(x, 3)
    assert torch.all(h[:, 4] == 0)
    # down: output = h @ down.T (+ bias)
    out = b.expert_output(h, 3)
    bias = b.experts.down_proj_bias[3] if b.layout.has_bias else 0.0
    torch.testing.assert_close(out, h @ down.T + bias)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_config_fields(family):
    model = tiny_moe(family)
    a = resolve_adapter(model)
    assert a.num_experts(model.config) == 8
    assert a.top_k(model.config) == 2
    assert a.expert_width(model.config) == 16
    a.set_num_experts_(model.config, 6)
    for f in a.count_fields:
        assert getattr(model.config, f) == 6


def test_deepseek_groups_and_shared_width_rules():
    model = tiny_moe("deepseek_v3")
    a = resolve_adapter(model)
    cfg = model.config
    assert a.num_groups(cfg) == 2 and a.shared_width(cfg) == 16
    with pytest.raises(ValueError, match="multiple of 2"):
        a.check_expert_count(cfg, 5)
    with pytest.raises(ValueError, match="at least 2"):
        a.check_expert_count(cfg, 1)
    a.check_expert_count(cfg, 4)
    assert a.valid_expert_width(cfg, 8) == 8
    assert a.valid_expert_width(cfg, 7) == 4        # shared width 16 must stay a multiple of the expert width
    a.set_expert_width_(cfg, 8)
    assert cfg.moe_intermediate_size == 8 and cfg.n_shared_experts == 2 and a.shared_width(cfg) == 16
    with pytest.raises(ValueError, match="does not divide"):
        a.set_expert_width_(cfg, 3)


def test_too_few_experts_refused():
    model = tiny_moe("mixtral")
    with pytest.raises(ValueError, match="top-2"):
        resolve_adapter(model).check_expert_count(model.config, 1)


def test_dense_model_refused_with_a_clear_message():
    import transformers as tf
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(UnsupportedModelError, match="'llama' is a dense model.*Supported MoE families"):
        resolve_adapter(cfg)


def test_widths_stay_aligned_for_grouped_mm():
    """A bf16 down_proj row of 154 neurons is 308 bytes, not 16-byte aligned: grouped_mm would crash on it."""
    cfg = tiny_moe("qwen3_moe").config
    a = resolve_adapter(cfg)
    assert [a.valid_expert_width(cfg, w) for w in (154, 152, 9, 8, 7, 1)] == [152, 152, 8, 8, 7, 1]
