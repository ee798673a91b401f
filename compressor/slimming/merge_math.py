"""Expert merging, the math: which experts form a group, how one member's neurons line up with the centroid's, and
the saliency-weighted fold of a group into one expert. Tensor-only; `compressor.slimming.merge` does the plumbing.

REAM (arXiv 2604.04356; SamsungSAILMontreal/ream `ream/ream.py::pseudo_group`, `ream/merger.py::Merger._merge`,
`ream/utils.py::dist2sim`):
    similarity  s_ij = ( (cos(mu_i, mu_j) + 1) / 2  +  (1 - g_ij / max g) ) / 2
                mu_e  mean output of expert e over the calibration tokens (every expert run on every token)
                g_ij  Euclidean distance between the unit-normalised columns i and j of the router probabilities
                      P [T, E] (softmax of the router logits)
    distance    d_ij = 1 - s_ij
    groups      the k most salient experts (REAP) are the centroids; each, most salient first, takes its C - 1
                nearest unassigned experts (C = group size, 16 by default; centroids are never taken)
    alignment   each member's neurons are matched to the centroid's by the Hungarian algorithm on
                cost_ab = ||a_a - b_b|| over unit-normalised activation rows [I, N] + ||u_a - v_b|| over unit-normalised
                PCA-reduced neuron weights [gate row | up row | down column] (`neuron_weight_features`)
    fold        W = sum_j a_j W_j[perm_j],  a_j = saliency_j / sum of the group's saliency
HC-SMoE (Chen et al. 2024; wazenmai/HC-SMoE, as copied in `ream/hc.py::hcsmoe`): average-linkage hierarchical
clustering of the mean outputs mu (Euclidean) into k clusters, the representative being the member nearest its
cluster's mean; folded with frequency weights and no alignment.
M-SMoE (Li et al. 2024, "Merge, then Compress"; `pseudo_group(group_size=0)`): the k most frequently routed experts
lead, every other expert joins its nearest leader; neurons aligned; folded with frequency weights.

    labels, centroids = ream_groups(saliency=s, distance=d, keep=4, group_size=16)    # [E], [k]
    perm = align_neurons(reference=(act_c, feat_c), member=(act_m, feat_m))              # [I]
    merged = fold(torch.stack([w_c, w_m[perm]]), weights=torch.tensor([0.7, 0.3]))
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def unit_rows(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x||_row + eps) over the last axis (`ream/utils.py::normalize_rows`)."""
    return x / (torch.linalg.norm(x, dim=-1, keepdim=True) + eps)


def ream_similarity(*, mean_outputs: torch.Tensor, router_probs: torch.Tensor | None) -> torch.Tensor:
    """s [E, E] of the module docstring from mu [E, H] and P [T, E] (None: the output term alone)."""
    mu = mean_outputs.double()
    s = (F.cosine_similarity(mu[:, None, :], mu[None, :, :], dim=-1) + 1) / 2                 # [E, E]
    if router_probs is None:
        return s
    cols = unit_rows(router_probs.double().t())                                               # [E, T]
    g = torch.cdist(cols, cols)
    gate_sim = 1 - g / g.max() if g.max() > 0 else torch.ones_like(g)
    return (s + gate_sim) / 2


