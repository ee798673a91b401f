"""Layer dropping: equals skipping the layers; renumbered for the KV cache; config rewritten so a reload works
(every family's reload after dropping is in test_export.py)."""
import copy

import pytest
import torch
import transformers as tf

from compressor.families import resolve_adapter
from compressor.inspect import count_params
from compressor.slimming import LayerDropConfig, drop_layers_, lowest_layers, save_checkpoint, verify_reload
from compressor.testing import TINY_FAMILIES, tiny_config, tiny_inputs, tiny_moe


def _skipping(model, layers):
    for i in layers:
        model.model.layers[i].forward = lambda hidden_states, *a, **k: hidden_states
    return model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_dropping_equals_skipping(family, helpers):
    model = tiny_moe(family, layers=3)
    reference = copy.deepcopy(model)
    ids = tiny_inputs()
    _, _, layer_scores = helpers.scores(model, seed=3)
    report = drop_layers_(model, layer_scores, LayerDropConfig(layers_drop=1))
    assert report.dropped == [int(layer_scores.argmin())]
    assert model.config.num_hidden_layers == len(model.model.layers) == report.layers_after
    torch.testing.assert_close(helpers.logits(model, ids), helpers.logits(_skipping(reference, report.dropped), ids),
                               atol=1e-6, rtol=0)
    for new_idx, layer in enumerate(model.model.layers):
        assert layer.self_attn.layer_idx == new_idx
    assert report.params_after == count_params(model) and report.params_after.total < report.params_before.total


@pytest.mark.parametrize("family", ["gpt_oss", "deepseek_v3"])
def test_kv_cache_after_dropping(family, helpers):
    """Incremental decoding uses layer_idx to index the cache: cached logits must equal a full forward."""
    model = tiny_moe(family, layers=3)
    ids = tiny_inputs()
    drop_layers_(model, torch.tensor([0.5, 0.1, 0.9, 0.7][:len(model.model.layers)]), LayerDropConfig(layers_drop=1))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[:, -1]
        past = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        step = model(input_ids=ids[:, -1:], past_key_values=past, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_gpt_oss_layer_types_follow_the_kept_layers():
    model = tiny_moe("gpt_oss", layers=4)
    types = list(model.config.layer_types)
    drop_layers_(model, torch.tensor([0.9, 0.1, 0.8, 0.7]), LayerDropConfig(layers_drop=1))
    assert model.config.layer_types == [types[0], types[2], types[3]]


def test_deepseek_first_k_dense_replace_is_recounted():
    model = tiny_moe("deepseek_v3", layers=3)          # 4 decoder layers: layer 0 dense
    drop_layers_(model, torch.tensor([0.1, 0.5, 0.6, 0.7]), LayerDropConfig(layers_drop=1))
    assert model.config.first_k_dense_replace == 0
    assert [b.layer for b in resolve_adapter(model).moe_blocks(model)] == [0, 1, 2]
    model = tiny_moe("deepseek_v3", layers=3)
    drop_layers_(model, torch.tensor([0.9, 0.5, 0.1, 0.7]), LayerDropConfig(layers_drop=1))
    assert model.config.first_k_dense_replace == 1


def test_qwen_mlp_only_layers_and_sparse_step_are_rewritten(tmp_path):
    """decoder_sparse_step=2 makes layers 1 and 3 MoE; dropping layer 0 leaves [1, 2, 3] -> MoE, dense, MoE."""
    config = tiny_config("qwen3_moe", layers=4)
    config.decoder_sparse_step = 2
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    assert [b.layer for b in resolve_adapter(model).moe_blocks(model)] == [1, 3]
    drop_layers_(model, torch.tensor([0.1, 0.5, 0.6, 0.7]), LayerDropConfig(layers_drop=1))
    assert model.config.mlp_only_layers == [1] and model.config.decoder_sparse_step == 1
    save_checkpoint(model, None, tmp_path)
    assert verify_reload(tmp_path, model, tiny_inputs(), experts_implementation="eager") <= 1e-6


def test_refusals():
    model = tiny_moe("mixtral")
    with pytest.raises(ValueError, match="keep at least one"):
        drop_layers_(model, torch.tensor([0.1, 0.2]), LayerDropConfig(layers_drop=2))
    with pytest.raises(ValueError, match="2 decoder layers"):
        drop_layers_(model, torch.tensor([0.1, 0.2, 0.3]), LayerDropConfig(layers_drop=1))
    ds = tiny_moe("deepseek_v3")                      # layers 0 (dense), 1, 2 (MoE)
    with pytest.raises(ValueError, match="remove every MoE layer"):
        drop_layers_(ds, torch.tensor([0.9, 0.1, 0.2]), LayerDropConfig(layers_drop=2))
    assert len(ds.model.layers) == 3


def test_lowest_layers_hand_example():
    assert lowest_layers(scores=torch.tensor([0.3, 0.05, 0.2, 0.12]), drop=2) == [1, 3]
    assert lowest_layers(scores=torch.tensor([0.1, 0.1, 0.5]), drop=1) == [1]        # tie -> the later layer
