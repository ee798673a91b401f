"""Expert pruning (REAP-style): drop the lowest-scoring routed experts, the same count in every MoE layer.

Keep rule per layer, scores s [E]:
    no routing groups:   keep = the n highest s
    G routing groups:    keep = the n/G highest s inside each contiguous group of E/G experts
The second keeps DeepSeek-V3 group routing intact: the kept experts of group g form new group g, so every group
still sees the same members (minus the dropped ones) and routing of the kept experts is unchanged.
Router rows, router biases and score-correction biases are sliced with the experts; every alias of E in the
config is written. Refused (ValueError): n < top-k, n > E, n not a multiple of G, fewer than 2 per group.

    report = prune_experts_(model, {blk.layer: reap[blk.layer] for blk in blocks}, ExpertPruneConfig(experts_keep=6))
    report.kept[0]     # e.g. [0, 1, 3, 4, 6, 7]
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.inspect import count_params
from compressor.progress import Reporter
from compressor.slimming.config import ExpertPruneConfig
from compressor.slimming.report import ExpertPruneReport
from compressor.slimming.structure import check_structure


def select_experts(*, scores: torch.Tensor, keep: int, groups: int = 1) -> torch.Tensor:
    """Ids of the experts to keep, ascending. scores [E] -> LongTensor [keep]; ties go to the lower id.

    With `groups` > 1 the experts form `groups` contiguous blocks of E/groups and each keeps keep/groups."""
    E = scores.shape[0]
    if groups < 1 or E % groups or keep % groups:
        raise ValueError(f"cannot keep {keep} of {E} experts evenly over {groups} groups")
    per, size = keep // groups, E // groups
    if not 1 <= per <= size:
        raise ValueError(f"cannot keep {per} experts per group of {size}")
    chosen = []
    for g in range(groups):
        s = scores[g * size:(g + 1) * size].double()
        order = torch.sort(s, descending=True, stable=True).indices[:per]
        chosen.append(order + g * size)
    return torch.cat(chosen).sort().values


def checked_expert_count(model: nn.Module, keep: int) -> int:
    """E, the expert count every MoE layer of `model` shares, after refusing (ValueError, model untouched) layers
    that disagree, a count `keep` the routing cannot take and routers whose rows cannot be sliced (the rules expert
    pruning and merging share)."""
    adapter = resolve_adapter(model)
    blocks = adapter.moe_blocks(model)
    counts = {b.num_experts for b in blocks}
    if len(counts) != 1:
        raise ValueError(f"MoE layers disagree on the expert count ({sorted(counts)}); one count is required")
    adapter.check_expert_count(model.config, keep)
    adapter.check_prunable(blocks)
    return counts.pop()


def _checked_scores(expert_scores: Mapping[int, torch.Tensor], blocks) -> dict[int, torch.Tensor]:
    out = {}
    for blk in blocks:
        if blk.layer not in expert_scores:
            raise ValueError(f"no expert scores for MoE layer {blk.layer}; scores cover layers {sorted(expert_scores)}")
        s = torch.as_tensor(expert_scores[blk.layer]).detach().cpu().reshape(-1)
        if s.numel() != blk.num_experts:
            raise ValueError(f"expert scores of layer {blk.layer} hold {s.numel()} values, the layer has "
                             f"{blk.num_experts} experts; were they computed on another (or already pruned) model?")
        if not torch.isfinite(s).all():
            raise ValueError(f"expert scores of layer {blk.layer} contain NaN or inf")
        out[blk.layer] = s
    return out


@torch.no_grad()
def prune_experts_(model: nn.Module, expert_scores: Mapping[int, torch.Tensor], cfg: ExpertPruneConfig, *,
                   reporter: Reporter | None = None) -> ExpertPruneReport:
    """Keep `cfg.experts_keep` experts per MoE layer (highest `expert_scores[layer]` [E]), in place."""
    t0 = time.perf_counter()
    E, n = checked_expert_count(model, cfg.experts_keep), cfg.experts_keep
    adapter = resolve_adapter(model)
    config = model.config
    blocks = adapter.moe_blocks(model)
    groups = adapter.num_groups(config)
    scores = _checked_scores(expert_scores, blocks)
    before = count_params(model)
    kept, dropped, score_kept = {}, {}, {}
    for i, blk in enumerate(blocks):
        if reporter is not None:
            reporter.report("slim", step=i, total=len(blocks), message=f"layer {blk.layer}: {E} -> {n} experts")
        s = scores[blk.layer]
        ids = select_experts(scores=s, keep=n, groups=groups)
        if n != E:
            blk.keep_experts_(ids if blk.device.type == "meta" else ids.to(blk.device))
        kept[blk.layer] = ids.tolist()
        dropped[blk.layer] = sorted(set(range(E)) - set(kept[blk.layer]))
        total = s.double().abs().sum().item()
        score_kept[blk.layer] = s.double().abs()[ids].sum().item() / total if total else 1.0
    adapter.set_num_experts_(config, n)
    check_structure(model)
    return ExpertPruneReport(params_before=before, params_after=count_params(model), seconds=time.perf_counter() - t0,
                             config=cfg, experts_before=E, experts_after=n, groups=groups, kept=kept,
                             dropped=dropped, score_kept=score_kept)
