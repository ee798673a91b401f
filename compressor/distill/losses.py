"""Distillation losses: pure tensor functions with keyword-only arguments.

Notation: z_s, z_t are student and teacher logits [B, L, V]; p = softmax(z / T) at temperature T. Every divergence is
averaged over the tokens where `mask` [B, L] is true (all tokens when `mask` is None) and multiplied by T^2, so its
gradient keeps the same scale whatever T is (Hinton et al. 2015).

    forward KL   T^2 * mean_tok KL(p_t || p_s)                     (the default; mode-covering)
    reverse KL   T^2 * mean_tok KL(p_s || p_t)                     (MiniLLM; mode-seeking)
    JSD(beta)    T^2 * mean_tok [beta KL(p_t || m) + (1-beta) KL(p_s || m)],  m = beta p_t + (1-beta) p_s
                 (GKD). beta = 0 and beta = 1 give forward and reverse KL, the limits of JSD(beta)/beta and
                 JSD(beta)/(1-beta), as in GKD's reference implementation; beta = 0.5 is the symmetric JSD.

A teacher may also arrive as `TeacherTopK`: its k most likely tokens' log-probs plus one "rest" bucket holding the
mass of the other V - k tokens (cached on disk so teacher and student need not be in memory together). The student
is then folded onto the same k + 1 buckets, which gives a proper distribution over k + 1 outcomes, and the same
divergences apply; by the data-processing inequality the result is a lower bound of the full-vocabulary value,
exact when k >= V - 1 (every token its own bucket). The student's probabilities outside the teacher's top k only
count through their sum, so training pushes the rest bucket's mass, not how it spreads over those tokens.

    loss = distill_loss(student_logits=zs, teacher=zt, kind="forward_kl", temperature=2.0)
    loss = loss + 0.5 * next_token_ce(logits=zs, input_ids=ids)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from compressor.methods import DISTILL_LOSSES, literal, method, names

import torch
import torch.nn.functional as F

KINDS: tuple[str, ...] = names(DISTILL_LOSSES)        # the registry: compressor/methods.py
Kind = literal(DISTILL_LOSSES)
_LOG_FLOOR = -1.0e4


@dataclass
class TeacherTopK:
    """A teacher's prediction reduced to its top-k tokens at one temperature.

    logp    [B, L, k + 1] float: log-probs of the k tokens, then log of the remaining mass (the "rest" bucket)
    indices [B, L, k]     long:  vocabulary ids of the k tokens
    temperature: the T at which `logp` was computed (the student must use the same T)
    """

    logp: torch.Tensor
    indices: torch.Tensor
    temperature: float


# -- distributions ---------------------------------------------------------------------------------------------
def log_probs(*, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(z / T) in float32. [..., V] -> [..., V]"""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def fold_topk(*, logp: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Fold full log-probs [..., V] onto k + 1 buckets: the k tokens in `indices` [..., k], then the rest.

    rest = logsumexp(logp over the tokens not in `indices`), computed exactly (not as log(1 - sum p)); with k = V
    there is no rest and its bucket is log 0 = -inf (a constant: no gradient flows through an empty logsumexp).
    -> [..., k + 1]
    """
    top = logp.gather(-1, indices)                                    # [..., k]
    if indices.shape[-1] >= logp.shape[-1]:
        return torch.cat([top, torch.full_like(top[..., :1], float("-inf"))], dim=-1)
    rest = logp.scatter(-1, indices, float("-inf")).logsumexp(-1, keepdim=True)   # [..., 1]
    return torch.cat([top, rest], dim=-1)


def teacher_topk(*, logits: torch.Tensor, k: int, temperature: float) -> TeacherTopK:
    """Reduce teacher logits [B, L, V] to `TeacherTopK` (k most likely tokens + rest bucket) at temperature T.

    A k above the vocabulary keeps all V tokens (an empty rest bucket): the divergences are then exact. k >= V - 1
    loses nothing; a smaller k gives a lower bound (see the module docstring)."""
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    k = min(k, logits.shape[-1])
    logp = log_probs(logits=logits, temperature=temperature)
    indices = logp.topk(k, dim=-1).indices                            # [B, L, k]
    return TeacherTopK(logp=fold_topk(logp=logp, indices=indices), indices=indices, temperature=temperature)


# -- divergences on log-probs (per token) ----------------------------------------------------------------------
def kl(*, p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) over the last axis. [..., V] -> [...]

    Log-probs are floored at -1e4 first, so p_v = 0 (log p_v = -inf) contributes 0 and no NaN reaches the gradient."""
    p_logp, q_logp = p_logp.clamp_min(_LOG_FLOOR), q_logp.clamp_min(_LOG_FLOOR)
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def jsd(*, teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD(beta) per token (see module docstring); beta in [0, 1]. [..., V] -> [...]"""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return kl(p_logp=teacher_logp, q_logp=student_logp)
    if beta == 1.0:
        return kl(p_logp=student_logp, q_logp=teacher_logp)
    # log m = logsumexp(log beta + log p_t, log(1 - beta) + log p_s)
    m_logp = torch.logaddexp(teacher_logp + torch.log(torch.tensor(beta)),
                             student_logp + torch.log(torch.tensor(1.0 - beta)))
    return beta * kl(p_logp=teacher_logp, q_logp=m_logp) + (1.0 - beta) * kl(p_logp=student_logp, q_logp=m_logp)


def forward_kl(*, teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(p_t || p_s) per token (mean-seeking; Hinton et al. 2015). `beta` is unused. [..., V] -> [...]"""
    return kl(p_logp=teacher_logp, q_logp=student_logp)


def reverse_kl(*, teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(p_s || p_t) per token (mode-seeking; MiniLLM, Gu et al. 2024). `beta` is unused. [..., V] -> [...]"""
    return kl(p_logp=student_logp, q_logp=teacher_logp)


def jsd_loss(*, teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised JSD(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s
    (GKD, Agarwal et al. 2024; `jsd`). [..., V] -> [...]"""
    return jsd(teacher_logp=teacher_logp, student_logp=student_logp, beta=beta)


def divergence(*, teacher_logp: torch.Tensor, student_logp: torch.Tensor, kind: Kind,
               beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence of `kind` (an entry of `compressor.methods.DISTILL_LOSSES`) between teacher and
    student log-probs. [..., V] -> [...]"""
    return method(DISTILL_LOSSES, kind).load()(teacher_logp=teacher_logp, student_logp=student_logp, beta=beta)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """mean of `values` [B, L] over the positions where `mask` [B, L] is true (all when None)."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


# -- losses on logits ----------------------------------------------------------------------------------------------
def distill_loss(*, student_logits: torch.Tensor, teacher: torch.Tensor | TeacherTopK, kind: Kind = "forward_kl",
                 temperature: float = 1.0, beta: float = 0.5, mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * masked mean over tokens of divergence(p_t, p_s), with p = softmax(z / T).

    student_logits [B, L, V]; teacher: logits [B, L, V] or `TeacherTopK` (then both sides are folded onto the
    teacher's k + 1 buckets); mask [B, L] (True = counts). Returns a scalar.
    """
    if kind == "forward_kl" and not isinstance(teacher, TeacherTopK):
        return temperature ** 2 * masked_mean(_forward_kl_fused(student_logits, teacher, temperature), mask)
    s_logp = log_probs(logits=student_logits, temperature=temperature)
    if isinstance(teacher, TeacherTopK):
        if abs(teacher.temperature - temperature) > 1e-9:
            raise ValueError(f"the cached teacher log-probs were made at temperature {teacher.temperature}, "
                             f"not {temperature}; rebuild the teacher cache")
        t_logp = teacher.logp.float()
        s_logp = fold_topk(logp=s_logp, indices=teacher.indices.long())
    else:
        t_logp = log_probs(logits=teacher, temperature=temperature)
    per_token = divergence(teacher_logp=t_logp, student_logp=s_logp, kind=kind, beta=beta)   # [B, L]
    return temperature ** 2 * masked_mean(per_token, mask)


def _forward_kl_fused(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_t || p_s) per token as CE(p_t, z_s / T) - H(p_t): the soft-target cross-entropy kernel is fused
    (its backward is softmax(z_s / T) - p_t), about 3x faster than the elementwise form on a 4k vocabulary."""
    B, L, V = student_logits.shape
    with torch.no_grad():
        t_logp = log_probs(logits=teacher_logits, temperature=temperature)
        p_t = t_logp.exp()
        entropy = -torch.special.xlogy(p_t, p_t).sum(-1)                          # [B, L]; 0 log 0 = 0
    ce = F.cross_entropy((student_logits.float() / temperature).reshape(-1, V), p_t.reshape(-1, V),
                         reduction="none").view(B, L)
    return ce - entropy


def next_token_ce(*, logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy: mean over t of -log p(x_{t+1} | x_<=t), positions 0..L-2.

    logits [B, L, V], input_ids [B, L]; mask [B, L] marks positions whose prediction counts (its last column is
    ignored, there is no next token)."""
    logp = log_probs(logits=logits[:, :-1])                                       # [B, L-1, V]
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)                    # [B, L-1]
    return masked_mean(nll, None if mask is None else mask[:, :-1])


def hidden_mse(*, student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden-state MSE over matched layers: mean_pairs masked-mean_tok mean_feature (h_s - h_t)^2.

    `student_hidden[i]` and `teacher_hidden[i]` are [B, L, H] states that should agree (e.g. the output of student
    layer j and of the teacher layer it came from, for students that lost layers)."""
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError(f"hidden_mse needs matched, non-empty lists of states "
                         f"({len(student_hidden)} student, {len(teacher_hidden)} teacher)")
    terms = [masked_mean((hs.float() - ht.float()).pow(2).mean(-1), mask)
             for hs, ht in zip(student_hidden, teacher_hidden)]
    return torch.stack(terms).mean()
