"""Expert slimming (SlimMoE): keep the highest-scoring intermediate neurons of every routed expert.

HF configs hold one expert width, so every expert of every MoE layer keeps the same count
    w = round(keep_ratio * I)      (at least 1)
and families whose shared expert is sized `width * n_shared_experts` (DeepSeek) take the largest w' <= w that
divides the shared width, so the shared MLP keeps its size (`FamilyAdapter.valid_expert_width`). Families whose
width field also sizes the shared expert (Hunyuan, DeepSeek-V4, Llama-4: `FamilySpec.shared_width_coupled`) cut
the shared expert to the same w, keeping its highest data-free scores (`compressor.families.shared_mlp`).
Within expert e the kept neurons are the w' highest scores[e] (ties: lower id first), sorted by id.
Slicing is exact: the slimmed model equals the original with the other neurons' down-projection columns zeroed.

    scores = {blk.layer: torch.rand(blk.num_experts, blk.intermediate_size) for blk in adapter.moe_blocks(model)}
    report = slim_neurons_(model, scores, NeuronSlimConfig(keep_ratio=0.5))
    report.width          # 8 for I = 16
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.inspect import count_params
from compressor.progress import Reporter
from compressor.slimming.config import NeuronSlimConfig
from compressor.slimming.report import NeuronSlimReport
from compressor.slimming.structure import check_structure


def top_neurons(*, scores: torch.Tensor, width: int) -> torch.Tensor:
    """Ids of the `width` highest scores in each row, sorted ascending. scores [E, I] -> LongTensor [E, width].

    Ties go to the lower id (stable sort), so equal scores give a deterministic choice."""
    if not 1 <= width <= scores.shape[1]:
        raise ValueError(f"width must be in [1, {scores.shape[1]}], got {width}")
    order = torch.sort(scores.double(), dim=1, descending=True, stable=True).indices
    return order[:, :width].sort(dim=1).values


def _checked_scores(neuron_scores: Mapping[int, torch.Tensor], blocks) -> dict[int, torch.Tensor]:
    out = {}
    for blk in blocks:
        if blk.layer not in neuron_scores:
            raise ValueError(f"no neuron scores for MoE layer {blk.layer}; scores cover layers "
                             f"{sorted(neuron_scores)} (re-run the importance analysis on this model)")
        s = torch.as_tensor(neuron_scores[blk.layer]).detach().cpu()
        want = (blk.num_experts, blk.intermediate_size)
        if tuple(s.shape) != want:
            raise ValueError(f"neuron scores of layer {blk.layer} have shape {tuple(s.shape)}, the model has "
                             f"[experts, width] = {list(want)}; were they computed on another (or already slimmed) model?")
        if not torch.isfinite(s).all():
            raise ValueError(f"neuron scores of layer {blk.layer} contain NaN or inf")
        out[blk.layer] = s
    return out


@torch.no_grad()
def slim_neurons_(model: nn.Module, neuron_scores: Mapping[int, torch.Tensor], cfg: NeuronSlimConfig, *,
                  reporter: Reporter | None = None) -> NeuronSlimReport:
    """Keep the top `cfg.keep_ratio` neurons (by `neuron_scores[layer]` [E, I]) in every routed expert, in place.

    Writes the new width into the config (and, for DeepSeek, the shared-expert multiplier that keeps the shared
    MLP's size). Returns the width actually used and the kept ids per layer."""
    t0 = time.perf_counter()
    adapter = resolve_adapter(model)
    blocks = adapter.moe_blocks(model)
    widths = {b.intermediate_size for b in blocks}
    if len(widths) != 1:
        raise ValueError(f"MoE layers disagree on the expert width ({sorted(widths)}); one width is required")
    width_before = widths.pop()
    scores = _checked_scores(neuron_scores, blocks)
    before = count_params(model)
    requested = cfg.target_width(width_before)
    width = adapter.valid_expert_width(model.config, requested)
    if width != width_before:
        adapter.check_width_change(model, width)
    kept, score_kept = {}, {}
    for i, blk in enumerate(blocks):
        if reporter is not None:
            reporter.report("slim", step=i, total=len(blocks), message=f"layer {blk.layer}: {width_before} -> {width}")
        s = scores[blk.layer]
        keep = top_neurons(scores=s, width=width)                         # [E, width]
        total = s.double().abs().sum().item()
        score_kept[blk.layer] = s.double().abs().gather(1, keep).sum().item() / total if total else 1.0
        if width != width_before:
            blk.keep_neurons_(keep if blk.device.type == "meta" else keep.to(blk.device))
        kept[blk.layer] = keep
    if width != width_before:                  # keep 1.0 changes nothing, even where the family refuses the cut
        adapter.set_expert_width_(model.config, width)
    check_structure(model)
    return NeuronSlimReport(params_before=before, params_after=count_params(model), seconds=time.perf_counter() - t0,
                            config=cfg, width_before=width_before, width_requested=requested, width=width,
                            kept=kept, score_kept=score_kept)
