"""A job's execution plan from the safetensors headers, before any weight is read: the residency rule
(`compressor.engine.residency`) on the checkpoint's size, and, when it runs layer by layer, whether one decoder layer
fits at all.

    streamed need = `LAYER_FACTOR` x the largest decoder layer (the loaded layer, its cut copy, the copy written)
                    + the activations between layers (calibration tokens x hidden x 4 bytes, times the layers when
                    Taylor scores keep every layer's input for the backward sweep), at most the spill limit
                    (`compressor.stream.spill`: past it they live in memory-mapped files)
A layer-by-layer job whose need passes the machine's memory is refused with the figures (`LayerTooLargeError`).

    plan = plan_execution(Path("big"), "auto", tokens=32768, taylor=False)
    plan.streaming, plan.reason, plan.to_dict()        # what the run's metrics.json records under "execution"
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compressor.engine.residency import IN_MEMORY_FACTOR, LAYER_FACTOR, decide_residency, gb, machine_memory
from compressor.stream.shards import ShardIndex
from compressor.stream.spill import spill_limit_bytes


class LayerTooLargeError(ValueError):
    """Even one decoder layer does not fit in the memory the job may use; the message gives the figures."""


@dataclass(frozen=True)
class ExecutionPlan:
    streaming: bool           # layer by layer
    reason: str
    model_bytes: int          # parameters in the load dtype
    layer_bytes: int          # the largest decoder layer in the load dtype
    activation_bytes: int
    available: int            # the machine's memory the rule planned for (`residency.machine_memory`)

    def to_dict(self) -> dict:
        return {"residency": "layer by layer" if self.streaming else "in memory", **asdict(self)}


def in_memory_plan(reason: str) -> ExecutionPlan:
    """The plan of a model the headers cannot size (pickle weights): in memory, for `reason`."""
    return ExecutionPlan(False, reason, 0, 0, 0, machine_memory())


def plan_execution(folder: Path | str, mode: str, *, tokens: int, taylor: bool,
                   dtype: torch.dtype | None = None, index: ShardIndex | None = None,
                   in_memory_factor: float = IN_MEMORY_FACTOR, blockwise: bool = False,
                   spill_mb: int | None = None) -> ExecutionPlan:
    """Decide in memory vs layer by layer for `mode` (auto | on | off); raise LayerTooLargeError when layer by layer
    is chosen and one layer plus the activations do not fit."""
    index = index or ShardIndex.open(folder)
    scale = (lambda info: info.nbytes if dtype is None or not info.dtype.is_floating_point
             else info.nbytes // info.dtype.itemsize * dtype.itemsize)
    model_bytes = sum(scale(t) for t in index.tensors.values())
    layers = index.num_layers()
    layer_bytes = max((sum(scale(index.info(n)) for n in index.layer_names(i)) for i in range(layers)), default=0)
    embed = next((n for n in index.tensors if n.endswith("embed_tokens.weight")), None)
    hidden = index.shape(embed)[-1] if embed else 0
    activation = tokens * hidden * 4 * ((layers + 1) if taylor else 2)
    memory = machine_memory()
    streaming, reason = decide_residency(mode, model_bytes=model_bytes, factor=in_memory_factor, blockwise=blockwise,
                                         memory=memory)
    if streaming:
        held = min(activation, spill_limit_bytes(spill_mb))          # the rest is spilled to disk
        need = LAYER_FACTOR * layer_bytes + held
        if need > memory:
            spilled = "" if held == activation else f", the rest of {gb(activation)} on disk"
            raise LayerTooLargeError(
                f"one decoder layer is {gb(layer_bytes)}; working on it layer by layer needs about {gb(need)} "
                f"({LAYER_FACTOR:g} x the layer + {gb(held)} of activations in memory for {tokens} calibration "
                f"tokens{spilled}), but this machine has {gb(memory)}. Use fewer calibration tokens, a smaller "
                "spill limit (execution.spill_mb), or a larger machine (MOE_STUDIO_MEMORY sets the budget).")
    return ExecutionPlan(streaming, reason, model_bytes, layer_bytes, activation, memory)
