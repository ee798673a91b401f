"""Apply a recipe's `slimming` section to a model, with scores from one importance report.

Order (each step's scores stay valid for the next):
    1. slim_neurons_   neuron score `neuron_score` ([E, I] per MoE layer)     if expert_keep_ratio < 1
    2. prune_experts_  expert score `expert_score` ([E] per MoE layer)        if experts_keep is set
       merge_experts_  instead, with `expert_merge` (REAM / HC-SMoE / M-SMoE): calibrated on `batches`, layer by
                       layer on the model merged below, its own REAP / frequency (no score from the report); run
                       after step 3, so each layer is calibrated on the layers that stay (as layer by layer)
    3. drop_layers_    block influence of the original layers ([L])          if layers_drop > 0
    4. sparsify_       Wanda norms of the model as it is now                  if sparsity > 0
Steps 1-3 only read scores of layers / experts / neurons they keep, and those are unchanged by earlier steps. Step 4
needs ||X|| of the final structure: with sequential calibration (the default) each layer's norms are measured on
`batches` with the layers below already pruned; the OWL / DLP layer ratios, and every norm with dense calibration,
come from the dense model: the report's Wanda statistics when nothing was cut before, otherwise one calibration
pass over `batches`.

    importance = load_or_analyze(model, batches)
    result = apply_slimming_(model, importance, SlimmingConfig(expert_keep_ratio=0.5, experts_keep=6), batches=batches)
    result.params_after.active / result.params_before.active
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.inspect import ParamCount, count_params
from compressor.methods import EXPERT_SCORES, NEURON_SCORES
from compressor.progress import Reporter
from compressor.recipe import SlimmingConfig
from compressor.slimming.config import (ExpertMergeConfig, ExpertPruneConfig, LayerDropConfig, NeuronSlimConfig,
                                        SparsifyConfig)
from compressor.slimming.experts import prune_experts_
from compressor.slimming.merge import merge_experts_
from compressor.slimming.layers import drop_layers_
from compressor.slimming.neurons import slim_neurons_
from compressor.slimming.sparsify import sparsify_
from compressor.importance.wanda_stats import wanda_inputs_from_sums
from compressor.slimming.wanda_inputs import collect_wanda_inputs


@dataclass
class SlimmingResult:
    params_before: ParamCount
    params_after: ParamCount
    seconds: float
    reports: list = field(default_factory=list)       # one report per operation run, in order
    scores_used: dict = field(default_factory=dict)   # which score drove which cut

    def to_dict(self) -> dict:
        b, a = self.params_before, self.params_after
        return {"params_before": b.to_dict(), "params_after": a.to_dict(),
                "params_total_ratio": a.total / b.total, "params_active_ratio": a.active / b.active,
                "seconds": self.seconds, "scores_used": self.scores_used,
                "operations": [r.to_dict() for r in self.reports]}


def neuron_scores_from(importance, name: str) -> dict[int, torch.Tensor]:
    """{decoder layer: [E, I]} from an ImportanceReport's neuron scores `name` (activation | taylor |
    taylor_per_batch; `NeuronScores.score`)."""
    if importance.neurons is None:
        raise ValueError("the importance report has no neuron scores; analyze with 'neurons' in want")
    return dict(zip(importance.neurons.layers, importance.neurons.score(name)))


def expert_scores_from(importance, name: str) -> dict[int, torch.Tensor]:
    """{decoder layer: [E]} from an ImportanceReport's expert scores `name` (reap | frequency | man | ean_sum |
    taylor; `ExpertScores.score`)."""
    if importance.experts is None:
        raise ValueError("the importance report has no expert scores; analyze with 'experts' in want")
    return dict(zip(importance.experts.layers, importance.experts.score(name)))


def layer_scores_from(importance) -> torch.Tensor:
    """Block influence [L] of every decoder layer (NaN where no token was seen is refused by drop_layers_)."""
    if importance.layers is None:
        raise ValueError("the importance report has no layer scores; analyze with 'layers' in want")
    return importance.layers.block_influence


def apply_slimming_(model: nn.Module, importance, cfg: SlimmingConfig, *, batches=None,
                    reporter: Reporter | None = None) -> SlimmingResult:
    """Run the cuts `cfg` asks for, in place (order in the module docstring). `importance` is an ImportanceReport of
    this model before any cut; `batches` (calibration batches) are needed only to sparsify after structural cuts."""
    t0 = time.perf_counter()
    check_sparsity_batches(cfg, batches)
    reporter = reporter or Reporter()
    before = count_params(model)
    reports, used = [], {}
    if cfg.expert_keep_ratio < 1.0:
        used["neurons"] = cfg.neuron_score
        reports.append(slim_neurons_(model, neuron_scores_from(importance, cfg.neuron_score),
                                     NeuronSlimConfig(keep_ratio=cfg.expert_keep_ratio), reporter=reporter))
    merging = cfg.experts_keep is not None and cfg.expert_merge is not None
    if cfg.experts_keep is not None and not merging:
        used["experts"] = cfg.expert_score
        reports.append(prune_experts_(model, expert_scores_from(importance, cfg.expert_score),
                                      ExpertPruneConfig(experts_keep=cfg.experts_keep), reporter=reporter))
    if cfg.layers_drop:
        used["layers"] = "block_influence"
        reports.append(drop_layers_(model, layer_scores_from(importance), LayerDropConfig(layers_drop=cfg.layers_drop),
                                    reporter=reporter))
    if merging:
        used["experts"] = f"{cfg.expert_merge} merge"
        merged = merge_experts_(model, batches, merge_config(cfg), reporter=reporter)
        if cfg.layers_drop:
            merged.renumber_(reports[-1].kept)          # groups keyed by the layers' original indices
        reports.append(merged)
    if cfg.sparsity > 0:
        scfg = sparsify_config(cfg)
        inputs, dense = None, None
        if scfg.needs_dense_norms:
            inputs, dense = wanda_inputs_for(importance, reports, batches)
            if inputs is None:
                inputs = collect_wanda_inputs(model, batches)
        used["sparsity"] = sparsity_label(scfg, dense)
        reports.append(sparsify_(model, inputs, scfg, batches=batches, reporter=reporter))
    return SlimmingResult(params_before=before, params_after=count_params(model), seconds=time.perf_counter() - t0,
                          reports=reports, scores_used=used)


def merge_config(cfg: SlimmingConfig) -> ExpertMergeConfig:
    """The recipe's merge fields as the `merge_experts_` config."""
    return ExpertMergeConfig(experts_keep=cfg.experts_keep, method=cfg.expert_merge, group_size=cfg.merge_group_size)


