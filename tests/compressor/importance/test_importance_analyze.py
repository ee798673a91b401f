"""The calibration pass: Taylor against autograd by hand, progress, cancel, config round trip, state restored."""
import json

import pytest
import torch

from compressor.families import resolve_adapter
from compressor.fingerprint import weights_fingerprint
from compressor.importance import AnalyzeConfig, analyze, collect_scores, next_token_loss_sum
from compressor.progress import Cancelled, Reporter
from compressor.testing import TINY_FAMILIES, tiny_inputs, tiny_moe


def _batch(ids, mask=None):
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}


def _hand_grads(model, ids):
    """(weights, dL/dw) of MoE layer 0's expert tensors from a separate autograd pass of the summed next-token loss
    (float64 copies; flags and grads restored)."""
    blk = resolve_adapter(model).moe_blocks(model)[0]
    params = dict(blk.experts.named_parameters(recurse=False))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    logits = model(ids, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                             reduction="sum")
    loss.backward()
    w = {k: p.detach().double().clone() for k, p in params.items()}
    g = {k: p.grad.double().clone() for k, p in params.items()}
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    return w, g


def _scores_from_saliency(model, s):
    """Per-expert and per-neuron sums of an elementwise saliency s (name -> tensor shaped like the parameter)."""
    blk = resolve_adapter(model).moe_blocks(model)[0]
    expert = sum(t.flatten(1).sum(1) for t in s.values())
    I = blk.intermediate_size
    gu, dn = s["gate_up_proj"], s["down_proj"]
    if blk.layout.transposed:                         # GPT-OSS: [E, H, 2I] interleaved, down [E, I, H], gate/up bias [E, 2I]
        neuron = gu[:, :, 0::2].sum(1) + gu[:, :, 1::2].sum(1) + dn.sum(2)
        neuron = neuron + s["gate_up_proj_bias"][:, 0::2] + s["gate_up_proj_bias"][:, 1::2]
    else:                                      # [E, 2I, H] gate rows then up rows, down [E, H, I]
        neuron = gu[:, :I].sum(2) + gu[:, I:].sum(2) + dn.sum(1)
    return expert, neuron


def _hand_taylor(model, ids):
    """|w * dL/dw| / N from a separate autograd pass: per expert and per neuron of MoE layer 0, and the saliency."""
    w, g = _hand_grads(model, ids)
    n = ids[:, 1:].numel()
    s = {k: (w[k] * g[k]).abs() / n for k in w}
    return (*_scores_from_saliency(model, s), s)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_taylor_matches_autograd_by_hand(family):
    model = tiny_moe(family)
    ids = tiny_inputs(batch=2, seq=10)
    report = analyze(model, [_batch(ids)], config=AnalyzeConfig(taylor=True))
    expert, neuron, s = _hand_taylor(model, ids)
    assert torch.allclose(report.experts.taylor[0], expert, rtol=1e-5, atol=1e-10)
    assert torch.allclose(report.neurons.taylor[0], neuron, rtol=1e-5, atol=1e-10)
    # every expert weight belongs to one neuron except the output bias: the neurons add up to the expert
    rest = s["down_proj_bias"].sum(1) if "down_proj_bias" in s else 0
    assert torch.allclose(report.neurons.taylor[0].sum(1) + rest, report.experts.taylor[0], rtol=1e-6)


def test_taylor_over_two_batches_sums_the_gradients_first_and_leaves_the_model_as_it_was():
    model = tiny_moe("qwen3_moe")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    fp = weights_fingerprint(model)
    a, b = tiny_inputs(batch=1, seq=9, seed=3), tiny_inputs(batch=2, seq=6, seed=4)
    both = analyze(model, [_batch(a), _batch(b)])
    w, ga = _hand_grads(model, a)
    _, gb = _hand_grads(model, b)
    na, nb = 8, 10                                            # next-token targets per batch
    # LLM-Pruner: |w * (g_a + g_b)| / N  (the gradient of the mean loss over both batches)
    expert, neuron = _scores_from_saliency(model, {k: (w[k] * (ga[k] + gb[k])).abs() / (na + nb) for k in w})
    assert torch.allclose(both.experts.taylor[0], expert, rtol=1e-5, atol=1e-10)
    assert torch.allclose(both.neurons.taylor[0], neuron, rtol=1e-5, atol=1e-10)
    # per batch: (|w * g_a| + |w * g_b|) / N
    expert_pb, neuron_pb = _scores_from_saliency(
        model, {k: ((w[k] * ga[k]).abs() + (w[k] * gb[k]).abs()) / (na + nb) for k in w})
    assert torch.allclose(both.experts.taylor_per_batch[0], expert_pb, rtol=1e-5, atol=1e-10)
    assert torch.allclose(both.neurons.taylor_per_batch[0], neuron_pb, rtol=1e-5, atol=1e-10)
    # the two rules differ here, and |w * sum g| <= sum |w * g| everywhere (triangle inequality)
    assert (expert_pb - expert).max() > 1e-3 * expert_pb.max()
    assert (both.neurons.taylor <= both.neurons.taylor_per_batch * (1 + 1e-9)).all()
    assert both.meta["loss_tokens"] == na + nb and both.meta["tokens"] == 9 + 12
    assert weights_fingerprint(model) == fp
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_taylor_rules_on_hand_set_gradients_of_two_batches():
    """g_1 = w, g_2 = -w / 2 on every expert tensor: |w * (g_1 + g_2)| = w^2 / 2 and |w g_1| + |w g_2| = 3 w^2 / 2."""
    model = tiny_moe("mixtral")
    adapter = resolve_adapter(model)
    with collect_scores(model, adapter, want=("experts", "neurons")) as col:
        params = col.expert_parameters()
        for scale, tokens in ((1.0, 4), (-0.5, 6)):
            for p in params:
                p.grad = scale * p.detach().clone()
            col.accumulate_taylor_(tokens=tokens)
        experts, neurons, _ = col.result()
    blk = adapter.moe_blocks(model)[0]
    sq = {k: p.detach().double().square() for k, p in blk.experts.named_parameters(recurse=False)}
    expert, neuron = _scores_from_saliency(model, sq)          # sum of w^2 per expert / per neuron
    N = 4 + 6
    assert experts.taylor_tokens == neurons.taylor_tokens == N
    assert torch.allclose(experts.taylor[0], 0.5 * expert / N, rtol=1e-6)
    assert torch.allclose(experts.taylor_per_batch[0], 1.5 * expert / N, rtol=1e-6)
    assert torch.allclose(neurons.taylor[0], 0.5 * neuron / N, rtol=1e-6)
    assert torch.allclose(neurons.taylor_per_batch[0], 1.5 * neuron / N, rtol=1e-6)
    assert all(p.grad is None for p in params)


