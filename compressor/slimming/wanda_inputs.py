"""Wanda's input norms ||X_j||_2 for every map `sparsify_` prunes, taken from the importance package's calibration pass.

`compressor.importance` records sum_t x_tj^2 per input feature (float64, padding excluded) under the keys
    "<module name>"                  [in]    every nn.Linear of a decoder layer except routers / shared-expert gates
    "<moe block>.experts.gate_up"    [E, H]  input of expert e's gate and up (tokens routed to e only)
    "<moe block>.experts.down"       [E, I]  input of expert e's down (its intermediate activation h)
and `sparsify_` reads ||X_j||_2 = sqrt(that) under the same keys.

    norms = collect_wanda_inputs(model, batches)                 # runs a calibration pass (no gradients)
    norms = wanda_inputs_from_sums(report.layers.wanda_inputs)   # reuse a cached ImportanceReport
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from compressor.importance.wanda_stats import wanda_inputs_from_sums
from compressor.progress import Reporter


def collect_wanda_inputs(model: nn.Module, batches: Iterable, *, reporter: Reporter | None = None
                         ) -> dict[str, torch.Tensor]:
    """One calibration pass over `batches` (id tensors [B, S] or dicts with input_ids / attention_mask) on the
    model as it is now (after any structural slimming), returning ||X_j||_2 per key."""
    from compressor.importance import AnalyzeConfig, analyze     # lazy: importance imports pandas
    report = analyze(model, list(batches), config=AnalyzeConfig(want=("wanda",), taylor=False),
                     reporter=reporter)
    return wanda_inputs_from_sums(report.layers.wanda_inputs)
