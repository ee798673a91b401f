"""Unstructured Wanda sparsity over every decoder layer's linear maps, with per-layer ratios (uniform / OWL / DLP).

The maps of decoder layer l are its attention and dense-MLP `nn.Linear` weights, shared-expert weights, and every
routed expert's gate, up and down slices (canonical [E, out, in] views, whatever the stored layout). Never touched:
routers, shared-expert gates, embeddings, norms, lm_head, biases. Zeros are stored as dense zeros (same shapes, so
the checkpoint loads anywhere; it only compresses when stored sparse).

`wanda_inputs` maps a key to ||X_j||_2 per input feature j (`collect_wanda_inputs` builds it; the keys are the
importance package's):
    "<module>"                          [in]       an nn.Linear, e.g. "model.layers.0.self_attn.q_proj"
    "<moe block>.experts.gate_up"       [E, H]     input of expert e's gate and up (tokens routed to e only)
    "<moe block>.experts.down"          [E, I]     input of expert e's down (its intermediate activation)
An expert no calibration token reached (all-zero norms) is ranked by |W| alone (magnitude pruning).

Calibration (`SparsifyConfig.calibration`): "sequential" (the default, as Wanda, OWL and DLP do it) measures layer
l's norms on `batches` with layers < l already pruned (`compressor.slimming.sequential`); `wanda_inputs`, the norms of
the dense model, then only feed the OWL / DLP layer statistics (None will do for uniform). "dense" prunes every
layer with the norms in `wanda_inputs`.

    inputs = collect_wanda_inputs(model, batches)
    report = sparsify_(model, inputs, SparsifyConfig(sparsity=0.5, allocation="owl"), batches=batches)
    [(s.layer, s.target, s.achieved) for s in report.layers]
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.importance.wanda_stats import LinearMap, layer_statistics, sparsifiable_maps
from compressor.inspect import count_params
from compressor.methods import SPARSITY_ALLOCATIONS, method
from compressor.progress import Reporter
from compressor.slimming.config import SparsifyConfig
from compressor.slimming.report import LayerSparsity, SparsifyReport
from compressor.slimming.sequential import sparsify_sequentially_
from compressor.slimming.wanda import dlp_sparsities, owl_sparsities, uniform_sparsities
from compressor.slimming.wanda_prune import prune_maps_

__all__ = ["LinearMap", "allocate", "layer_sparsities", "layer_statistics", "prune_maps_", "sparsifiable_maps",
           "sparsify_", "statistics_for"]


def allocate(cfg: SparsifyConfig, *, scores: torch.Tensor, outliers: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sparsity per layer, the statistic it came from) for `cfg.allocation`, an entry of
    `compressor.methods.SPARSITY_ALLOCATIONS`. `scores` holds the DLP layer scores s_l (`layer_statistics`' first
    output: medians or means as `cfg.dlp_statistic` says), `outliers` OWL's D_l."""
    return method(SPARSITY_ALLOCATIONS, cfg.allocation).load()(cfg, scores=scores, outliers=outliers)


def allocate_uniform(cfg: SparsifyConfig, *, scores: torch.Tensor, outliers: torch.Tensor):
    """sparsity_l = S for every layer (`slimming.wanda.uniform_sparsities`)."""
    return uniform_sparsities(layers=len(scores), sparsity=cfg.sparsity), torch.zeros_like(scores)


def allocate_owl(cfg: SparsifyConfig, *, scores: torch.Tensor, outliers: torch.Tensor):
    """OWL (Yin et al. 2024): keep_l from the outlier share D_l spread by lambda (`slimming.wanda.owl_sparsities`)."""
    return owl_sparsities(outlier_shares=outliers, sparsity=cfg.sparsity, lam=cfg.owl_lambda), outliers


def allocate_dlp(cfg: SparsifyConfig, *, scores: torch.Tensor, outliers: torch.Tensor):
    """DLP (Chen et al. 2025): r_l = 1 - s_l / sum(s) spread by alpha (`slimming.wanda.dlp_sparsities`)."""
    return dlp_sparsities(layer_scores=scores, sparsity=cfg.sparsity, alpha=cfg.dlp_alpha), scores


def statistics_for(cfg: SparsifyConfig, maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor], layers: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`layer_statistics` computing only what `cfg.allocation` reads (its registry entry's `reads`): (DLP scores,
    OWL outlier shares, weights)."""
    reads = method(SPARSITY_ALLOCATIONS, cfg.allocation).reads
    return layer_statistics(maps, wanda_inputs, layers, owl_m=cfg.owl_m if reads == "outliers" else None,
                            dlp_statistic=cfg.dlp_statistic if reads == "scores" else None)


@torch.no_grad()
def sparsify_(model: nn.Module, wanda_inputs: Mapping[str, torch.Tensor] | None, cfg: SparsifyConfig, *,
              batches=None, reporter: Reporter | None = None) -> SparsifyReport:
    """Zero the lowest-Wanda-score weights of every output row, layer l at the sparsity its allocation gives, in
    place; norms as `cfg.calibration` says (module docstring): sequential needs `batches`, dense (and OWL / DLP)
    need `wanda_inputs`. Reports target and achieved sparsity per layer (zeros / weights over the layer's maps)."""
    t0 = time.perf_counter()
    if cfg.calibration == "sequential" and batches is None:
        raise ValueError("sequential calibration measures each layer's Wanda norms on the model pruned below it: "
                         "pass calibration batches, or use SparsifyConfig(calibration='dense')")
    if cfg.needs_dense_norms and wanda_inputs is None:
        raise ValueError(f"{cfg.allocation} allocation with {cfg.calibration} calibration needs the Wanda input norms "
                         "of the dense model: collect_wanda_inputs(model, batches)")
    adapter = resolve_adapter(model)
    L = len(adapter.decoder_layers(model))
    before = count_params(model)
    maps = sparsifiable_maps(model)
    scores, outliers, weights = statistics_for(cfg, maps, wanda_inputs or {}, L)
    targets, stats = allocate(cfg, scores=scores, outliers=outliers)
    if cfg.calibration == "sequential":
        zeros = sparsify_sequentially_(model, batches, targets, reporter=reporter)
    else:
        zeros = prune_maps_(maps, wanda_inputs, targets, reporter=reporter)
    return SparsifyReport(params_before=before, params_after=count_params(model), seconds=time.perf_counter() - t0,
                          config=cfg, layers=layer_sparsities(targets, zeros, weights, stats),
                          achieved=float(zeros.sum() / weights.sum()) if weights.sum() else 0.0,
                          maps=sum(math.prod(m.weight.shape[:-2]) for m in maps))


def layer_sparsities(targets: torch.Tensor, zeros: torch.Tensor, weights: torch.Tensor, stats: torch.Tensor
                     ) -> list[LayerSparsity]:
    """Target and achieved sparsity (zeros / weights) per decoder layer, with the allocation's statistic."""
    return [LayerSparsity(layer=i, target=float(targets[i]), achieved=float(zeros[i] / weights[i]) if weights[i]
                          else 0.0, weights=int(weights[i]), stat=float(stats[i])) for i in range(len(targets))]
