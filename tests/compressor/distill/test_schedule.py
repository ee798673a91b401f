import pytest

from compressor.distill.schedule import geometric_counts, geometric_ratios, plan_stages, split_steps
from compressor.recipe import SlimmingConfig


def test_geometric_ratios_three_stages():
    assert geometric_ratios(final=0.5, stages=3) == pytest.approx([0.7937, 0.6300, 0.5], abs=1e-4)
    assert geometric_ratios(final=0.5, stages=1) == [0.5]            # one stage is one-shot
    with pytest.raises(ValueError, match="stages"):
        geometric_ratios(final=0.5, stages=0)


def test_counts_round_and_end_at_target():
    assert geometric_counts(start=512, final=256, stages=3) == [406, 323, 256]
    assert geometric_counts(start=8, final=4, stages=3) == [6, 5, 4]
    assert geometric_counts(start=8, final=4, stages=3, multiple=2) == [6, 6, 4]
    assert geometric_counts(start=8, final=4, stages=1) == [4]


def test_plan_stages_combines_axes():
    cfg = SlimmingConfig(expert_keep_ratio=0.5, experts_keep=4, layers_drop=1, sparsity=0.75)
    plan = plan_stages(cfg, stages=2, num_experts=8, width=512)
    assert [s.width for s in plan] == [360, 256]                   # 512 * 0.707 = 362 -> multiple of 8
    assert [s.width for s in plan_stages(cfg, stages=3, num_experts=8, width=512)] == [408, 320, 256]
    assert [s.width for s in plan_stages(cfg, stages=2, num_experts=8, width=12)] == [8, 6]   # too narrow for 8s
    assert [s.experts for s in plan] == [6, 4]
    assert [s.layers_dropped for s in plan] == [1, 1]              # round(1 * 1/2) = 1: the drop happens first
    assert [s.sparsity for s in plan] == pytest.approx([0.5, 0.75])
    assert plan[-1].keep_ratio == 0.5
    identity = plan_stages(SlimmingConfig(), stages=3, num_experts=8, width=512)
    assert all(s.width is None and s.experts is None and s.sparsity == 0 for s in identity)


def test_split_steps_gives_the_last_stage_its_share():
    assert split_steps(total=300, stages=3) == [30, 30, 240]                   # default share 0.8
    assert split_steps(total=150, stages=3) == [15, 15, 120]
    assert split_steps(total=10, stages=3, final_share=0.5) == [3, 2, 5]       # 5 left: round(2.5) = 3, then 2
    assert split_steps(total=300, stages=1) == [300]                          # one stage takes every step
    assert split_steps(total=7, stages=4, final_share=1.0) == [0, 0, 0, 7]
    assert sum(split_steps(total=7, stages=4)) == 7
    with pytest.raises(ValueError, match="final_share"):
        split_steps(total=10, stages=2, final_share=0.0)


def test_split_steps_even_for_version_1_recipes():
    assert split_steps(total=300, stages=3, final_share=None) == [100, 100, 100]
    assert split_steps(total=10, stages=3, final_share=None) == [3, 4, 3]
