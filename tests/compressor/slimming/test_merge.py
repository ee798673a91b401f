"""Expert merging (REAM, HC-SMoE, M-SMoE): hand-checked grouping, alignment and folding; identical experts merge
exactly; a fold that weighs only the centroids is pruning; stock reload; every expert lands in one group."""
import copy

import pytest
import torch

from compressor.families import resolve_adapter
from compressor.slimming import ExpertPruneConfig, prune_experts_, save_checkpoint
from compressor.slimming.config import ExpertMergeConfig
from compressor.slimming.merge import MergePlan, fold_block_, merge_experts_
from compressor.slimming.merge_math import (align_neurons, floor_zero_saliency, fold, hierarchical_groups,
                                            ream_groups, ream_similarity)
from compressor.testing import tiny_inputs, tiny_moe


def test_ream_groups_by_hand():
    """E = 6, keep 2, C = 3. Saliency puts 4 then 1 first. Distances from 4: 0 (.1), 5 (.2), 1 (.3), ...; so 4
    takes 0 and 5; then 1 takes its two nearest unassigned: 3 (.1) and 2 (.4)."""
    s = torch.tensor([0.1, 0.8, 0.2, 0.3, 0.9, 0.05])
    d = torch.full((6, 6), 0.9)
    for (i, j), v in {(4, 0): .1, (4, 5): .2, (4, 1): .3, (1, 3): .1, (1, 2): .4, (4, 3): .5, (4, 2): .6}.items():
        d[i, j] = d[j, i] = v
    d.fill_diagonal_(0)
    labels, centroids = ream_groups(saliency=s, distance=d, keep=2, group_size=3)
    assert centroids.tolist() == [4, 1]
    assert labels.tolist() == [0, 1, 1, 1, 0, 0]
    nearest, _ = ream_groups(saliency=s, distance=d, keep=2, group_size=0)       # M-SMoE: nearest leader
    assert nearest.tolist() == [0, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="cannot hold all 6 experts"):
        ream_groups(saliency=s, distance=d, keep=2, group_size=2)


def test_similarity_is_one_for_identical_experts_and_halves_for_opposite_outputs():
    mu = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    s = ream_similarity(mean_outputs=mu, router_probs=None)
    assert s[0, 1] == 1 and s[0, 2] == 0
    p = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 1.0]])
    s = ream_similarity(mean_outputs=mu, router_probs=p)
    assert s[0, 1] == 1 and 0 <= s[0, 2] < 0.5


