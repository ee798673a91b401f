"""Layer dropping (ShortGPT): remove the K decoder layers with the lowest block influence BI_l = 1 - cos(h_in, h_out).

The kept layers are renumbered 0..L-K-1 (every `layer_idx` / `layer_id`, which index the KV cache), and the config
is rewritten so a stock reload builds the same stack:
    num_hidden_layers            L - K
    layer_types (per layer)      the kept layers' entries
    mlp_only_layers (Qwen)       new indices of the kept dense layers, with decoder_sparse_step = 1
    first_k_dense_replace (DS)   number of kept dense layers (they stay a prefix, order is preserved)
Dropping every MoE layer, or every layer, is refused.

    bi = torch.tensor([0.30, 0.05, 0.20, 0.12])
    report = drop_layers_(model, bi, LayerDropConfig(layers_drop=1))
    report.dropped      # [1]
"""
from __future__ import annotations

import time

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.inspect import count_params
from compressor.progress import Reporter
from compressor.slimming.config import LayerDropConfig
from compressor.slimming.report import LayerDropReport
from compressor.slimming.structure import check_structure

PER_LAYER_LISTS = ("layer_types",)          # config lists with one entry per decoder layer
LAYER_INDEX_ATTRS = ("layer_idx", "layer_id")


def lowest_layers(*, scores: torch.Tensor, drop: int) -> list[int]:
    """Indices of the `drop` lowest scores, ascending; ties go to the later layer (early layers are kept)."""
    L = scores.shape[0]
    order = sorted(range(L), key=lambda i: (float(scores[i]), -i))
    return sorted(order[:drop])


def config_updates(config, *, keep: list[int], moe_flags: list[bool], old_layers: int) -> dict:
    """Config fields to rewrite when only layers `keep` (old indices; `moe_flags` per kept layer) remain."""
    updates = {"num_hidden_layers": len(keep)}
    for name in PER_LAYER_LISTS:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == old_layers:
            updates[name] = [value[i] for i in keep]
    dense = [j for j, moe in enumerate(moe_flags) if not moe]
    if hasattr(config, "mlp_only_layers"):
        updates["mlp_only_layers"] = dense
        if hasattr(config, "decoder_sparse_step"):
            updates["decoder_sparse_step"] = 1
    if getattr(config, "first_k_dense_replace", None) is not None:
        if dense != list(range(len(dense))):
            raise ValueError(f"kept dense layers {dense} are not a prefix; first_k_dense_replace cannot express them")
        updates["first_k_dense_replace"] = len(dense)
    return updates


@torch.no_grad()
def drop_layers_(model: nn.Module, layer_scores: torch.Tensor, cfg: LayerDropConfig, *,
                 reporter: Reporter | None = None) -> LayerDropReport:
    """Remove the `cfg.layers_drop` decoder layers with the lowest `layer_scores` [L], in place."""
    t0 = time.perf_counter()
    adapter = resolve_adapter(model)
    layers = adapter.decoder_layers(model)
    L = len(layers)
    scores = torch.as_tensor(layer_scores).detach().cpu().reshape(-1).double()
    if scores.numel() != L:
        raise ValueError(f"layer scores hold {scores.numel()} values, the model has {L} decoder layers; were they "
                         "computed on another (or already shortened) model?")
    if not torch.isfinite(scores).all():
        raise ValueError("layer scores contain NaN or inf")
    K = cfg.layers_drop
    if K >= L:
        raise ValueError(f"cannot drop {K} of {L} decoder layers: keep at least one (layers_drop <= {L - 1})")
    before = count_params(model)
    drop = lowest_layers(scores=scores, drop=K)
    keep = [i for i in range(L) if i not in set(drop)]
    moe_layers = {b.layer for b in adapter.moe_blocks(model)}
    if K and not moe_layers & set(keep):
        raise ValueError(f"dropping layers {drop} would remove every MoE layer ({sorted(moe_layers)}); "
                         "drop fewer layers")
    if K:
        updates = config_updates(model.config, keep=keep, moe_flags=[i in moe_layers for i in keep], old_layers=L)
        if reporter is not None:
            reporter.report("slim", step=0, total=1, message=f"dropping layers {drop}")
        new_layers = nn.ModuleList([layers[i] for i in keep])
        getattr(model, "model", model).layers = new_layers
        for new_idx, layer in enumerate(new_layers):
            for mod in layer.modules():
                for attr in LAYER_INDEX_ATTRS:
                    if isinstance(getattr(mod, attr, None), int):
                        setattr(mod, attr, new_idx)
        for name, value in updates.items():
            setattr(model.config, name, value)
        check_structure(model)
    return LayerDropReport(params_before=before, params_after=count_params(model), seconds=time.perf_counter() - t0,
                           config=cfg, layers_before=L, layers_after=len(keep), dropped=drop, kept=keep,
                           scores=scores.tolist())
