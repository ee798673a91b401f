"""Expert slimming: ratio 1.0 is the identity; slicing equals zeroing the removed neurons; widths and configs agree."""
import copy

import pytest
import torch

from compressor.families import resolve_adapter
from compressor.inspect import count_params
from compressor.slimming import NeuronSlimConfig, slim_neurons_, top_neurons
from compressor.testing import TINY_FAMILIES, tiny_inputs, tiny_moe


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_keep_ratio_one_gives_identical_logits(family, helpers):
    model = tiny_moe(family)
    ids = tiny_inputs()
    before = helpers.logits(model, ids)
    neurons, _, _ = helpers.scores(model)
    report = slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=1.0))
    assert report.width == report.width_before == 16
    assert report.params_after == report.params_before
    assert torch.equal(helpers.logits(model, ids), before)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_slimming_equals_zeroing_the_removed_neurons(family, helpers):
    model = tiny_moe(family)
    reference = copy.deepcopy(model)
    ids = tiny_inputs()
    neurons, _, _ = helpers.scores(model, seed=1)
    report = slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=0.5))
    assert report.width == 8
    with torch.no_grad():
        for blk in resolve_adapter(reference).moe_blocks(reference):
            down = blk.down_weight()                                     # [E, H, I] view
            for e, kept in enumerate(report.kept[blk.layer]):
                drop = sorted(set(range(blk.intermediate_size)) - set(kept.tolist()))
                down[e][:, drop] = 0.0
    torch.testing.assert_close(helpers.logits(model, ids), helpers.logits(reference, ids), atol=1e-5, rtol=0)
    # the kept ids are the top half of every expert's scores
    for layer, kept in report.kept.items():
        top = neurons[layer].argsort(dim=1, descending=True)[:, :8].sort(dim=1).values
        assert torch.equal(kept, top)
    blocks = resolve_adapter(model).moe_blocks(model)
    assert all(b.intermediate_size == 8 for b in blocks)
    assert resolve_adapter(model).expert_width(model.config) == 8
    assert report.params_after == count_params(model)
    assert report.params_after.total < report.params_before.total


def test_deepseek_width_keeps_the_shared_expert_size(helpers):
    """Shared width = moe_intermediate_size * n_shared_experts = 16: width 6 is not expressible, 4 is (16 / 4)."""
    model = tiny_moe("deepseek_v3")
    shared_before = resolve_adapter(model).shared_width(model.config)
    neurons, _, _ = helpers.scores(model)
    report = slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=6 / 16))
    assert (report.width_requested, report.width) == (6, 4)
    assert model.config.moe_intermediate_size == 4 and model.config.n_shared_experts == 4
    assert resolve_adapter(model).shared_width(model.config) == shared_before == 16
    assert report.to_dict()["width"] == 4


def test_top_neurons_hand_example():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [3.0, 2.0, 1.0, 0.0]])
    assert top_neurons(scores=scores, width=2).tolist() == [[1, 2], [0, 1]]     # tie 0.5/0.5 -> lower id
    with pytest.raises(ValueError):
        top_neurons(scores=scores, width=5)


def test_scores_of_the_wrong_shape_are_refused(helpers):
    model = tiny_moe("qwen3_moe")
    neurons, _, _ = helpers.scores(model)
    neurons[0] = neurons[0][:, :10]
    with pytest.raises(ValueError, match=r"shape \(8, 10\).*\[experts, width\] = \[8, 16\]"):
        slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=0.5))
    del neurons[0]
    with pytest.raises(ValueError, match="no neuron scores for MoE layer 0"):
        slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=0.5))