def ream_groups(*, saliency: torch.Tensor, distance: torch.Tensor, keep: int, group_size: int = 16
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [E] in 0..keep-1, centroids [keep]: the expert leading label j). Centroids: the `keep` most salient
    (ties to the lower id), each taking its `group_size` - 1 nearest unassigned experts, most salient centroid first;
    `group_size` 0 assigns every other expert to its nearest centroid instead (M-SMoE). Refused when the groups
    cannot cover every expert (keep * group_size < E)."""
    E = saliency.shape[0]
    if not 1 <= keep <= E:
        raise ValueError(f"cannot merge {E} experts into {keep}")
    if group_size and keep * group_size < E:
        raise ValueError(f"{keep} groups of at most {group_size} experts cannot hold all {E} experts: raise the "
                         f"group size to at least {-(-E // keep)} or keep more experts")
    centroids = torch.sort(saliency.double(), descending=True, stable=True).indices[:keep]
    labels = torch.full((E,), -1, dtype=torch.long)
    labels[centroids] = torch.arange(keep)
    d = distance.double()
    if group_size:
        for c in centroids.tolist():
            taken = 1
            for e in torch.sort(d[c], stable=True).indices.tolist():
                if taken >= group_size:
                    break
                if labels[e] < 0:
                    labels[e] = labels[c]
                    taken += 1
            if (labels >= 0).all():
                break
    else:
        rest = (labels < 0).nonzero().flatten()
        labels[rest] = d[centroids][:, rest].argmin(0)
    return labels, centroids


def hierarchical_groups(*, features: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HC-SMoE: average-linkage clustering of `features` [E, H] (Euclidean) cut into exactly `keep` clusters (scipy
    `linkage` + `cut_tree`); labels numbered by first appearance in expert order (as `hcsmoe` renumbers), each
    cluster led by the member nearest its mean."""
    from scipy.cluster.hierarchy import cut_tree, linkage

    E = features.shape[0]
    if not 1 <= keep <= E:
        raise ValueError(f"cannot merge {E} experts into {keep}")
    x = features.double().numpy()
    raw = cut_tree(linkage(x, method="average", metric="euclidean"), n_clusters=keep).reshape(-1) if keep < E \
        else np.arange(E)
    order: dict[int, int] = {}
    labels = torch.tensor([order.setdefault(int(c), len(order)) for c in raw], dtype=torch.long)
    centroids = []
    for j in range(keep):
        members = (labels == j).nonzero().flatten()
        centre = features[members].double().mean(0, keepdim=True)
        centroids.append(int(members[torch.cdist(features[members].double(), centre).flatten().argmin()]))
    return labels, torch.tensor(centroids, dtype=torch.long)


def neuron_weight_features(*, gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, rank: int = 64
                           ) -> torch.Tensor:
    """Per-neuron weight features [E, I, r]: the rows [gate_i | up_i | down column i] of every expert (canonical
    gate / up [E, I, H], down [E, H, I]), unit-normalised, reduced to r principal components over all E * I neurons
    (torch.pca_lowrank with seed 0, as `ream/weight_utils.py::pca_reduce`), scaled by the singular values."""
    parts = [t.float() for t in (gate, up) if t is not None] + [down.float().transpose(1, 2)]
    m = unit_rows(torch.cat(parts, dim=2))                                                    # [E, I, F]
    E, I, Fdim = m.shape
    x = m.reshape(E * I, Fdim)
    x = x - x.mean(0, keepdim=True)
    r = min(rank, Fdim, E * I)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, s, v = torch.pca_lowrank(x, q=r, center=False)
    return (x @ (v[:, :r] * s[:r])).reshape(E, I, r)


def align_neurons(*, reference: tuple[torch.Tensor, torch.Tensor | None],
                  member: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """perm [I] with member neuron perm[i] matched to reference neuron i: the assignment of least total cost
    cdist(unit activation rows [I, N]) + cdist(unit weight features [I, r]) (either may be None), solved by
    scipy's `linear_sum_assignment` as in `ream/merger.py::Merger._merge`."""
    from scipy.optimize import linear_sum_assignment

    cost = None
    for a, b in zip(reference, member):
        if a is None or b is None:
            continue
        a, b = a.double(), b.double()
        c = torch.cdist(unit_rows(a) if a.shape[-1] > 1 else a, unit_rows(b) if b.shape[-1] > 1 else b)
        cost = c if cost is None else cost + c
    if cost is None:
        raise ValueError("align_neurons needs activations or weight features")
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)


def group_weights(saliency: torch.Tensor) -> torch.Tensor:
    """a_j = s_j / sum s over one group's saliencies [G], after zero saliencies are raised to
    min(0.5, smallest positive saliency of the layer) by the caller (`merge_weights_of`)."""
    s = saliency.double()
    if (s < 0).any() or s.sum() <= 0:
        raise ValueError(f"merge weights need non-negative saliencies with a positive sum, got {s.tolist()}")
    return s / s.sum()


def floor_zero_saliency(saliency: torch.Tensor) -> torch.Tensor:
    """Zero saliencies (experts never routed) raised to min(0.5, the smallest positive one), so an unused expert
    can still be merged (`ream/merger.py::Merger.fit`)."""
    s = saliency.double().clone()
    zero = s == 0
    if zero.any() and (~zero).any():
        s[zero] = min(0.5, float(s[~zero].min()))
    elif zero.all():
        s[:] = 1.0
    return s


def fold(stacked: torch.Tensor, *, weights: torch.Tensor) -> torch.Tensor:
    """sum_j weights_j * stacked[j] over the first axis ([G, ...] -> [...]), in float64, in the input's dtype."""
    w = weights.double().reshape(-1, *([1] * (stacked.dim() - 1)))
    return (stacked.double() * w).sum(0).to(stacked.dtype)
