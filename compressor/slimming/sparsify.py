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
from dataclasses import dataclass

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.inspect import count_params
from compressor.methods import SPARSITY_ALLOCATIONS, method
from compressor.progress import Reporter
from compressor.slimming.config import DLP_STATISTICS, SparsifyConfig
from compressor.slimming.report import LayerSparsity, SparsifyReport
from compressor.slimming.wanda import (dlp_sparsities, lower_median, outlier_share, owl_sparsities, prune_rows_,
                                       uniform_sparsities, wanda_scores)


@dataclass
class LinearMap:
    """One linear map (or a stack of E expert maps) of a decoder layer: weight view [..., out, in]."""

    layer: int
    key: str               # key of its input norms in `wanda_inputs`
    weight: torch.Tensor   # a view into the parameter: writing zeros into it edits the model


def sparsifiable_maps(model: nn.Module) -> list[LinearMap]:
    """Every map `sparsify_` may prune, in layer order (rule in the module docstring)."""
    adapter = resolve_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    blocks = {b.layer: b for b in adapter.moe_blocks(model, required=False)}
    maps = []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        blk = blocks.get(i)
        skip = {id(s) for m in ((blk.router, blk.shared_gate) if blk else ()) if m is not None for s in m.modules()}
        for mod in layer.modules():
            if isinstance(mod, nn.Linear) and id(mod) not in skip:
                maps.append(LinearMap(i, names[id(mod)], mod.weight))
        if blk is not None:
            ex = f"{blk.name}.experts"
            if blk.layout.has_gate:
                maps.append(LinearMap(i, f"{ex}.gate_up", blk.gate_weight()))     # [E, I, H]
            maps.append(LinearMap(i, f"{ex}.gate_up", blk.up_weight()))       # [E, I, H]
            maps.append(LinearMap(i, f"{ex}.down", blk.down_weight()))        # [E, H, I]
    return maps


def _norms(wanda_inputs: Mapping[str, torch.Tensor], m: LinearMap) -> torch.Tensor:
    if m.key not in wanda_inputs:
        raise ValueError(f"no Wanda input norms for {m.key!r}; collect them on this model with "
                         "collect_wanda_inputs(model, batches) (after any structural slimming)")
    x = torch.as_tensor(wanda_inputs[m.key]).to(m.weight.device).float()
    want = (*m.weight.shape[:-2], m.weight.shape[-1])
    if tuple(x.shape) != want:
        raise ValueError(f"Wanda input norms for {m.key!r} have shape {tuple(x.shape)}, expected {list(want)}")
    return x


def _ranking_norms(x: torch.Tensor) -> torch.Tensor:
    """Norms used to rank: rows of all zeros (an expert no token reached) become ones, i.e. magnitude pruning."""
    dead = (x == 0).all(dim=-1, keepdim=True)
    return torch.where(dead, torch.ones_like(x), x)


