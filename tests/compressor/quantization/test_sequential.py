"""Layer-by-layer quantization of a tiny MoE: classes, per-expert routed tokens, the RTN fallback."""
import pytest
import torch

from compressor.families import resolve_adapter
from compressor.quantization.experts import RoutedInputs, expert_matrices
from compressor.quantization.scheme import SCHEMES, WeightScheme
from compressor.quantization.sequential import quantize_model_
from compressor.quantization.targets import GPTQSettings, QuantPlan, layer_targets
from compressor.testing import tiny_moe

W4 = WeightScheme(bits=4, group_size=16)


def batches(n=4, seq=32, seed=0):
    ids = torch.randint(3, 128, (n, seq), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


def test_classes_of_a_layer():
    model = tiny_moe("qwen2_moe")                            # has a shared expert and a shared-expert gate
    adapter = resolve_adapter(model)
    found = layer_targets(model, adapter, 0)
    classes = {k for k, _ in found.linears.values()}
    assert classes == {"attention", "shared_experts"}
    assert any(n.endswith("shared_expert_gate") for n in found.kept)
    assert len(found.blocks) == 1                            # fused experts, quantized per expert


def test_expert_views_write_the_fused_tensor():
    model = tiny_moe("qwen3_moe")
    blk = resolve_adapter(model).moe_blocks(model)[0]
    m = expert_matrices(blk, 3)
    assert m["gate"].shape == (16, 32) and m["down"].shape == (32, 16)
    with torch.no_grad():
        m["up"].fill_(0.5)
    assert torch.all(blk.experts.gate_up_proj[3, 16:] == 0.5)


@torch.no_grad()
def test_each_expert_hessian_comes_from_its_routed_tokens():
    model = tiny_moe("qwen3_moe")
    blk = resolve_adapter(model).moe_blocks(model)[0]
    seen = {}

    def grab(module, args, kwargs):
        seen["x"], seen["idx"] = args[0], args[1]
    h = blk.experts.register_forward_pre_hook(grab, with_kwargs=True)
    with RoutedInputs(blk) as rec:
        model(batches()[0]["input_ids"])
    h.remove()
    x, idx = seen["x"], seen["idx"]
    assert sum(rec.tokens) == idx.numel()                   # every token counted once per expert it goes to
    mine = x[(idx == 2).any(-1)]
    assert rec.tokens[2] == mine.shape[0]
    assert torch.allclose(rec.inputs[2].sum, (mine.double().T @ mine.double()))
    h2 = blk.expert_hidden(mine, 2).double()
    assert torch.allclose(rec.hidden[2].sum, h2.T @ h2, atol=1e-9)


def test_gptq_counts_fallbacks_and_keeps_routers():
    model = tiny_moe("qwen3_moe")
    router = model.model.layers[0].mlp.gate.weight.clone()
    plan = QuantPlan.of({"experts": W4, "attention": SCHEMES["W8A16"]}, method="gptq",
                        gptq=GPTQSettings(min_expert_tokens=40))
    report, params = quantize_model_(model, batches(), plan)
    assert report.matrices == {"attention": 8, "experts": 2 * 8 * 3}
    assert report.calibration_tokens == 128
    fallback = {f"{l}.{e}" for l in range(2) for e in range(8)}
    assert set(report.experts_rtn_fallback) <= fallback and report.experts_rtn_fallback
    assert report.rtn_matrices == 3 * len(report.experts_rtn_fallback)
    assert torch.equal(model.model.layers[0].mlp.gate.weight, router)
    q = model.model.layers[0].self_attn.q_proj.weight / params.linear["model.layers.0.self_attn.q_proj"].scale
    assert torch.allclose(q, q.round(), atol=1e-3)          # on the int8 grid


def test_gptq_needs_data_and_a_class():
    with pytest.raises(ValueError, match="calibration batches"):
        quantize_model_(tiny_moe("qwen3_moe"), [], QuantPlan.of({"experts": W4}))
    with pytest.raises(ValueError, match="keeps every class"):
        QuantPlan.of({})


def test_groups_that_do_not_divide_a_weight_are_refused_by_name():
    model = tiny_moe("qwen3_moe", width=24)
    with pytest.raises(ValueError, match=r"experts down \(experts\): 24 input columns .* quantize.group_size"):
        quantize_model_(model, None, QuantPlan.of({"experts": W4}, method="rtn"))
