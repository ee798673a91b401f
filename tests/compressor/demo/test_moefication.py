"""MoEfication math on a tiny dense Llama: equal groups, exactness with every expert active, router training."""
import pytest
import torch

from compressor.demo.moefication import (balanced_clusters, group_permutation, group_scores, mlp_activations,
                                         moefy, router_recall, topk_targets, train_router)


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
                      tie_word_embeddings=True, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_balanced_clusters_equal_groups_and_recover_planted_structure():
    torch.manual_seed(0)
    centres = torch.randn(4, 20) * 5
    truth = torch.arange(4).repeat_interleave(6)
    feats = centres[truth] + 0.1 * torch.randn(24, 20)
    labels = balanced_clusters(feats, groups=4)
    assert labels.bincount(minlength=4).tolist() == [6, 6, 6, 6]
    for e in range(4):   # each planted cluster lands in one group
        assert labels[truth == e].unique().numel() == 1


def test_balanced_clusters_refuses_uneven_split():
    with pytest.raises(ValueError, match="equal groups"):
        balanced_clusters(torch.randn(10, 3), groups=4)


def test_group_permutation_and_scores():
    labels = torch.tensor([1, 0, 1, 0])
    assert group_permutation(labels, groups=2).tolist() == [1, 3, 0, 2]
    acts = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    assert group_scores(acts, labels, groups=2).tolist() == [[2.5, 4.0]]
    assert topk_targets(torch.tensor([[0.1, 0.9, 0.5]]), top_k=2).tolist() == [[0.0, 1.0, 1.0]]


@pytest.mark.parametrize("experts", [2, 4])
def test_all_experts_active_equals_dense(experts):
    dense = tiny_llama()
    gen = torch.Generator().manual_seed(1)
    perms = [torch.randperm(48, generator=gen) for _ in dense.model.layers]
    routers = [torch.zeros(experts, 32) for _ in dense.model.layers]   # equal weights 1/E
    moe = moefy(dense, perms=perms, routers=routers, top_k=experts)
    ids = torch.randint(0, 64, (2, 16), generator=gen)
    with torch.no_grad():
        ref, got = dense(ids).logits, moe(ids).logits
    assert type(moe).__name__ == "MixtralForCausalLM"
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_topk_routing_adds_only_the_chosen_groups():
    """Top-1 with a router that always picks expert 0 = the dense MLP restricted to expert 0's neurons."""
    dense = tiny_llama()
    perms = [torch.arange(48) for _ in dense.model.layers]
    big = torch.zeros(2, 32)
    moe = moefy(dense, perms=perms, routers=[big for _ in dense.model.layers], top_k=1)
    for layer in dense.model.layers:   # zero the neurons of expert 1 in the dense model
        layer.mlp.down_proj.weight.data[:, 24:] = 0
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)


def test_router_training_lowers_loss_and_predicts_groups():
    """Neurons of group e read direction d_e (gate and up), so a token along d_e fires group e: a linear router
    can learn it; before training every logit is 0 (loss log 2)."""
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(4, 32, generator=gen)
    truth = torch.arange(4).repeat_interleave(12)
    gate = 2 * dirs[truth] + 0.3 * torch.randn(48, 32, generator=gen)
    up = 2 * dirs[truth] + 0.3 * torch.randn(48, 32, generator=gen)
    x = torch.randn(4096, 32, generator=gen)
    acts = mlp_activations(x, gate=gate, up=up)
    labels = balanced_clusters(acts[:1024].abs().T, groups=4)
    assert labels.bincount().tolist() == [12, 12, 12, 12]
    scores = group_scores(acts, labels, groups=4)
    w, losses = train_router(x[:3584], scores[:3584], top_k=1, steps=200, batch=512, lr=1e-2)
    assert abs(losses[0] - 0.6931) < 1e-3
    assert sum(losses[-20:]) / 20 < 0.7 * losses[0]
    assert router_recall(x[3584:], w, scores[3584:], top_k=1) > 0.6     # chance: 0.25


def test_shared_neurons_are_copied_into_every_expert_and_counted_once():
    """S shared neurons in every expert: top_k = E with a zero router is still the dense model, and top-1 with any
    router gives the chosen group's neurons plus the shared ones (the dense MLP with the other groups zeroed)."""
    from compressor.demo.moefication import routed_neurons, shared_neurons
    dense = tiny_llama()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 32, generator=gen)
    mlp = dense.model.layers[0].mlp
    acts = mlp_activations(x, gate=mlp.gate_proj.weight.detach(), up=mlp.up_proj.weight.detach())
    shared = shared_neurons(acts, down=mlp.down_proj.weight.detach(), count=16)
    contrib = (acts.pow(2).mean(0).sqrt() * mlp.down_proj.weight.detach().norm(dim=0))
    assert set(shared.tolist()) == set(contrib.topk(16).indices.tolist())
    routed = routed_neurons(48, shared)                                     # 32 neurons -> 4 experts of 8
    perms = [routed for _ in dense.model.layers]
    sh = [shared for _ in dense.model.layers]
    ids = torch.randint(0, 64, (2, 12), generator=gen)
    moe = moefy(dense, perms=perms, routers=[torch.zeros(4, 32)] * 2, shared=sh, top_k=4)
    assert moe.config.intermediate_size == 24
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)
    router = torch.randn(4, 32, generator=gen)
    moe1 = moefy(dense, perms=perms, routers=[router] * 2, shared=sh, top_k=1)
    block = moe1.model.layers[0].mlp
    chosen = (x @ router.T).argmax(-1)                                      # [64] the expert of each token
    groups = routed.view(4, 8)
    expected = torch.stack([
        (acts[t, torch.cat([groups[e], shared])] * mlp.down_proj.weight.detach()[:, torch.cat([groups[e], shared])]).sum(1)
        for t, e in enumerate(chosen.tolist())])                            # [64, 32]
    with torch.no_grad():
        torch.testing.assert_close(block(x[None])[0], expected, rtol=1e-4, atol=1e-5)


def test_neurons_that_are_not_a_permutation_are_refused():
    dense = tiny_llama()
    bad = [torch.arange(40) for _ in dense.model.layers]       # 8 neurons missing
    with pytest.raises(ValueError, match="not a permutation"):
        moefy(dense, perms=bad, routers=[torch.zeros(4, 32)] * 2, top_k=2)