def layer_statistics(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor], layers: int, *,
                     owl_m: float | None, dlp_statistic: str | None = "median"
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per decoder layer l, over the float32 Wanda scores A_l of all its maps: (DLP score s_l, OWL outlier share D_l,
    weights |A_l|), one map's scores in memory at a time.

    s_l = median(A_l) for `dlp_statistic` "median" (DLP paper / repository default; `torch.median` of the
    concatenation, the lower middle value for an even count, found exactly by a two-pass radix select over the
    float32 bit patterns, `compressor.slimming.wanda.lower_median`, no concatenation held), mean(A_l) for "mean"
    (float32 row sums, float64 across rows), zeros for None. D_l = share of A_l above owl_m * mean(A_l), computed
    only when `owl_m` is given (zeros otherwise). Called with one layer's maps it gives that layer's row exactly as
    a call over all maps does (the layer-by-layer engine relies on it).

        s, d, n = layer_statistics(sparsifiable_maps(model), inputs, L, owl_m=None)          # medians
    """
    if dlp_statistic not in DLP_STATISTICS + (None,):
        raise ValueError(f"dlp_statistic must be one of {DLP_STATISTICS} or None, got {dlp_statistic!r}")
    count = torch.zeros(layers, dtype=torch.float64)
    for m in maps:
        count[m.layer] += m.weight.numel()
    need_mean = owl_m is not None or dlp_statistic == "mean"
    mean = _layer_means(maps, wanda_inputs, count) if need_mean else torch.zeros(layers, dtype=torch.float64)
    above = torch.zeros(layers, dtype=torch.float64)
    if owl_m is not None:
        for m in maps:
            a = wanda_scores(weight=m.weight, input_norms=_norms(wanda_inputs, m))
            above[m.layer] += outlier_share(scores=a, threshold=owl_m * mean[m.layer].item())[0]
    if dlp_statistic == "median":
        score = torch.zeros(layers, dtype=torch.float64)
        for i in sorted({m.layer for m in maps}):
            mine = [m for m in maps if m.layer == i]
            score[i] = lower_median(chunks=lambda: _layer_scores(mine, wanda_inputs))
    else:
        score = mean if dlp_statistic == "mean" else torch.zeros(layers, dtype=torch.float64)
    return score, above / count.clamp(min=1), count


def _layer_means(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor], count: torch.Tensor
                 ) -> torch.Tensor:
    """mean(A_l) per layer: float32 row sums, float64 across rows."""
    total = torch.zeros_like(count)
    for m in maps:
        a = wanda_scores(weight=m.weight, input_norms=_norms(wanda_inputs, m))
        total[m.layer] += a.sum(-1).double().sum().item()
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def _layer_scores(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor]):
    """The float32 Wanda scores of `maps`, one 2-D slice (one expert of a stacked map) at a time."""
    for m in maps:
        x = _norms(wanda_inputs, m)
        w = m.weight.reshape(-1, *m.weight.shape[-2:])
        for e in range(w.shape[0]):
            yield wanda_scores(weight=w[e], input_norms=x.reshape(-1, x.shape[-1])[e])


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
        from compressor.slimming.sequential import sparsify_sequentially_     # it builds on this module
        zeros = sparsify_sequentially_(model, batches, targets, reporter=reporter)
    else:
        zeros = prune_maps_(maps, wanda_inputs, targets, reporter=reporter)
    return SparsifyReport(params_before=before, params_after=count_params(model), seconds=time.perf_counter() - t0,
                          config=cfg, layers=layer_sparsities(targets, zeros, weights, stats),
                          achieved=float(zeros.sum() / weights.sum()) if weights.sum() else 0.0,
                          maps=sum(math.prod(m.weight.shape[:-2]) for m in maps))


@torch.no_grad()
def prune_maps_(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor], targets: torch.Tensor, *,
                reporter: Reporter | None = None) -> torch.Tensor:
    """Zero the lowest-Wanda-score weights of each map's rows at its layer's `targets[layer]`, in place; return the
    zero count per layer [len(targets)]."""
    zeros = torch.zeros(len(targets), dtype=torch.float64)
    for j, m in enumerate(maps):
        if reporter is not None:
            reporter.report("sparsify", step=j, total=len(maps), message=f"layer {m.layer}: {m.key}")
        x = _norms(wanda_inputs, m)
        a = wanda_scores(weight=m.weight, input_norms=_ranking_norms(x))
        prune_rows_(m.weight, scores=a, sparsity=float(targets[m.layer]))
        zeros[m.layer] += m.weight.numel() - torch.count_nonzero(m.weight).item()
    return zeros


def layer_sparsities(targets: torch.Tensor, zeros: torch.Tensor, weights: torch.Tensor, stats: torch.Tensor
                     ) -> list[LayerSparsity]:
    """Target and achieved sparsity (zeros / weights) per decoder layer, with the allocation's statistic."""
    return [LayerSparsity(layer=i, target=float(targets[i]), achieved=float(zeros[i] / weights[i]) if weights[i]
                          else 0.0, weights=int(weights[i]), stat=float(stats[i])) for i in range(len(targets))]
