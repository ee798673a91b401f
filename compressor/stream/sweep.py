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


POSITIONAL = "_positional"        # key of the positional arguments after hidden_states in a layer's stored kwargs
FINAL_NORMS = ("norm", "final_layernorm", "norm_f", "final_norm", "ln_f", "embedding_norm")


class _Recorder(nn.Module):
    """Stands in for decoder layer i: stores the arguments it is called with (positional ones after hidden_states
    under `POSITIONAL`), returns hidden_states. It carries the real layer's plain attributes (`attention_type`,
    `block_type`, ...), which some models read from their layers while building the per-layer arguments."""

    def __init__(self, store: dict, i: int, real: nn.Module | None = None):
        super().__init__()
        for k, v in (_plain_attributes(real) if real is not None else {}).items():
            setattr(self, k, v)
        self._store, self._i = store, i

    def forward(self, hidden_states, *args, **kwargs):
        self._store[self._i] = {**kwargs, POSITIONAL: args} if args else kwargs
        return hidden_states


def _plain_attributes(layer: nn.Module) -> dict:
    """The layer's plain (non-module, non-tensor) attributes and class-level properties, by name."""
    out = {k: v for k, v in vars(layer).items()
           if not k.startswith("_") and not isinstance(v, (nn.Module, torch.Tensor)) and k != "training"}
    for klass in type(layer).__mro__:
        if klass in (nn.Module, object):
            break
        for name, value in vars(klass).items():
            if name.startswith("_") or name in out:
                continue
            if isinstance(value, (str, int, float, bool, tuple)):
                out[name] = value
            elif isinstance(value, property):
                try:
                    out[name] = getattr(layer, name)
                except Exception:          # noqa: BLE001 - a property that needs real weights is not copied
                    pass
    return out


@dataclass
class Activations:
    """Per calibration batch: the current hidden states [B, S, H] (CPU), the batch's ids and mask, and the
    keyword arguments each decoder layer received in the model's own forward."""

    hidden: list[torch.Tensor]
    input_ids: list[torch.Tensor]
    masks: list[torch.Tensor | None]
    layer_kwargs: list[dict[int, dict]] = field(default_factory=list)
    spill: object = None            # a compressor.stream.spill.Spill: hidden states past its limit live on disk

    def keep(self, hidden: torch.Tensor) -> torch.Tensor:
        """What to store for a batch's hidden states: the tensor, or its memory-mapped copy past the spill limit."""
        return hidden if self.spill is None else self.spill.keep(hidden)

    def kwargs(self, layer: int, batch: int) -> dict:
        return self.layer_kwargs[batch][layer]

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hidden)


@torch.no_grad()
def capture_inputs(skeleton, batches, *, spill=None) -> Activations:
    """Embeddings and per-layer forward arguments of every batch: of a Skeleton (its globals must be loaded) or of
    a causal LM in memory (its `base_model`). With `spill` (`compressor.stream.spill.Spill`; default: the limit of
    `spill_limit_bytes()`, files in $TMPDIR) the hidden states past its limit are kept on disk, here and whenever
    `advance_` replaces them."""
    from compressor.stream.spill import Spill, spill_limit_bytes

    spill = spill if spill is not None else Spill(None, spill_limit_bytes())
    base = skeleton.base_model if isinstance(skeleton, nn.Module) else skeleton.base
    real = base.layers
    store: dict[int, dict] = {}
    acts = Activations(hidden=[], input_ids=[], masks=[], spill=spill)
    base.layers = nn.ModuleList([_Recorder(store, i, real[i]) for i in range(len(real))])
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
        acts.hidden.append(acts.keep(h.detach()))
    return hook


def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One decoder layer's output for `hidden` [B, S, H] with the arguments the model gave it. When the layer lives
    on another device than `hidden` (a GPU, `Skeleton.device`), its inputs are copied there and the output comes
    back to `hidden`'s device, so the activations between layers stay where they were (the CPU)."""
    home, dev = hidden.device, _device_of(layer)
    if dev is not None and dev != home:
        hidden, kwargs = hidden.to(dev), _moved(kwargs, dev)
    if POSITIONAL in kwargs:
        kwargs = dict(kwargs)
        out = layer(hidden, *kwargs.pop(POSITIONAL), **kwargs)
    else:
        out = layer(hidden, **kwargs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.to(home) if out.device != home else out


def _device_of(module: nn.Module) -> torch.device | None:
    """The device of the module's first real parameter (None for a module without one)."""
    return next((p.device for p in module.parameters() if p.device.type != "meta"), None)


def _moved(value, device: torch.device):
    """`value` with every tensor inside (dicts, tuples, lists) copied to `device`."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device) for v in value)
    return value


@torch.no_grad()
def advance_(layer: nn.Module, acts: Activations, i: int, *, before_batch=None) -> None:
    """Replace every batch's hidden states by layer i's output (`before_batch(b)` runs first, e.g. to set a mask)."""
    for b, h in enumerate(acts.hidden):
        if before_batch is not None:
            before_batch(b)
        acts.hidden[b] = acts.keep(run_layer(layer, h, acts.kwargs(i, b)))


@torch.no_grad()
def observe(layer: nn.Module, acts: Activations, i: int, *, before_batch=None) -> None:
    """Run layer i on every batch's hidden states for its hooks only; the activations stay as they are."""
    for b, h in enumerate(acts.hidden):
        if before_batch is not None:
            before_batch(b)
        run_layer(layer, h, acts.kwargs(i, b))


def final_logits(skeleton, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head(norm(h)) for the last layer's output [B, S, H] -> [B, S, V] (globals loaded)."""
    h = final_norm(skeleton.base)(hidden)
    return skeleton.model.lm_head(h)


def final_norm(base: nn.Module) -> nn.Module:
    """The base model's final norm (`norm`, `final_layernorm`, `norm_f`, ...)."""
    for name in FINAL_NORMS:
        mod = getattr(base, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise AttributeError(f"{type(base).__name__}: no final norm found (looked for {', '.join(FINAL_NORMS)})")
