"""Importance formulas: tensor-only functions, keyword-only arguments, no hooks, no model.

Notation: a MoE layer has E experts of width I on hidden size H. X_e = the (non-padding) tokens routed to expert e,
g_e(x) = the router weight the model applies to expert e's output for token x (renormalised / scaled exactly as the
family does), h_e(x) = act(x Wg_e^T) * (x Wu_e^T) in R^I the intermediate activation (the family's own gate, biases
included), f_e(x) = h_e(x) Wd_e^T (+ b_e) in R^H the expert output before g. Running sums are float64; scores are sums divided on read (0 where nothing was seen).

    norm, peak = output_norm_and_peak(output=f)                           # f [P, H]: f_e(x) per routed pair
    s = routed_expert_sums(expert=e, gate=g, out_norm=norm, out_peak=peak, num_experts=E)
    reap = safe_divide(num=reap_sum, den=counts)           # S_e = mean_{x in X_e} g_e(x) ||f_e(x)||_2
    a = neuron_activation_scores(abs_sum=abs_h, counts=counts, down_norm=down_column_norms(down=wd))
"""
from __future__ import annotations

from typing import Iterable

import torch

F64 = torch.float64


def safe_divide(*, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den elementwise (den broadcast), with 0 where den == 0 (an expert that saw no token scores 0)."""
    num, den = num.to(F64), torch.as_tensor(den, dtype=F64, device=num.device)
    seen = den > 0
    return torch.where(seen, num / torch.where(seen, den, torch.ones_like(den)), torch.zeros((), dtype=F64))


# -- experts ---------------------------------------------------------------------------------------------------
def routed_expert_sums(*, expert: torch.Tensor, gate: torch.Tensor, out_norm: torch.Tensor, out_peak: torch.Tensor,
                       num_experts: int) -> dict[str, torch.Tensor]:
    """Per-expert sums over P routed (token, expert) pairs, each [E] float64.

    expert [P] = the expert e of each pair, gate [P] = g_e(x), out_norm [P] = ||f_e(x)||_2,
    out_peak [P] = max_d |f_e(x)_d| (see `output_norm_and_peak`). Returns
      count        = |X_e|
      gate_sum     = sum_{x in X_e} g_e(x)                       (weighted frequency numerator)
      reap_sum     = sum_{x in X_e} g_e(x) * ||f_e(x)||_2        (REAP numerator)
      man_sum      = sum_{x in X_e} ||f_e(x)||_2                 (MAN numerator)
      max_abs      = max_{x in X_e} max_d |f_e(x)_d|             (super-expert guard; 0 for unused experts)
    """
    dev = out_norm.device
    z = torch.zeros(num_experts, dtype=F64, device=dev)
    e, g, norm = expert.to(dev), gate.to(dev, F64), out_norm.to(F64)
    return {
        "count": z.index_add(0, e, torch.ones_like(norm)),
        "gate_sum": z.index_add(0, e, g),
        "reap_sum": z.index_add(0, e, g * norm),
        "man_sum": z.index_add(0, e, norm),
        "max_abs": z.scatter_reduce(0, e, out_peak.to(F64), reduce="amax", include_self=True),
    }


def output_norm_and_peak(*, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||f||_2, max_d |f_d|) per row of output [n, H]; the norm is taken in float32 at least (one row's sum of H
    squares), the running sums it feeds are float64."""
    work = output.detach()
    if work.dtype not in (torch.float32, F64):
        work = work.float()
    return torch.linalg.vector_norm(work, dim=-1), work.abs().amax(-1)


def reap_scores(*, gates: torch.Tensor, outputs: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """Reference REAP over explicit tensors: S_e = mean_{x in X_e} g_e(x) * ||f_e(x)||_2.

    gates [T, E] (router weight, 0 where not routed), outputs [T, E, H] (f_e(x) for every pair), routed [T, E]
    bool. Returns [E] float64, 0 for experts no token reached. Meant for tests and small studies: the collector
    accumulates the same quantity with `routed_expert_sums` without materialising [T, E, H].
    """
    norms = torch.linalg.vector_norm(outputs.to(F64), dim=-1)           # [T, E]
    w = routed.to(F64)
    return safe_divide(num=(gates.to(F64) * norms * w).sum(0), den=w.sum(0))


def down_column_norms(*, down: torch.Tensor) -> torch.Tensor:
    """||Wd_e[:, i]||_2 for every expert and neuron: down [E, H, I] (canonical) -> [E, I] float64."""
    return torch.stack([torch.linalg.vector_norm(d.detach().to(F64), dim=0) for d in down])   # one expert at a time


def neuron_activation_scores(*, abs_sum: torch.Tensor, counts: torch.Tensor, down_norm: torch.Tensor
                             ) -> torch.Tensor:
    """Activation-aware neuron score a_{e,i} = mean_{x in X_e} |h_e(x)_i| * ||Wd_e[:, i]||_2.

    abs_sum [E, I] = sum_{x in X_e} |h_e(x)_i|, counts [E] = |X_e|, down_norm [E, I] = `down_column_norms`.
    Returns [E, I] float64; a neuron whose down column is zero scores 0, and so does every neuron of an expert
    no token reached.
    """
    return safe_divide(num=abs_sum, den=counts.to(F64)[:, None]) * down_norm.to(F64)


# -- first-order Taylor ------------------------------------------------------------------------------------------
def taylor_saliency(*, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Elementwise first-order Taylor saliency |w * dL/dw| (float64, same shape as `weight`)."""
    return (weight.detach().to(F64) * grad.detach().to(F64)).abs()


def taylor_neuron_scores(*, gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, gate_grad: torch.Tensor | None,
                         up_grad: torch.Tensor, down_grad: torch.Tensor, gate_bias: torch.Tensor | None = None,
                         up_bias: torch.Tensor | None = None, gate_bias_grad: torch.Tensor | None = None,
                         up_bias_grad: torch.Tensor | None = None) -> torch.Tensor:
    """Taylor score of neuron i of expert e: T_{e,i} = sum_h |Wg[e,i,h] dL/dWg[e,i,h]| + sum_h |Wu[e,i,h] dL/dWu[e,i,h]|
    + sum_h |Wd[e,h,i] dL/dWd[e,h,i]| (+ |b dL/db| of the neuron's gate / up bias when the family has them:
    they leave with the neuron).

    gate, up [E, I, H]; down [E, H, I] (canonical layout) and their gradients; biases [E, I]. Returns [E, I] float64.
    """
    score = taylor_saliency(weight=up, grad=up_grad).sum(-1)
    if gate is not None:                                   # experts without a gate (up-only) have no gate term
        score = taylor_saliency(weight=gate, grad=gate_grad).sum(-1) + score
    score = score + taylor_saliency(weight=down, grad=down_grad).sum(1)
    if gate_bias is not None:
        score = score + taylor_saliency(weight=gate_bias, grad=gate_bias_grad)
    if up_bias is not None:
        score = score + taylor_saliency(weight=up_bias, grad=up_bias_grad)
    return score


def taylor_expert_scores(*, params: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Taylor score of expert e: T_e = sum over every tensor P of the experts (leading axis E) of
    sum_{j} |P[e, j] dL/dP[e, j]|. `params` yields (weight, grad) pairs, each [E, ...]. Returns [E] float64."""
    total = None
    for w, g in params:
        s = taylor_saliency(weight=w, grad=g).flatten(1).sum(1)
        total = s if total is None else total + s
    if total is None:
        raise ValueError("taylor_expert_scores needs at least one (weight, grad) pair")
    return total


# -- layers ----------------------------------------------------------------------------------------------------
def cosine_sum(*, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """sum_t cos(h_in_t, h_out_t) over tokens, float64 scalar. h_in, h_out [T, H]. A zero vector has cos 0."""
    a, b = h_in.to(F64), h_out.to(F64)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).sum()


def block_influence(*, cos_sum: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """ShortGPT block influence BI_l = 1 - mean_t cos(h_in_t, h_out_t); 0 for a layer that changes nothing's
    direction, 2 for one that flips every sign. NaN where no token was seen."""
    tokens = torch.as_tensor(tokens, dtype=F64)
    mean = torch.where(tokens > 0, cos_sum.to(F64) / tokens.clamp_min(1), torch.full_like(tokens, float("nan")))
    return 1.0 - mean


def routed_pairs(idx: torch.Tensor, w: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor, list[int]]:
    """The (token, expert) pairs of idx / w [T, k] grouped by expert (stable: tokens ascending within an expert;
    entries outside [0, E) dropped): token [P], expert [P], router weight [P], and the pair count per expert [E]."""
    E, k = num_experts, idx.shape[1]
    flat = idx.reshape(-1)
    ok = (flat >= 0) & (flat < E)
    order = torch.argsort(torch.where(ok, flat, torch.full_like(flat, E)), stable=True)
    per_expert = torch.bincount(flat[ok], minlength=E).tolist()
    order = order[: sum(per_expert)]
    return order // k, flat[order], w.reshape(-1)[order], per_expert
