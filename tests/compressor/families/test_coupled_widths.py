"""Coupled widths (issue 22): where the expert-width field also sizes the shared expert (Hunyuan, DeepSeek-V4,
Llama-4), neuron slimming cuts the shared expert to the same width by its data-free scores and the config rebuilds
the model; where it sizes something the studio does not cut (Jamba's dense MLPs, Inkling's router) the refusal is
known from config.json alone, before any calibration, and is in `inspect`'s `refusals`."""
import pytest
import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.families.shared_mlp import keep_mlp_neurons_, mlp_neuron_scores, shared_keep
from compressor.feasibility import ModelLimits, slimming_problems
from compressor.inspect import inspect_model
from compressor.recipe import SlimmingConfig
from compressor.slimming import NeuronSlimConfig, slim_neurons_
from compressor.slimming.structure import check_structure
from compressor.testing import tiny_config, tiny_inputs, tiny_moe


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(2, 3, bias=False), nn.Linear(2, 3, bias=False)
        self.down_proj = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.gate_proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]))   # norms 1, 2, 5
            self.up_proj.weight.fill_(1.0)                                                  # norms sqrt 2
            self.down_proj.weight.copy_(torch.tensor([[3.0, 1.0, 0.1], [4.0, 0.0, 0.0]]))   # norms 5, 1, 0.1


def test_shared_scores_are_the_product_of_the_three_norms():
    mlp = _MLP()
    r2 = 2 ** 0.5
    assert torch.allclose(mlp_neuron_scores(mlp), torch.tensor([5 * r2, 2 * r2, 0.5 * r2], dtype=torch.float64))
    keep = shared_keep(mlp, width=2)
    assert keep.tolist() == [0, 1]
    keep_mlp_neurons_(mlp, keep)
    assert mlp.gate_proj.weight.shape == (2, 2) and mlp.down_proj.weight.shape == (2, 2)
    assert mlp.down_proj.in_features == 2 and mlp.up_proj.out_features == 2


@pytest.mark.parametrize("model_type", ["hunyuan_v1_moe", "deepseek_v4", "llama4_text"])
def test_coupled_shared_expert_is_cut_to_the_expert_width(model_type):
    model = tiny_moe(model_type)
    blocks = resolve_adapter(model).moe_blocks(model)
    assert all(b.extra["shared_coupled"] for b in blocks)
    I = blocks[0].intermediate_size
    wanted = {b.layer: shared_keep(b.shared, width=I // 2) for b in blocks}
    scores = {b.layer: torch.rand(b.num_experts, b.intermediate_size) for b in blocks}
    report = slim_neurons_(model, scores, NeuronSlimConfig(keep_ratio=0.5))
    assert report.width == I // 2
    check_structure(model)                                  # the config rebuilds the cut shared experts too
    for b in resolve_adapter(model).moe_blocks(model):
        assert b.intermediate_size == I // 2 and b.shared.down_proj.in_features == I // 2
        assert wanted[b.layer].numel() == I // 2
    assert inspect_model(model)["shared_experts"]["width"] == I // 2
    with torch.no_grad():
        assert torch.isfinite(model(tiny_inputs()).logits).all()


@pytest.mark.parametrize("model_type, field", [("jamba", "dense MLPs"), ("inkling_text", "router")])
def test_uncut_coupling_is_refused_from_the_config_before_calibration(model_type, field):
    config = tiny_config(model_type).to_dict()
    limits = ModelLimits.from_config(config)
    problems = slimming_problems(limits, SlimmingConfig(expert_keep_ratio=0.5))
    assert problems and "neuron slimming is not possible" in problems[0] and field in problems[0]
    assert field in inspect_model(tiny_moe(model_type))["refusals"]["neuron_slimming"]


def test_both_drivers_cut_the_shared_expert_alike(tmp_path, capsys, studio_cache):
    """Hunyuan slimmed from the CLI in memory and layer by layer: the same checkpoint, shared MLP at half width."""
    import json

    from transformers import AutoModelForCausalLM

    from compressor import cli
    from compressor.testing import char_tokenizer
    folder = tmp_path / "in"
    tiny_moe("hunyuan_v1_moe").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    for streaming in ("on", "off"):
        args = ["slim", str(folder), "--out", str(tmp_path / streaming), "--expert-keep-ratio", "0.5", "--tokens",
                "128", "--seq-len", "32", "--no-cache", "--streaming", streaming]
        assert cli.main(args) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["streamed"] is (streaming == "on")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "on" / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "off" / "checkpoint").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shared = next(k for k in a if k.endswith("shared_mlp.down_proj.weight"))
    width = next(v for k, v in a.items() if k.endswith("experts.down_proj")).shape[-1]
    assert a[shared].shape[1] == width