def test_hierarchical_groups_find_separated_clusters_and_their_central_members():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.12], [5.0, 5.0], [5.2, 5.0], [9.0, 0.0]])
    labels, centroids = hierarchical_groups(features=x, keep=3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert centroids.tolist()[2] == 5 and centroids.tolist()[0] in (0, 1, 2)


def test_alignment_recovers_a_known_permutation():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(12, 40, generator=g)                   # [I, N] activations of the centroid's neurons
    w = torch.randn(12, 9, generator=g)
    pi = torch.randperm(12, generator=g)
    perm = align_neurons(reference=(act, w), member=(act[pi], w[pi]))
    assert torch.equal(act[pi][perm], act)
    assert torch.equal(pi[perm], torch.arange(12))


def test_fold_and_zero_saliency_floor_by_hand():
    t = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert fold(t, weights=torch.tensor([0.75, 0.25])).tolist() == [1.5, 3.0]
    assert floor_zero_saliency(torch.tensor([0.0, 2.0, 0.3], dtype=torch.float64)).tolist() == [0.3, 2.0, 0.3]
    assert floor_zero_saliency(torch.tensor([0.0, 4.0])).tolist() == [0.5, 4.0]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_identical_experts_merge_exactly():
    """Every expert a copy of expert 0: whatever the groups, the fold gives that expert back and routing weights
    still sum to 1 (Mixtral renormalises the top-k), so the merged model equals the original."""
    model = tiny_moe("mixtral")
    with torch.no_grad():
        for blk in resolve_adapter(model).moe_blocks(model):
            for t in blk.tensors().values():
                t.copy_(t[:1].expand_as(t))
    reference = copy.deepcopy(model)
    ids = tiny_inputs(seq=16)
    for method in ("ream", "hc_smoe", "m_smoe"):
        merged = copy.deepcopy(reference)
        report = merge_experts_(merged, [ids], ExpertMergeConfig(experts_keep=3, method=method, group_size=4))
        assert report.experts_after == 3
        torch.testing.assert_close(_logits(merged, ids), _logits(reference, ids), atol=1e-5, rtol=1e-5)


def test_a_fold_that_weighs_only_the_centroids_is_pruning_to_them():
    model = tiny_moe("qwen3_moe")
    pruned = copy.deepcopy(model)
    ids = tiny_inputs(seq=16)
    blocks = resolve_adapter(model).moe_blocks(model)
    keep = torch.tensor([1, 2, 5, 6, 7])
    for blk in blocks:
        labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
        weights = torch.zeros(8)
        weights[keep] = 1.0
        plan = MergePlan(labels=labels, centroids=keep, weights=weights, align=False, similarity=torch.eye(8))
        fold_block_(blk, None, plan)
    resolve_adapter(model).set_num_experts_(model.config, 5)
    scores = {b.layer: torch.zeros(8).index_fill_(0, keep, 1.0) for b in resolve_adapter(pruned).moe_blocks(pruned)}
    prune_experts_(pruned, scores, ExpertPruneConfig(experts_keep=5))
    torch.testing.assert_close(_logits(model, ids), _logits(pruned, ids), atol=0, rtol=0)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "ergo"])
