"""Sequential calibration of Wanda sparsity: layer l's input norms are measured on the model already pruned below l.

Rule (locuslab/wanda `lib/prune.py::prune_wanda`; the same loop in luuyin/OWL `lib/prune_all.py::prune_wanda_outlier`
and ironartisan/DLP `lib/prune.py::prune_wanda_dlp`):
    h_0 = what the first decoder layer receives for the calibration batches
    for l = 0 .. L-1:
        ||X_j|| of every map of layer l     <- hooks while layer l, still dense, runs on h_l
        prune layer l's maps at sparsity_l with A = |W| * ||X||   (`prune_maps_`)
        h_{l+1} = (pruned layer l)(h_l)                              (Wanda's `inps, outs = outs, inps`)
All maps of a layer are calibrated in one forward before any of them is pruned, as in the references. OWL's and
DLP's layer ratios sparsity_l come from a first pass over the *dense* model (the first loop of
`prune_wanda_outlier`, DLP's `get_dlp_ratios`), so callers `allocate` on dense statistics and then prune with this.

The per-layer step is shared by the in-memory path (`sparsify_sequentially_`) and the layer-by-layer engine
(`compressor.stream.slim`), which therefore prune the same weights. Families whose decoder layers pass state to the
next layer besides the hidden states (`catalog.STREAM_UNSUPPORTED`: zaya's routing state, glm_moe_dsa's and
kolibri1_1's indexer, hy_v4) cannot be run one layer at a time on captured inputs; in memory, h_l is then what layer
l receives inside a whole-model forward that stops right after layer l (`_sparsify_by_forwards`): the same rule,
one truncated forward per layer instead of one layer per layer. `walk_layers` is that walk, shared with expert
merging (`compressor.slimming.merge`).

    zeros = sparsify_sequentially_(model, batches, targets)          # targets [L] from `allocate`
    acts = capture_inputs(skeleton, batches)                          # or one layer at a time:
    zeros += prune_layer_calibrated_(layer, view, acts, j, targets)   # acts now hold layer j + 1's inputs
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.progress import Reporter
from compressor.importance.wanda_stats import sparsifiable_maps, wanda_inputs_from_sums
from compressor.slimming.wanda_prune import prune_maps_


@torch.no_grad()
def prune_layer_calibrated_(layer: nn.Module, view: nn.Module, acts, j: int, targets: torch.Tensor) -> torch.Tensor:
    """Calibrate decoder layer j on `acts` (its inputs, `compressor.stream.sweep.Activations`), prune its maps at
    `targets[j]`, then move `acts` through the pruned layer. `view` is a model-shaped wrapper whose layer j is
    `layer` (`Skeleton.layer_view`, `LayerView`), so the keys are the model's own. Returns zeros per layer
    [len(targets)] (only entry j is non-zero)."""
    from compressor.importance.collect import collect_scores       # lazy: importance imports pandas
    from compressor.stream.sweep import advance_, observe

    with collect_scores(view, resolve_adapter(view), want=("wanda",)) as col:
        observe(layer, acts, j, before_batch=lambda b: col.set_mask(acts.masks[b]))
    norms = wanda_inputs_from_sums(col.result()[2].wanda_inputs)
    zeros = prune_maps_([m for m in sparsifiable_maps(view) if m.layer == j], norms, targets)
    advance_(layer, acts, j)
    return zeros


@torch.no_grad()
def sparsify_sequentially_(model: nn.Module, batches, targets: torch.Tensor, *,
                           reporter: Reporter | None = None) -> torch.Tensor:
    """Prune every decoder layer l of `model` (in memory) at `targets[l]`, each calibrated on `batches` (id tensors
    [B, S] or dicts with input_ids / attention_mask) with the layers below it already pruned. Returns zeros per
    layer [L]."""
    from compressor.importance.collect import collect_scores       # lazy: importance imports pandas

    zeros = torch.zeros(len(targets), dtype=torch.float64)
    adapter = resolve_adapter(model)
    for j, layer, feed, scope in walk_layers(model, batches):
        if reporter is not None:
            reporter.report("sparsify", step=j, total=len(targets), message=f"layer {j}: calibrate and prune")
        with collect_scores(scope, adapter, want=("wanda",)) as col:
            feed(col.set_mask)
        norms = wanda_inputs_from_sums(col.result()[2].wanda_inputs)
        zeros += prune_maps_([m for m in sparsifiable_maps(scope) if m.layer == j], norms, targets)
    return zeros


class _StopForward(Exception):
    """Raised by a forward hook once the layer being calibrated has run: the rest of the model is not needed."""


def walk_layers(model: nn.Module, batches):
    """Yield (j, layer j, feed, scope) for every decoder layer of `model` (in memory, eval mode meanwhile), in order.
    `feed(set_mask)` runs layer j on the calibration inputs it receives from the layers below *as they are now*
    (changed by the caller at earlier steps), calling set_mask(attention mask [B, S] or None) before each batch,
    for the caller's hooks; `scope` is the model-shaped module to register them on (keys are the model's own: a
    `LayerView` holding only layer j, or the model itself when the feed runs the whole model); the walk moves on
    when the caller asks for the next layer.

    Layers that run apart (the captured inputs pass through layer j, then advance: one layer's compute per layer)
    unless the family's layers pass state besides the hidden states (`catalog.STREAM_UNSUPPORTED`): then each feed
    is a whole-model forward that stops right after layer j."""
    from compressor.families.catalog import STREAM_UNSUPPORTED
    from compressor.importance.analyze import unpack_batch
    from compressor.stream.skeleton import LayerView
    from compressor.stream.sweep import advance_, capture_inputs, observe

    layers = resolve_adapter(model).decoder_layers(model)
    dev = model.get_input_embeddings().weight.device
    on_dev = [tuple(None if t is None else t.to(dev) for t in unpack_batch(b)) for b in batches]
    was_training = model.training
    model.eval()
    try:
        if getattr(model.config, "model_type", None) in STREAM_UNSUPPORTED:
            for j, layer in enumerate(layers):
                yield j, layer, lambda set_mask, _layer=layer: _forward_until(model, _layer, on_dev, set_mask), model
            return
        acts = capture_inputs(model, on_dev)
        for j, layer in enumerate(layers):
            view = LayerView(model.config, [nn.Module() for _ in range(j)] + [layer])
            yield j, layer, lambda set_mask, _j=j, _layer=layer: observe(
                _layer, acts, _j, before_batch=lambda b: set_mask(acts.masks[b])), view
            advance_(layer, acts, j)
    finally:
        model.train(was_training)


def _forward_until(model: nn.Module, layer: nn.Module, batches, set_mask) -> None:
    """Whole-model forwards over `batches` ((ids, mask) pairs) that stop once `layer` has run."""
    def stop(module, args, output):
        raise _StopForward

    handle = layer.register_forward_hook(stop)
    try:
        for ids, mask in batches:
            set_mask(mask)
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
