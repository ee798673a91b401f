"""compressor.estimate: hand-computed numbers, and agreement with real cuts on tiny models of every family."""
import math

import pytest
import torch

from compressor.estimate import ModelShape, SlimSettings, bytes_per_param, estimate, kept_width
from compressor.families import resolve_adapter
from compressor.inspect import count_params, inspect_model
from compressor.testing import TINY_FAMILIES, tiny_moe

# L=2 MoE layers, E=4, k=2, I=8, H=4, V=10, untied, float32. By hand:
#   expert 3*4*8 = 96, router 4*4 = 16, layer rest (attention 64 + norms 8) = 72, embeddings 2*10*4 = 80, final norm 4
#   T = 80 + 4 + 2 * (72 + 4*96 + 16) = 1028;  A = T - 2 * (4-2) * 96 = 644
HAND = ModelShape(num_layers=2, moe_layers=2, num_experts=4, top_k=2, expert_width=8, hidden=4, vocab=10,
                  params_total=1028, params_active=644, bytes_per_param=4.0, tied_embeddings=False)


def test_parts_read_off_the_summary():
    assert HAND.expert_params == 96
    assert HAND.neuron_params == 12
    assert HAND.embedding_params == 80
    assert HAND.layer_rest_params == 72


def test_identity_changes_nothing():
    est = estimate(HAND, SlimSettings())
    assert (est.params_total_after, est.params_active_after) == (1028, 644)
    assert est.checkpoint_bytes_after == est.checkpoint_bytes_before == 4112
    assert est.speedup == 1.0


def test_every_cut_at_once_by_hand():
    # keep 0.5 -> I'=4, expert 48; keep 3 experts; drop 1 layer; 50% sparsity.
    est = estimate(HAND, SlimSettings(expert_keep_ratio=0.5, experts_keep=3, layers_drop=1, sparsity=0.5))
    # left: embeddings 80 + final norm 4 + one layer (rest 72 + 3 experts * 48 + router 3*4)
    assert est.params_total_after == 80 + 4 + 72 + 3 * 48 + 12 == 312
    assert est.params_active_after == 80 + 4 + 72 + 2 * 48 + 12 == 264
    assert (est.expert_width_after, est.experts_after, est.layers_after, est.moe_layers_after) == (4, 3, 1, 1)
    assert est.checkpoint_bytes_after == 312 * 4
    # never sparsified: embeddings 80 + router 12 + norms (2*1+1)*4 = 104
    assert est.nonzero_active_after == 264 - 0.5 * (264 - 104) == 184
    # FLOPs = 2 * (active - untied LM-head-free embedding 40)
    assert est.flops_per_token_before == 2 * (644 - 40) == 1208
    assert est.flops_per_token_after == 2 * (264 - 40)
    assert math.isclose(est.speedup, 1208 / 448)
    assert math.isclose(est.speedup_sparse, 1208 / 288)
    assert any("stored" in n for n in est.notes)


def test_tied_embeddings_count_once_and_are_the_lm_head():
    tied = ModelShape(**{**HAND.__dict__, "params_total": 988, "params_active": 604, "tied_embeddings": True})
    assert tied.embedding_params == 40 and tied.layer_rest_params == 72
    assert estimate(tied, SlimSettings()).flops_per_token_before == 2 * 604


@pytest.mark.parametrize("bad, words", [
    (SlimSettings(experts_keep=1), "the router picks top-2, so keep at least 2"),
    (SlimSettings(experts_keep=5), "the model has only 4"),
    (SlimSettings(layers_drop=2), "keep at least one (layers_drop <= 1)"),
    (SlimSettings(expert_keep_ratio=0.0), "(0, 1]"),
])
def test_refused_settings_say_why(bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        estimate(HAND, bad)


def test_kept_width_is_the_slimming_rule():
    from compressor.families import resolve_adapter
    from compressor.slimming.config import NeuronSlimConfig
    from compressor.testing import tiny_config
    adapter, config = resolve_adapter(tiny_config("qwen3_moe")), tiny_config("qwen3_moe")
    for width in (1, 7, 16, 384, 1024):
        for r in (0.01, 0.05, 0.25, 0.3, 0.5, 0.63, 0.794, 0.999, 1.0):
            rule = adapter.valid_expert_width(config, NeuronSlimConfig(keep_ratio=r).target_width(width))
            assert kept_width(width, r) == rule, (width, r)
    assert kept_width(384, 0.4) == 152          # round(153.6) = 154 -> aligned down to a multiple of 8


def test_dtype_bytes():
    assert bytes_per_param("bfloat16") == 2 and bytes_per_param("float32") == 4
    assert bytes_per_param("mixed(bfloat16,float32)") == 4
    with pytest.raises(ValueError, match="unknown dtype"):
        bytes_per_param("complex-thing")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_matches_real_neuron_and_expert_cuts(family):
    """Cut a tiny model of every family with the adapter's own surgery; the estimate must agree with the counts."""
    model = tiny_moe(family, width=16, experts=8, top_k=2)
    summary = inspect_model(model) | {"tie_word_embeddings": bool(model.config.tie_word_embeddings)}
    shape = ModelShape.from_summary(summary)
    keep_e = 4
    est = estimate(shape, SlimSettings(expert_keep_ratio=0.5, experts_keep=keep_e))
    adapter = resolve_adapter(model)
    for blk in adapter.moe_blocks(model):
        blk.keep_experts_(torch.arange(keep_e))
        blk.keep_neurons_(torch.arange(8).expand(keep_e, 8))
    real = count_params(model)
    assert est.expert_width_after == 8
    # exact but for router biases (GPT-OSS) and score-correction biases (DeepSeek): E - E' per layer
    slack = 4 * shape.moe_layers
    assert abs(est.params_total_after - real.total) <= slack, (est.params_total_after, real.total)
    assert abs(est.params_active_after - real.active) <= slack, (est.params_active_after, real.active)
