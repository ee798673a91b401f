"""The method registries are the one source of every method name: the recipe schema, the CLI, the UI and the code
that computes each method read them, and every entry resolves to a documented function that computes it."""
import typing

import gradio as gr
import pytest
import torch

from compressor import methods
from compressor.cli import build_parser
from compressor.distill.losses import divergence, kl
from compressor.importance import AnalyzeConfig, analyze
from compressor.recipe import DistillConfig, QuantizeConfig, SlimmingConfig
from compressor.slimming.apply import analysis_needs
from compressor.slimming.config import SparsifyConfig
from compressor.slimming.sparsify import allocate
from compressor.testing import tiny_inputs, tiny_moe

FIELDS = [(SlimmingConfig, "neuron_score", methods.NEURON_SCORES), (SlimmingConfig, "expert_score", methods.EXPERT_SCORES),
          (SlimmingConfig, "sparsity_allocation", methods.SPARSITY_ALLOCATIONS),
          (DistillConfig, "loss", methods.DISTILL_LOSSES),
          (QuantizeConfig, "method", methods.QUANT_METHODS)]


@pytest.mark.parametrize("kind,registry", list(methods.REGISTRIES.items()))
def test_every_entry_resolves_to_a_documented_function(kind, registry):
    for m in registry.values():
        fn = m.load()
        assert callable(fn) and fn.__doc__ and len(fn.__doc__) > 20, (kind, m.name)
        assert m.label and m.formula


@pytest.mark.parametrize("config,name,registry", FIELDS)
def test_the_recipe_schema_takes_its_choices_from_the_registry(config, name, registry):
    assert typing.get_args(config.model_fields[name].annotation) == methods.names(registry)
    assert all(m.name in config.model_fields[name].description for m in registry.values())


def test_the_cli_takes_its_choices_from_the_registry():
    parser, _ = build_parser()
    slim = next(a for a in parser._subparsers._group_actions[0].choices["slim"]._actions if a.dest == "expert_score")
    assert tuple(slim.choices) == methods.names(methods.EXPERT_SCORES)
    actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["slim"]._actions}
    assert tuple(actions["neuron_score"].choices) == methods.names(methods.NEURON_SCORES)
    assert tuple(actions["allocation"].choices) == methods.names(methods.SPARSITY_ALLOCATIONS)
    assert "reap = mean over routed tokens" in actions["expert_score"].help


def test_the_ui_takes_its_choices_and_legends_from_the_registry():
    from ui import compress, explore, figures
    with gr.Blocks():
        tab = compress.build()
    for component, registry in ((tab.neuron_score, methods.NEURON_SCORES), (tab.expert_score, methods.EXPERT_SCORES),
                                (tab.allocation, methods.SPARSITY_ALLOCATIONS), (tab.loss, methods.DISTILL_LOSSES)):
        assert [c[1] for c in component.choices] == list(registry)
    assert explore.EXPERT_SCORES == list(methods.EXPERT_SCORES)
    assert explore.NEURON_SCORES == list(methods.NEURON_SCORES)
    assert figures.SCORE_LABELS["reap"] == methods.EXPERT_SCORES["reap"].label


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    return analyze(tiny_moe("qwen3_moe"), [tiny_inputs(batch=2, seq=16)], config=AnalyzeConfig(taylor=True))


def test_every_score_is_computed_through_its_entry(report):
    L, E, I = report.neurons.abs_sum.shape
    x = report.experts
    n = x.counts.double()
    by_hand = {                      # each entry's formula from the raw sums (it compared the entry with itself)
        "reap": torch.where(n > 0, x.reap_sum / n.clamp(min=1), torch.zeros_like(n)),
        "frequency": n / x.tokens, "weighted_frequency": x.gate_sum.double() / x.tokens,
        "man": torch.where(n > 0, x.man_sum / n.clamp(min=1), torch.zeros_like(n)), "ean_sum": x.man_sum.double(),
        "taylor": x.taylor_sum.double() / x.taylor_tokens,
        "taylor_per_batch": x.taylor_per_batch_sum.double() / x.taylor_tokens}
    assert set(by_hand) == set(methods.EXPERT_SCORES)
    for name in methods.EXPERT_SCORES:
        s = report.experts.score(name)
        assert s.shape == (L, E) and torch.isfinite(s).all(), name
        torch.testing.assert_close(s.double(), by_hand[name], rtol=1e-12, atol=0, msg=name)
    assert torch.allclose(report.experts.score("frequency").sum(1), torch.tensor(2.0, dtype=torch.float64))
    for name in methods.NEURON_SCORES:
        assert report.neurons.score(name).shape == (L, E, I)
    with pytest.raises(ValueError, match="unknown expert score 'nope'; choose one of reap"):
        report.experts.score("nope")


def test_taylor_needs_follow_the_registry():
    for name, m in methods.NEURON_SCORES.items():
        assert analysis_needs(SlimmingConfig(expert_keep_ratio=0.5, neuron_score=name))[1] is m.taylor
    for name, m in methods.EXPERT_SCORES.items():
        assert analysis_needs(SlimmingConfig(experts_keep=4, expert_score=name))[1] is m.taylor


def test_every_allocation_and_loss_runs_through_its_entry():
    scores, outliers = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([0.01, 0.02, 0.04])
    got = {name: allocate(SparsifyConfig(sparsity=0.5, allocation=name), scores=scores, outliers=outliers)[0]
           for name in methods.SPARSITY_ALLOCATIONS}
    assert got["uniform"].tolist() == [0.5, 0.5, 0.5]
    assert got["dlp"].tolist() == pytest.approx([0.35, 0.5, 0.65])        # r = 5/6, 4/6, 3/6 -> spread 0.15
    assert got["owl"][0] > got["owl"][2] and got["owl"].mean().item() == pytest.approx(0.5)
    t, s = torch.log_softmax(torch.randn(4, 7), -1), torch.log_softmax(torch.randn(4, 7), -1)
    assert torch.allclose(divergence(teacher_logp=t, student_logp=s, kind="forward_kl"), kl(p_logp=t, q_logp=s))
    assert torch.allclose(divergence(teacher_logp=t, student_logp=s, kind="reverse_kl"), kl(p_logp=s, q_logp=t))
    assert torch.allclose(divergence(teacher_logp=t, student_logp=s, kind="jsd", beta=0.0), kl(p_logp=t, q_logp=s))
    with pytest.raises(ValueError, match="unknown distillation loss 'mse'"):
        divergence(teacher_logp=t, student_logp=s, kind="mse")