def test_masked_next_token_loss_counts_only_real_pairs():
    logits = torch.zeros(1, 4, 3)                             # uniform: every token costs log 3
    ids = torch.tensor([[0, 1, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, n = next_token_loss_sum(logits=logits, input_ids=ids, attention_mask=mask)
    assert n == 2 and loss.item() == pytest.approx(2 * torch.log(torch.tensor(3.0)).item())


def test_progress_events_throughput_and_meta():
    model = tiny_moe("olmoe")
    events = []
    batches = [_batch(tiny_inputs(seed=i)) for i in range(3)]
    report = analyze(model, batches, config=AnalyzeConfig(taylor=False), reporter=Reporter(events.append))
    assert [e.step for e in events] == [0, 1, 2, 3] and events[-1].fraction == 1.0
    assert all(e.stage == "calibrate" for e in events) and events[-1].tokens_per_s > 0
    meta = report.meta
    assert meta["tokens"] == 72 and meta["batches"] == 3 and meta["tokens_per_s"] > 0
    assert meta["family"] == "olmoe" and meta["moe_layers"] == [0, 1] and meta["top_k"] == 2
    assert meta["taylor"] is False and report.experts.taylor is None
    json.dumps(meta)                                          # summary.json must be able to hold it


def test_cancel_stops_between_batches_and_restores_hooks_and_grad_flags():
    model = tiny_moe("mixtral")
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        analyze(model, [_batch(tiny_inputs(seed=i)) for i in range(5)], reporter=Reporter(should_cancel=should_cancel))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_analyze_config_validates_and_round_trips_through_json():
    cfg = AnalyzeConfig(want=("wanda", "experts"), taylor=False, outlier_m=7.0)
    assert cfg.want == ("experts", "wanda")
    assert AnalyzeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="subset"):
        AnalyzeConfig(want=("routers",))
    with pytest.raises(ValueError, match="taylor"):
        AnalyzeConfig(want=("layers",), taylor=True)
    with pytest.raises(ValueError, match="version"):
        AnalyzeConfig(version=99)


def test_empty_calibration_is_refused():
    model = tiny_moe("mixtral")
    ids = tiny_inputs()
    with pytest.raises(ValueError, match="no \\(unmasked\\) tokens"):
        analyze(model, [], config=AnalyzeConfig(taylor=False))
    with pytest.raises(TypeError, match="calibration batch"):
        analyze(model, ["text"], config=AnalyzeConfig(taylor=False))
    assert analyze(model, [ids], config=AnalyzeConfig(taylor=False)).meta["tokens"] == ids.numel()


@pytest.mark.parametrize("want,taylor", [(("neurons",), True), (("wanda",), False), (("experts", "layers"), True)])
def test_partial_score_sets_build_save_and_reload(want, taylor, tmp_path):
    from compressor.importance import ImportanceReport
    report = analyze(tiny_moe("granitemoe"), [_batch(tiny_inputs())], config=AnalyzeConfig(want=want, taylor=taylor))
    assert (report.experts is not None) == ("experts" in want)
    assert (report.neurons is not None) == ("neurons" in want)
    assert (report.layers is not None) == bool({"layers", "wanda"} & set(want))
    if "wanda" in want:
        assert report.layers.dlp is not None and len(report.layers.wanda_inputs) == 2 * (4 + 2)
    again = ImportanceReport.load(report.save(tmp_path))
    assert set(again.to_frames()) == set(report.to_frames())
    if "neurons" in want:
        assert torch.equal(again.neurons.taylor, report.neurons.taylor)
