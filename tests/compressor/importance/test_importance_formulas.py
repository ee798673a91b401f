"""Importance formulas on hand-computed tensors."""
import math

import pytest
import torch

from compressor.importance import formulas as M

F64 = torch.float64


def test_safe_divide_gives_zero_where_nothing_was_seen():
    out = M.safe_divide(num=torch.tensor([3.0, 5.0]), den=torch.tensor([2.0, 0.0]))
    assert out.dtype == F64 and out.tolist() == [1.5, 0.0]


def test_routed_expert_sums_by_hand():
    expert = torch.tensor([2, 0, 2])                          # expert 1 gets nothing
    gate = torch.tensor([0.5, 0.9, 0.25])
    out = torch.tensor([[3.0, -4.0], [0.0, 2.0], [0.0, 1.0]])  # norms 5, 2, 1
    norm, peak = M.output_norm_and_peak(output=out)
    assert norm.tolist() == [5.0, 2.0, 1.0] and peak.tolist() == [4.0, 2.0, 1.0]
    s = M.routed_expert_sums(expert=expert, gate=gate, out_norm=norm, out_peak=peak, num_experts=3)
    assert s["count"].tolist() == [1, 0, 2]
    assert s["gate_sum"].tolist() == pytest.approx([0.9, 0.0, 0.75])
    assert s["reap_sum"].tolist() == pytest.approx([0.9 * 2, 0.0, 0.5 * 5 + 0.25 * 1])
    assert s["man_sum"].tolist() == [2.0, 0.0, 6.0]
    assert s["max_abs"].tolist() == [2.0, 0.0, 4.0]
    assert all(v.dtype == torch.float64 for v in s.values())


def test_ean_sum_on_a_hand_routed_example_ranks_unlike_man():
    from compressor.importance.scores import ExpertScores
    # 4 tokens, top-1: tokens 0-2 -> expert 0 (||f|| = 1 each), token 3 -> expert 1 (||f|| = 2); expert 2 unused
    expert = torch.tensor([0, 0, 0, 1])
    out = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, -2.0]])
    norm, peak = M.output_norm_and_peak(output=out)
    s = M.routed_expert_sums(expert=expert, gate=torch.ones(4), out_norm=norm, out_peak=peak, num_experts=3)
    ex = ExpertScores(layers=[0], tokens=4, top_k=1, counts=s["count"][None], gate_sum=s["gate_sum"][None],
                      reap_sum=s["reap_sum"][None], man_sum=s["man_sum"][None], max_abs=s["max_abs"][None])
    assert ex.score("ean_sum")[0].tolist() == pytest.approx([3.0, 2.0, 0.0])    # REAP's ean_sum: sum of ||f||
    assert ex.score("man")[0].tolist() == pytest.approx([1.0, 2.0, 0.0])        # ean_mean: mean of ||f||
    assert ex.ean_sum.argmax().item() == 0 and ex.man.argmax().item() == 1


def test_reap_reference_is_mean_over_routed_tokens_only():
    gates = torch.tensor([[0.6, 0.0], [0.2, 0.0]])           # expert 1 never routed
    outputs = torch.tensor([[[3.0, 4.0], [9.0, 9.0]], [[1.0, 0.0], [9.0, 9.0]]])
    routed = gates > 0
    s = M.reap_scores(gates=gates, outputs=outputs, routed=routed)
    assert s.tolist() == pytest.approx([(0.6 * 5 + 0.2 * 1) / 2, 0.0])


def test_neuron_activation_score_by_hand_and_zero_down_column():
    abs_sum = torch.tensor([[4.0, 2.0, 6.0]], dtype=F64)      # E=1, I=3, over 2 tokens
    down = torch.tensor([[[3.0, 0.0, 1.0], [4.0, 0.0, 0.0]]])  # [E=1, H=2, I=3]; neuron 1 has a zero column
    norm = M.down_column_norms(down=down)
    assert norm.tolist() == [[5.0, 0.0, 1.0]]
    a = M.neuron_activation_scores(abs_sum=abs_sum, counts=torch.tensor([2.0]), down_norm=norm)
    assert a.tolist() == [[2.0 * 5.0, 0.0, 3.0 * 1.0]]
    unused = M.neuron_activation_scores(abs_sum=abs_sum, counts=torch.tensor([0.0]), down_norm=norm)
    assert unused.abs().sum() == 0


def test_taylor_neuron_and_expert_scores_by_hand():
    # E=1, I=2, H=2
    gate = torch.tensor([[[1.0, -2.0], [0.5, 0.0]]])
    gate_g = torch.tensor([[[0.1, 0.1], [2.0, 7.0]]])          # |w g|: [0.1, 0.2] and [1.0, 0.0]
    up = torch.tensor([[[3.0, 1.0], [1.0, 1.0]]])
    up_g = torch.tensor([[[-1.0, 0.0], [0.0, 0.5]]])           # [3, 0] and [0, 0.5]
    down = torch.tensor([[[2.0, 1.0], [-1.0, 4.0]]])           # [E, H, I]; column i = neuron i
    down_g = torch.tensor([[[0.5, 1.0], [1.0, -0.25]]])        # col 0: |1.0|+|-1.0| = 2 ; col 1: 1 + 1 = 2
    t = M.taylor_neuron_scores(gate=gate, up=up, down=down, gate_grad=gate_g, up_grad=up_g, down_grad=down_g)
    assert t[0].tolist() == pytest.approx([0.3 + 3.0 + 2.0, 1.0 + 0.5 + 2.0])
    tb = M.taylor_neuron_scores(gate=gate, up=up, down=down, gate_grad=gate_g, up_grad=up_g, down_grad=down_g,
                                gate_bias=torch.tensor([[2.0, 0.0]]), gate_bias_grad=torch.tensor([[-1.0, 5.0]]),
                                up_bias=torch.tensor([[0.0, 1.0]]), up_bias_grad=torch.tensor([[3.0, 3.0]]))
    assert (tb - t)[0].tolist() == pytest.approx([2.0, 3.0])
    e = M.taylor_expert_scores(params=[(gate, gate_g), (up, up_g), (down, down_g)])
    assert e.tolist() == pytest.approx([t.sum().item()])
    with pytest.raises(ValueError):
        M.taylor_expert_scores(params=[])


def test_block_influence_identity_zero_flip_two():
    h = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    same = M.cosine_sum(h_in=h, h_out=2 * h)
    flip = M.cosine_sum(h_in=h, h_out=-h)
    assert M.block_influence(cos_sum=same, tokens=torch.tensor(5.0)).item() == pytest.approx(0.0, abs=1e-12)
    assert M.block_influence(cos_sum=flip, tokens=torch.tensor(5.0)).item() == pytest.approx(2.0, abs=1e-12)
    assert math.isnan(M.block_influence(cos_sum=torch.tensor(0.0), tokens=torch.tensor(0.0)).item())
