"""Whether a job runs in memory or layer by layer, and whether one decoder layer fits at all: decided from the
safetensors headers before any weight is read.

    in-memory need   = checkpoint parameters x bytes of the load dtype x `IN_MEMORY_FACTOR` (the cut copies and, for
                       Taylor scores, the expert gradients; a recipe with distillation passes `DISTILL_FACTOR`:
                       student, teacher, gradients and two AdamW moments)
    streamed need    = `LAYER_FACTOR` x the largest decoder layer (the loaded layer, its cut copy, the copy written)
                       + the activations between layers (calibration tokens x hidden x 4 bytes, times the layers when
                       Taylor scores keep every layer's input for the backward sweep), at most the spill limit
                       (`compressor.stream.spill`: past it they live in memory-mapped files)
    available        = `MOE_STUDIO_MEMORY` (e.g. "16gb") when set, else the machine's available memory (psutil)
`auto` streams when the in-memory need passes half of what is available. A streamed job whose need passes what is
available is refused with the figures.

    plan = plan_execution(Path("big"), "auto", tokens=32768, taylor=False)
    plan.streaming, plan.reason
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compressor.stream.rules import (DISTILL_FACTOR, IN_MEMORY_FACTOR, LAYER_FACTOR, MODES,  # noqa: F401
                                     gb as _gb, memory_available)
from compressor.stream.shards import ShardIndex


class LayerTooLargeError(ValueError):
    """Even one decoder layer does not fit in the memory the job may use; the message gives the figures."""


@dataclass(frozen=True)
class ExecutionPlan:
    streaming: bool
    reason: str
    model_bytes: int          # parameters in the load dtype
    layer_bytes: int          # the largest decoder layer in the load dtype
    activation_bytes: int
    available: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan_execution(folder: Path | str, mode: str, *, tokens: int, taylor: bool,
                   dtype: torch.dtype | None = None, index: ShardIndex | None = None,
                   in_memory_factor: float = IN_MEMORY_FACTOR, spill_mb: int | None = None) -> ExecutionPlan:
    """Decide in memory vs layer by layer for `mode` (auto | on | off); raise LayerTooLargeError when streaming
    is chosen and one layer plus the activations do not fit."""
    if mode not in MODES:
        raise ValueError(f"streaming must be one of {', '.join(MODES)}, got {mode!r}")
    index = index or ShardIndex.open(folder)
    scale = (lambda info: info.nbytes if dtype is None or not info.dtype.is_floating_point
             else info.nbytes // info.dtype.itemsize * dtype.itemsize)
    model_bytes = sum(scale(t) for t in index.tensors.values())
    layers = index.num_layers()
    layer_bytes = max((sum(scale(index.info(n)) for n in index.layer_names(i)) for i in range(layers)), default=0)
    embed = next((n for n in index.tensors if n.endswith("embed_tokens.weight")), None)
    hidden = index.shape(embed)[-1] if embed else 0
    activation = tokens * hidden * 4 * ((layers + 1) if taylor else 2)
    available = memory_available()
    need_memory = model_bytes * in_memory_factor
    if mode == "off":
        streaming, reason = False, "streaming off (asked)"
    elif mode == "on":
        streaming, reason = True, "streaming on (asked)"
    elif need_memory > available / 2:
        streaming, reason = True, (f"the model needs about {_gb(need_memory)} in memory, more than half of the "
                                   f"{_gb(available)} available: layer by layer")
    else:
        streaming, reason = False, f"the model fits comfortably ({_gb(need_memory)} of {_gb(available)} available)"
    if streaming:
        from compressor.stream.spill import spill_limit_bytes
        held = min(activation, spill_limit_bytes(spill_mb))          # the rest is spilled to disk
        need = LAYER_FACTOR * layer_bytes + held
        if need > available:
            spilled = "" if held == activation else f", the rest of {_gb(activation)} on disk"
            raise LayerTooLargeError(
                f"one decoder layer is {_gb(layer_bytes)}; working on it layer by layer needs about {_gb(need)} "
                f"({LAYER_FACTOR:g} x the layer + {_gb(held)} of activations in memory for {tokens} calibration "
                f"tokens{spilled}), "
                f"but only {_gb(available)} is available. Free memory, use fewer calibration tokens, or run on a "
                "larger machine (MOE_STUDIO_MEMORY sets the budget).")
    return ExecutionPlan(streaming, reason, model_bytes, layer_bytes, activation, available)
