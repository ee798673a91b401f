from compressor.recipe import SlimmingConfig
from compressor.slimming.apply import analysis_needs


def test_what_each_cut_needs_scored():
    assert analysis_needs(SlimmingConfig()) == ((), False)
    assert analysis_needs(SlimmingConfig(expert_keep_ratio=0.5)) == (("neurons",), True)
    assert analysis_needs(SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation")) == (("neurons",), False)
    assert analysis_needs(SlimmingConfig(experts_keep=4, expert_score="reap")) == (("experts",), False)
    assert analysis_needs(SlimmingConfig(experts_keep=4, expert_score="taylor")) == (("experts",), True)
    assert analysis_needs(SlimmingConfig(layers_drop=1)) == (("layers",), False)
    assert analysis_needs(SlimmingConfig(sparsity=0.5)) == (("wanda",), False)
    # Wanda norms are recollected after a structural cut, so they are not scored up front
    assert analysis_needs(SlimmingConfig(expert_keep_ratio=0.5, sparsity=0.5, neuron_score="activation")) == \
        (("neurons",), False)


def test_every_taylor_score_asks_for_the_gradient_pass_and_ean_sum_does_not():
    assert analysis_needs(SlimmingConfig(expert_keep_ratio=0.5, neuron_score="taylor_per_batch")) == \
        (("neurons",), True)
    assert analysis_needs(SlimmingConfig(experts_keep=4, expert_score="ean_sum")) == (("experts",), False)
