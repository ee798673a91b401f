"""Distillation losses against hand-computed values (2-class examples worked out in the comments)."""
import math

import pytest
import torch

from compressor.distill.losses import (distill_loss, fold_topk, hidden_mse, jsd, kl, log_probs, next_token_ce,
                                       teacher_topk)

P = torch.tensor([0.9, 0.1])     # teacher
Q = torch.tensor([0.5, 0.5])     # student
# KL(P||Q) = .9 ln(.9/.5) + .1 ln(.1/.5)            = 0.368064
# KL(Q||P) = .5 ln(.5/.9) + .5 ln(.5/.1)            = 0.510826
# M = (.7, .3): KL(P||M) = 0.116322, KL(Q||M) = 0.087177, JSD(.5) = 0.101750
FWD, REV, JSD_HALF = 0.9 * math.log(1.8) + 0.1 * math.log(0.2), 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5), 0.101750


def logits_of(p: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Logits whose softmax at `temperature` is p, shaped [1, 1, V]."""
    return (p.log() * temperature).view(1, 1, -1)


def test_kl_of_identical_distributions_is_zero():
    z = torch.randn(2, 5, 11)
    assert distill_loss(student_logits=z, teacher=z.clone(), kind="forward_kl").item() == pytest.approx(0, abs=1e-6)
    assert distill_loss(student_logits=z, teacher=z.clone(), kind="reverse_kl").item() == pytest.approx(0, abs=1e-6)
    assert distill_loss(student_logits=z, teacher=z.clone(), kind="jsd").item() == pytest.approx(0, abs=1e-6)


def test_forward_and_reverse_kl_hand_values_and_asymmetry():
    fwd = distill_loss(student_logits=logits_of(Q), teacher=logits_of(P), kind="forward_kl").item()
    rev = distill_loss(student_logits=logits_of(Q), teacher=logits_of(P), kind="reverse_kl").item()
    assert fwd == pytest.approx(0.368064, abs=1e-5) and fwd == pytest.approx(FWD, abs=1e-6)
    assert rev == pytest.approx(0.510826, abs=1e-5) and rev == pytest.approx(REV, abs=1e-6)
    assert fwd != pytest.approx(rev, abs=0.1)


def test_jsd_symmetric_at_half_and_limits():
    a = jsd(teacher_logp=P.log(), student_logp=Q.log(), beta=0.5).item()
    b = jsd(teacher_logp=Q.log(), student_logp=P.log(), beta=0.5).item()
    assert a == pytest.approx(JSD_HALF, abs=1e-5) and a == pytest.approx(b, abs=1e-7)
    assert jsd(teacher_logp=P.log(), student_logp=Q.log(), beta=0.0).item() == pytest.approx(FWD, abs=1e-6)
    assert jsd(teacher_logp=P.log(), student_logp=Q.log(), beta=1.0).item() == pytest.approx(REV, abs=1e-6)
    # JSD(beta)/beta -> forward KL as beta -> 0 (GKD)
    small = jsd(teacher_logp=P.log(), student_logp=Q.log(), beta=1e-4).item() / 1e-4
    assert small == pytest.approx(FWD, rel=1e-2)
    with pytest.raises(ValueError, match="beta"):
        jsd(teacher_logp=P.log(), student_logp=Q.log(), beta=1.5)


def test_temperature_squared_scaling():
    # at T = 2 the teacher logits 2 ln P soften to exactly P; the student logits 0 give Q at any T
    loss = distill_loss(student_logits=torch.zeros(1, 1, 2), teacher=logits_of(P, 2.0), kind="forward_kl",
                        temperature=2.0).item()
    assert loss == pytest.approx(4 * FWD, abs=1e-5)


def test_mask_averages_only_counted_tokens():
    t = torch.cat([logits_of(P), logits_of(Q)], dim=1)           # token 0 differs, token 1 identical
    s = torch.cat([logits_of(Q), logits_of(Q)], dim=1)
    both = distill_loss(student_logits=s, teacher=t).item()
    first = distill_loss(student_logits=s, teacher=t, mask=torch.tensor([[True, False]])).item()
    assert both == pytest.approx(FWD / 2, abs=1e-6) and first == pytest.approx(FWD, abs=1e-6)


def test_topk_folding_exact_at_v_minus_1_and_a_lower_bound_below():
    torch.manual_seed(0)
    zt, zs = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    full = distill_loss(student_logits=zs, teacher=zt, temperature=1.5).item()
    exact = distill_loss(student_logits=zs, teacher=teacher_topk(logits=zt, k=8, temperature=1.5),
                         temperature=1.5).item()
    lower = distill_loss(student_logits=zs, teacher=teacher_topk(logits=zt, k=2, temperature=1.5),
                         temperature=1.5).item()
    assert exact == pytest.approx(full, abs=1e-5)
    assert 0 < lower < full
    folded = fold_topk(logp=log_probs(logits=zt), indices=torch.tensor([[[0, 1]] * 3] * 2))
    assert folded.exp().sum(-1).sub(1).abs().max() < 1e-6          # k + 1 buckets form a distribution
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(student_logits=zs, teacher=teacher_topk(logits=zt, k=2, temperature=1.0), temperature=2.0)


def test_kl_has_no_nan_gradient_with_zero_probabilities():
    zs = torch.zeros(1, 1, 3, requires_grad=True)
    zt = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    loss = distill_loss(student_logits=zs, teacher=zt, kind="jsd", beta=0.3)
    loss.backward()
    assert torch.isfinite(zs.grad).all() and math.isfinite(loss.item())
    assert kl(p_logp=torch.tensor([0.0, float("-inf")]), q_logp=torch.tensor([-1.0, -2.0])).item() == pytest.approx(1.0)


def test_next_token_ce_hand_value():
    # vocab 2, logits uniform at position 0 -> -ln .5; position 1 has no next token
    logits = torch.zeros(1, 2, 2)
    ids = torch.tensor([[0, 1]])
    assert next_token_ce(logits=logits, input_ids=ids).item() == pytest.approx(math.log(2), abs=1e-6)
    logits[0, 0] = torch.tensor([0.0, math.log(3)])               # p(1) = 3/4
    assert next_token_ce(logits=logits, input_ids=ids).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_hidden_mse_hand_value():
    a, b = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 1.0], [3.0, 1.0]]])
    # token 0: (1 + 1)/2 = 1; token 1: (9 + 1)/2 = 5 -> mean 3; second pair identical -> 0; mean over pairs 1.5
    assert hidden_mse(student_hidden=[a, b], teacher_hidden=[b, b]).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="matched"):
        hidden_mse(student_hidden=[a], teacher_hidden=[])


def test_fused_forward_kl_matches_the_elementwise_form_and_its_gradient():
    from compressor.distill.losses import divergence
    torch.manual_seed(1)
    zt, zs = torch.randn(2, 4, 50) * 3, (torch.randn(2, 4, 50) * 3).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]], dtype=torch.bool)
    fused = distill_loss(student_logits=zs, teacher=zt, temperature=1.7, mask=mask)
    (g_fused,) = torch.autograd.grad(fused, zs)
    per_tok = divergence(teacher_logp=log_probs(logits=zt, temperature=1.7),
                         student_logp=log_probs(logits=zs, temperature=1.7), kind="forward_kl")
    plain = 1.7 ** 2 * (per_tok * mask).sum() / mask.sum()
    (g_plain,) = torch.autograd.grad(plain, zs)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(g_fused, g_plain, atol=1e-6)
