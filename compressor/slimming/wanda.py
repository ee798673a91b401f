"""Wanda scores and layerwise sparsity allocation (uniform / OWL / DLP): tensor-only maths, no model plumbing.

Wanda (Sun et al. 2023):  A_ij = |W_ij| * ||X_j||_2,  X_j = input feature j over the calibration tokens;
                          in every output row i, zero the floor(n_in * s) weights with the lowest A_ij.
Allocation over decoder layers l = 1..L for a target mean sparsity S (both from docs/methods.md):
    spread(x, S, lam) = keep_l = (x_l - min x) / (max x - min x) * 2*lam;  keep_l += (1 - S) - mean(keep)
    OWL (Yin et al. 2024):  x_l = D_l = share of A entries in layer l above M * mean(A_l)  (M = 5, lam = 0.08)
    DLP (Chen et al. 2025): s_l = median(A_l) (or mean(A_l));  x_l = r_l = 1 - s_l / sum(s)   (alpha = 0.15)
    sparsity_l = clamp(1 - keep_l, 0, 1)
With S = 0 every layer gets 0; with max x == min x every layer gets S. The DLP normalisation follows
ironartisan/DLP `lib/prune.py::get_dlp_ratios` (min-max scaled, re-centred on 1 - S). Its layer score s_l is the
median of A over the concatenation of the layer's maps in the paper and under the repository's `--strategy` default
(`median`); the repository's unstructured path hard-codes the mean. Both are offered (`SparsifyConfig.dlp_statistic`),
median by default.

    a = wanda_scores(weight=W, input_norms=x_norm)     # [out, in]: compressor.importance.wanda_stats
    prune_rows_(W, scores=a, sparsity=0.5)                              # zeros half of every row, in place
    dlp_sparsities(layer_scores=torch.tensor([1.0, 2.0, 3.0]), sparsity=0.7, alpha=0.15)   # [0.55, 0.70, 0.85]
"""
from __future__ import annotations

import torch


def prune_rows_(weight: torch.Tensor, *, scores: torch.Tensor, sparsity: float) -> int:
    """Zero the floor(n_in * sparsity) lowest-`scores` weights of every output row of `weight` [..., out, in], in
    place. Returns how many weights were selected (rows * per-row count). Among equal scores the choice is
    deterministic but unspecified (`torch.topk`, ~5x faster than a full sort)."""
    n_in = weight.shape[-1]
    n = int(n_in * float(sparsity))
    n = min(max(n, 0), n_in)
    if n == 0:
        return 0
    idx = torch.topk(scores, n, dim=-1, largest=False, sorted=False).indices
    with torch.no_grad():
        weight.scatter_(-1, idx.to(weight.device), 0.0)
    return idx.numel()


def spread_keep_ratios(*, stat: torch.Tensor, sparsity: float, spread: float) -> torch.Tensor:
    """keep_l = minmax(stat)_l * 2*spread - mean(minmax(stat) * 2*spread) + (1 - sparsity).  stat [L] -> [L]."""
    x = stat.double()
    lo, hi = x.min(), x.max()
    scaled = (x - lo) / (hi - lo) * (2.0 * spread) if hi > lo else torch.zeros_like(x)
    return scaled - scaled.mean() + (1.0 - sparsity)


def _to_sparsities(keep: torch.Tensor, sparsity: float) -> torch.Tensor:
    if sparsity == 0.0:
        return torch.zeros_like(keep)
    return (1.0 - keep).clamp(0.0, 1.0)


def uniform_sparsities(*, layers: int, sparsity: float) -> torch.Tensor:
    """Every layer gets `sparsity`. -> [layers] float64."""
    return torch.full((layers,), float(sparsity), dtype=torch.float64)


def owl_sparsities(*, outlier_shares: torch.Tensor, sparsity: float, lam: float = 0.08) -> torch.Tensor:
    """OWL: layers with a larger outlier share D_l keep more. outlier_shares [L] -> sparsity per layer [L]."""
    return _to_sparsities(spread_keep_ratios(stat=outlier_shares, sparsity=sparsity, spread=lam), sparsity)


def dlp_sparsities(*, layer_scores: torch.Tensor, sparsity: float, alpha: float = 0.15) -> torch.Tensor:
    """DLP: r_l = 1 - s_l / sum(s), s_l = the layer's Wanda score statistic (median or mean of A_l); layers with a
    larger r (a smaller typical score) keep more. layer_scores [L] -> sparsity per layer [L]."""
    s = layer_scores.double()
    total = s.sum()
    r = 1.0 - s / total if total > 0 else torch.ones_like(s)
    return _to_sparsities(spread_keep_ratios(stat=r, sparsity=sparsity, spread=alpha), sparsity)
