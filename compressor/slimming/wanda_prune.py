"""Zero the lowest Wanda scores of each map's rows at its layer's target sparsity, in place: the step both of the
sparsity cut's calibrations share (dense norms for every layer, or each layer's norms measured with the layers below
it already pruned, `compressor.slimming.sequential`).

    zeros = prune_maps_(sparsifiable_maps(model), wanda_inputs, targets)      # zero count per layer
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from compressor.importance.wanda_stats import LinearMap, map_norms, ranking_norms, wanda_scores
from compressor.progress import Reporter
from compressor.slimming.wanda import prune_rows_


@torch.no_grad()
def prune_maps_(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor], targets: torch.Tensor, *,
                reporter: Reporter | None = None) -> torch.Tensor:
    """Zero the lowest-Wanda-score weights of each map's rows at its layer's `targets[layer]`, in place; return the
    zero count per layer [len(targets)]."""
    zeros = torch.zeros(len(targets), dtype=torch.float64)
    for j, m in enumerate(maps):
        if reporter is not None:
            reporter.report("sparsify", step=j, total=len(maps), message=f"layer {m.layer}: {m.key}")
        x = map_norms(wanda_inputs, m)
        a = wanda_scores(weight=m.weight, input_norms=ranking_norms(x))
        prune_rows_(m.weight, scores=a, sparsity=float(targets[m.layer]))
        zeros[m.layer] += m.weight.numel() - torch.count_nonzero(m.weight).item()
    return zeros
