"""Moving calibration activations through a skeleton one decoder layer at a time.

`capture_inputs` runs the base model's own forward with every decoder layer swapped for a recorder that returns
its input unchanged, so the model itself builds what each layer receives: the embeddings (first layer), the
attention mask of that layer's type (full / sliding), position ids and rotary embeddings. Nothing family-specific
is re-implemented. `run_layer` then feeds stored hidden states through one real layer with those arguments.

    acts = capture_inputs(skeleton, batches)          # Activations: hidden [B, S, H] per batch + per-layer kwargs
    for i in range(len(skeleton.layers)):
        layer = skeleton.load_layer_(i)
        acts.hidden = [run_layer(layer, h, acts.kwargs(i, b)) for b, h in enumerate(acts.hidden)]
        skeleton.release_layer_(i)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.importance.analyze import unpack_batch


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for decoder layer i: stores the keyword arguments it is called with, returns hidden_states."""

    def __init__(self, store: dict, i: int):
        super().__init__()
        self.store, self.i = store, i

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise RuntimeError("decoder layers are expected to take everything but hidden_states by keyword")
        self.store[self.i] = kwargs
        return hidden_states


@dataclass
class Activations:
    """Per calibration batch: the current hidden states [B, S, H] (CPU), the batch's ids and mask, and the
    keyword arguments each decoder layer received in the model's own forward."""

    hidden: list[torch.Tensor]
    input_ids: list[torch.Tensor]
    masks: list[torch.Tensor | None]
    layer_kwargs: list[dict[int, dict]] = field(default_factory=list)

    def kwargs(self, layer: int, batch: int) -> dict:
        return self.layer_kwargs[batch][layer]

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hidden)


@torch.no_grad()
def capture_inputs(skeleton, batches) -> Activations:
    """Embeddings and per-layer forward arguments of every batch: of a Skeleton (its globals must be loaded) or of
    a causal LM in memory (its `base_model`)."""
    base = skeleton.base_model if isinstance(skeleton, nn.Module) else skeleton.base
    real = base.layers
    store: dict[int, dict] = {}
    acts = Activations(hidden=[], input_ids=[], masks=[])
    base.layers = nn.ModuleList([_Recorder(store, i) for i in range(len(real))])
    hook = base.layers[0].register_forward_pre_hook(_keep_first_hidden(acts), with_kwargs=True)
    try:
        for batch in batches:
            ids, mask = unpack_batch(batch)
            store.clear()
            base(input_ids=ids, attention_mask=mask, use_cache=False)
            if len(store) != len(real):
                raise RuntimeError(f"the model's forward called {len(store)} of its {len(real)} decoder layers")
            acts.layer_kwargs.append(dict(store))
            acts.input_ids.append(ids)
            acts.masks.append(mask)
    finally:
        hook.remove()
        base.layers = real
    return acts


def _keep_first_hidden(acts: Activations):
    def hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        acts.hidden.append(h.detach())
    return hook


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One decoder layer's output for `hidden` [B, S, H] with the arguments the model gave it."""
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def advance_(layer: nn.Module, acts: Activations, i: int, *, before_batch=None) -> None:
    """Replace every batch's hidden states by layer i's output (`before_batch(b)` runs first, e.g. to set a mask)."""
    for b, h in enumerate(acts.hidden):
        if before_batch is not None:
            before_batch(b)
        acts.hidden[b] = run_layer(layer, h, acts.kwargs(i, b))


@torch.no_grad()
def observe(layer: nn.Module, acts: Activations, i: int, *, before_batch=None) -> None:
    """Run layer i on every batch's hidden states for its hooks only; the activations stay as they are."""
    for b, h in enumerate(acts.hidden):
        if before_batch is not None:
            before_batch(b)
        run_layer(layer, h, acts.kwargs(i, b))


def final_logits(skeleton, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head(norm(h)) for the last layer's output [B, S, H] -> [B, S, V] (globals loaded)."""
    h = skeleton.base.norm(hidden)
    return skeleton.model.lm_head(h)