def test_ream_merges_every_expert_once_and_reloads_with_stock_transformers(family, tmp_path):
    """gpt_oss: transposed, interleaved experts with biases; ergo: per-expert output norms."""
    from transformers import AutoModelForCausalLM
    model = tiny_moe(family)
    batches = [tiny_inputs(seq=16, seed=s) for s in range(2)]
    report = merge_experts_(model, batches, ExpertMergeConfig(experts_keep=4, method="ream", group_size=4))
    for layer, groups in report.groups.items():
        assert sorted(e for g in groups for e in g) == list(range(8))
        assert len(groups) == 4 and all(abs(sum(w) - 1) < 1e-5 for w in report.weights[layer])
        assert sorted(report.merged_into(layer).values()) == sorted(sum(([i] * len(g) for i, g in
                                                                       enumerate(sorted(groups))), []))
    assert all(b.num_experts == 4 for b in resolve_adapter(model).moe_blocks(model))
    save_checkpoint(model, None, tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = tiny_inputs(seq=16, seed=9)
    torch.testing.assert_close(_logits(again, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    assert report.to_dict()["layers"][0]["groups"] == report.groups[min(report.groups)]


def test_merging_is_refused_for_group_routing_and_impossible_counts():
    model = tiny_moe("deepseek_v3")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="groups"):
        merge_experts_(model, [tiny_inputs()], ExpertMergeConfig(experts_keep=4))
    with pytest.raises(ValueError):
        merge_experts_(tiny_moe("qwen3_moe"), [tiny_inputs()], ExpertMergeConfig(experts_keep=1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown expert merge"):
        ExpertMergeConfig(experts_keep=4, method="average")


def test_the_recipe_asks_for_a_count_and_refuses_merge_with_sparsity():
    from compressor.recipe import SlimmingConfig
    assert SlimmingConfig(experts_keep=4, expert_merge="hc_smoe").merge_group_size == 16
    with pytest.raises(ValueError, match="set slimming.experts_keep"):
        SlimmingConfig(expert_merge="ream")
    with pytest.raises(ValueError, match="second recipe"):
        SlimmingConfig(experts_keep=4, expert_merge="ream", sparsity=0.5)


def test_slim_command_merges_and_reports_the_groups(tmp_path, capsys):
    """`slim --experts-keep N --merge ream` writes N experts per layer, the groups in slim_report.json."""
    import json

    from compressor import cli
    from compressor.testing import char_tokenizer
    src = tmp_path / "m"
    tiny_moe("qwen3_moe", layers=2).save_pretrained(src)
    char_tokenizer().save_pretrained(src)
    assert cli.main(["slim", str(src), "--experts-keep", "4", "--merge", "ream", "--merge-group-size", "3",
                     "--tokens", "256", "--seq-len", "32", "--no-cache", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "slim_report.json").read_text())
    op = report["operations"][0]
    assert (op["operation"], op["method"], op["experts_after"]) == ("merge_experts", "ream", 4)
    assert all(len(layer["groups"]) == 4 and max(len(g) for g in layer["groups"]) <= 3 for layer in op["layers"])
    assert report["scores_used"]["experts"] == "ream merge"
    config = json.loads((tmp_path / "out" / "checkpoint" / "config.json").read_text())
    assert config["num_experts"] == 4


def test_every_stage_of_a_recipe_keeps_its_merge_settings():
    """Regression: the pipeline restated each stage's slimming field by field and lost expert_merge, so a recipe
    with expert_merge pruned by REAP instead (bench.merge showed equal perplexities for all four methods)."""
    from compressor.distill import plan_stages
    from compressor.engine.stages import stage_slimming as _stage_slimming
    from compressor.recipe import SlimmingConfig
    model = tiny_moe("qwen3_moe")
    final = SlimmingConfig(experts_keep=4, expert_merge="hc_smoe", merge_group_size=3, neuron_score="activation")
    for target in plan_stages(final, stages=2, num_experts=8, width=16):
        stage = _stage_slimming(final, target, model, dropped=0)
        assert (stage.expert_merge, stage.merge_group_size, stage.neuron_score) == ("hc_smoe", 3, "activation")
        assert stage.experts_keep == target.experts


def test_the_model_card_says_which_experts_were_merged_into_which():
    from compressor.evaluate.card import merge_lines
    model = tiny_moe("qwen3_moe", layers=2)
    report = merge_experts_(model, [tiny_inputs(seq=16)], ExpertMergeConfig(experts_keep=4, group_size=3))
    lines = merge_lines([{"stage": "stage 1/1", "index": 1, "slimming": {"operations": [report.to_dict()]}}])
    assert "ream: 8 -> 4 per layer" in lines[1]
    rows = [line for line in lines if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(rows) == 2 and all(line.count("{") == 4 for line in rows)
    first = report.groups[0][0]
    assert "{" + f"{first[0]} (" in rows[0]


def test_a_recipe_that_only_merges_runs_end_to_end_with_stock_reload(tmp_path, monkeypatch):
    """Regression: with nothing else to cut, the pipeline asked the analysis for no score and failed."""
    from transformers import AutoModelForCausalLM

    from compressor.pipeline import run_recipe
    from compressor.recipe import Recipe
    from compressor.testing import char_tokenizer
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m"
    tiny_moe("qwen3_moe", layers=2).save_pretrained(src)
    char_tokenizer().save_pretrained(src)
    rec = Recipe.parse({"model": str(src), "stages": 1, "calibration": {"tokens": 256, "seq_len": 32},
                        "slimming": {"experts_keep": 4, "expert_merge": "ream", "merge_group_size": 3},
                        "distill": {"steps": 0}, "evaluate": {"tokens": 256, "seq_len": 32, "speed": False}})
    res = run_recipe(rec, tmp_path / "run")
    ops = res.stages[0]["slimming"]["operations"]
    assert [o["operation"] for o in ops] == ["merge_experts"] and res.stages[0]["slimming"]["scores_used"] == \
        {"experts": "ream merge"}
    assert AutoModelForCausalLM.from_pretrained(res.checkpoint_dir).config.num_experts == 4
    assert "Merged experts (stage 1, ream: 8 -> 4 per layer)" in (res.checkpoint_dir / "README.md").read_text()