def check_sparsity_batches(cfg: SlimmingConfig, batches) -> None:
    """Refuse, before any cut, sequential sparsity calibration or expert merging without calibration batches."""
    if cfg.expert_merge is not None and batches is None:
        raise ValueError(f"expert merging ({cfg.expert_merge}) calibrates every layer on the model merged below it: "
                         "pass calibration batches")
    if cfg.sparsity > 0 and cfg.sparsity_calibration == "sequential" and batches is None:
        raise ValueError("sequential sparsity calibration measures each layer's Wanda norms on the model pruned below "
                         "it: pass calibration batches, or set sparsity_calibration to dense")


def sparsify_config(cfg: SlimmingConfig) -> SparsifyConfig:
    """The recipe's sparsity fields as the `sparsify_` config (both paths, in memory and layer by layer)."""
    return SparsifyConfig(sparsity=cfg.sparsity, allocation=cfg.sparsity_allocation,
                          dlp_statistic=cfg.sparsity_dlp_statistic, calibration=cfg.sparsity_calibration)


def sparsity_label(scfg: SparsifyConfig, dense: str | None) -> str:
    """What drove the sparsity cut, for `scores_used`: `dense` is `wanda_inputs_for`'s label of the dense norms
    (None when none were read)."""
    if scfg.calibration == "dense":
        return dense
    seq = "wanda, sequential (each layer's norms measured with the layers below pruned)"
    return f"{seq}; layer ratios: {dense}" if dense else seq


def wanda_inputs_for(importance, reports: list, batches) -> tuple[dict | None, str]:
    """Where sparsify's input norms come from after the cuts in `reports`: (the importance report's norms, label)
    when nothing structural was cut, else (None, label): recollect them on the slimmed model over `batches`.
    Raises when a recollection is needed and there are no batches."""
    structural = any(r.params_after != r.params_before for r in reports)
    stored = getattr(importance.layers, "wanda_inputs", None) if importance.layers is not None else None
    if not structural and stored:
        return wanda_inputs_from_sums(stored), "wanda (from the importance report)"
    if batches is None:
        raise ValueError("sparsifying after structural cuts needs Wanda input norms of the slimmed model: pass "
                         "calibration batches")
    return None, "wanda (recollected on the slimmed model)"


def analysis_needs(cfg: SlimmingConfig) -> tuple[tuple[str, ...], bool]:
    """What `apply_slimming_(model, report, cfg)` needs scored: (score kinds, whether a Taylor pass is needed).

    neurons if expert_keep_ratio < 1; experts if experts_keep is set and the experts are pruned (a merge scores
    them itself, layer by layer on the merged model); layers if layers_drop > 0; Wanda input norms
    only when nothing structural is cut (otherwise `apply_slimming_` recollects them on the cut model). Taylor only
    when the chosen neuron or expert score needs one (`Method.taylor` in compressor/methods.py) and that cut is made.

        analysis_needs(SlimmingConfig(expert_keep_ratio=0.5)) == (("neurons",), True)
    """
    want = []
    if cfg.expert_keep_ratio < 1.0:
        want.append("neurons")
    if cfg.experts_keep is not None and cfg.expert_merge is None:
        want.append("experts")
    if cfg.layers_drop:
        want.append("layers")
    if cfg.sparsity > 0 and not want:
        want.append("wanda")
    taylor = ("neurons" in want and NEURON_SCORES[cfg.neuron_score].taylor) or \
        ("experts" in want and EXPERT_SCORES[cfg.expert_score].taylor)
    return tuple(want), taylor
