"""Layer dropping (ShortGPT): remove the K decoder layers with the lowest block influence BI_l = 1 - cos(h_in, h_out).

The kept layers are renumbered 0..L-K-1 (every `layer_idx` / `layer_id`, which index the KV cache), and the config
is rewritten so a stock reload builds the same stack:
    num_hidden_layers            L - K
    per-layer lists              the kept layers' entries (layer_types, mlp_layer_types, per-layer head counts)
    mlp_only_layers (Qwen)       new indices of the kept dense layers, with decoder_sparse_step = 1
    dense-prefix counts          first_k_dense_replace, num_dense_layers, moe_layer_start_index: the kept dense
                                 layers (they stay a prefix, order is preserved); moe_layer_end_index, MoE steps
The new config is rebuilt on the meta device first; a drop it cannot express (a hybrid period, a coupled stack) is
refused with the model untouched. Dropping every MoE layer, or every layer, is refused.

    bi = torch.tensor([0.30, 0.05, 0.20, 0.12])
    report = drop_layers_(model, bi, LayerDropConfig(layers_drop=1))
    report.dropped      # [1]
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.families.fields import text_config
from compressor.inspect import count_params
from compressor.progress import Reporter
from compressor.slimming.config import LayerDropConfig
from compressor.slimming.report import LayerDropReport
from compressor.slimming.structure import check_structure

LAYER_INDEX_ATTRS = ("layer_idx", "layer_id")
PREFIX_DENSE_FIELDS = ("first_k_dense_replace", "num_dense_layers", "moe_layer_start_index")
STEP_FIELDS = ("decoder_sparse_step", "moe_layer_interval", "interleave_moe_layer_step", "moe_layer_freq")


def lowest_layers(*, scores: torch.Tensor, drop: int) -> list[int]:
    """Indices of the `drop` lowest scores, ascending; ties go to the later layer (early layers are kept)."""
    L = scores.shape[0]
    order = sorted(range(L), key=lambda i: (float(scores[i]), -i))
    return sorted(order[:drop])


def _get(config, name):
    try:
        return getattr(config, name, None)
    except Exception:                 # noqa: BLE001 - e.g. transformers' AmbiguousGlobalPerLayerAttributeError
        return None


def per_layer_lists(config, old_layers: int) -> list[str]:
    """Config fields holding one entry per decoder layer (layer_types, mlp_layer_types, per-layer head counts...)."""
    names = set(config.to_dict()) | {k for k in vars(config) if not k.startswith("_")}
    return sorted(n for n in names if isinstance(_get(config, n), (list, tuple))
                  and len(_get(config, n)) == old_layers and n not in ("architectures",))


def config_updates(config, *, keep: list[int], moe_flags: list[bool], old_layers: int) -> dict:
    """Config fields to rewrite when only layers `keep` (old indices; `moe_flags` per kept layer) remain.

    Rules: num_hidden_layers = len(keep); every per-layer list keeps the kept layers' entries; mlp_only_layers
    (Qwen) = new indices of the kept dense layers with decoder_sparse_step = 1; a dense-prefix count
    (first_k_dense_replace, num_dense_layers, moe_layer_start_index) = the number of kept dense layers, which must
    still be a prefix; moe_layer_end_index = the last kept MoE layer; a MoE step / interval = 1 when every layer
    after the dense prefix is MoE. `drop_layers_` then rebuilds the stack from these fields on the meta device and
    refuses the drop if any layer would come out different."""
    updates = {"num_hidden_layers": len(keep)}
    for name in per_layer_lists(config, old_layers):
        updates[name] = [_get(config, name)[i] for i in keep]
    dense = [j for j, moe in enumerate(moe_flags) if not moe]
    moe = [j for j, m in enumerate(moe_flags) if m]
    prefix = dense == list(range(len(dense)))
    if isinstance(getattr(config, "mlp_only_layers", None), (list, tuple)):
        updates["mlp_only_layers"] = dense
        if hasattr(config, "decoder_sparse_step"):
            updates["decoder_sparse_step"] = 1
    for f in PREFIX_DENSE_FIELDS:
        if isinstance(getattr(config, f, None), int) and not isinstance(getattr(config, f), bool):
            if not prefix:
                raise ValueError(f"kept dense layers {dense} are not a prefix; {f} cannot express them")
            updates[f] = len(dense)
    if isinstance(getattr(config, "moe_layer_end_index", None), int) and moe:
        updates["moe_layer_end_index"] = moe[-1]
    if prefix and moe == list(range(len(dense), len(keep))):
        for f in STEP_FIELDS:
            if isinstance(getattr(config, f, None), int) and f not in updates:
                updates[f] = 1
    return updates


def _check_rebuild(model: nn.Module, updates: dict, keep: list[int], prefix: str) -> None:
    """Refuse (model untouched) when a config with `updates` would not rebuild the kept layers, renumbered."""
    from compressor.families.fields import text_config
    from compressor.slimming.structure import expected_shapes
    config = copy.deepcopy(model.config)
    target = text_config(config)
    for name, value in updates.items():
        try:
            setattr(target, name, value)
        except (AttributeError, TypeError):
            pass                                  # a derived, read-only field (Jamba's layer_types)
    try:
        want = expected_shapes(config, type(model))
    except Exception as e:                        # noqa: BLE001 - any failure to rebuild is a refusal
        raise ValueError(f"the config cannot describe the remaining {len(keep)} layers ({type(e).__name__}: "
                         f"{str(e)[:160]}); this layer cannot be dropped") from e
    new_of = {old: new for new, old in enumerate(keep)}
    have = {}
    for k, v in model.state_dict().items():
        if k.startswith(prefix + "."):
            old, rest = k[len(prefix) + 1:].split(".", 1)
            if int(old) not in new_of:
                continue
            k = f"{prefix}.{new_of[int(old)]}.{rest}"
        have[k] = tuple(v.shape)
    diff = sorted(set(want) ^ set(have)) + sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if diff:
        raise ValueError(f"after dropping, the config would rebuild a different stack ({', '.join(diff[:4])}"
                         f"{' ...' if len(diff) > 4 else ''}): the layer pattern of this family cannot express the "
                         "remaining layers; drop other layers")


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
        if adapter.spec.layer_dropping:
            raise ValueError(f"{adapter.family}: layer dropping is not possible: {adapter.spec.layer_dropping}")
        mcfg = text_config(model.config)
        updates = config_updates(mcfg, keep=keep, moe_flags=[i in moe_layers for i in keep], old_layers=L)
        prefix = adapter.layer_prefix(model)
        _check_rebuild(model, updates, keep, prefix)
        if reporter is not None:
            reporter.report("slim", step=0, total=1, message=f"dropping layers {drop}")
        new_layers = nn.ModuleList([layers[i] for i in keep])
        owner, _, leaf = prefix.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, new_layers)
        for new_idx, layer in enumerate(new_layers):
            for mod in layer.modules():
                for attr in LAYER_INDEX_ATTRS:
                    if isinstance(getattr(mod, attr, None), int):
                        setattr(mod, attr, new_idx)
        for name, value in updates.items():
            try:
                setattr(mcfg, name, value)
            except (AttributeError, TypeError):
                pass                              # derived, read-only (checked by _check_rebuild)
        check_structure(model)
    return LayerDropReport(params_before=before, params_after=count_params(model), seconds=time.perf_counter() - t0,
                           config=cfg, layers_before=L, layers_after=len(keep), dropped=drop, kept=keep,
                           scores=scores.tolist())
