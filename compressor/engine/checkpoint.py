"""A job's source checkpoint, opened once: the source resolved to a checked local folder, then, each read at most
once and only when asked, its config, its safetensors index, its identity and the dtype its export is written in.

    ckpt = Checkpoint.open("demo")                 # or a folder, an archive, a hub id (resolved once)
    ckpt.local_dir, ckpt.config["model_type"]
    ckpt.fingerprint        # weights_fingerprint(local_dir): the base model's identity, whichever driver runs
    ckpt.export_dtype       # config.json's dtype, else the most common float dtype stored (as from_pretrained's
                            # dtype="auto"); float32 for pickle weights or unreadable headers
    ckpt.plan(recipe)       # the ExecutionPlan: in memory or layer by layer (`compressor.engine.plan`)

Both drivers take this handle, so the same model gets the same fingerprint and the same exported dtype whichever
runs it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import torch

from compressor.engine.plan import ExecutionPlan, in_memory_plan, plan_execution
from compressor.engine.residency import in_memory_factor
from compressor.fingerprint import weights_fingerprint
from compressor.sources import LocalModel, resolve_local
from compressor.stream.shards import ShardError, ShardIndex


@dataclass
class Checkpoint:
    source: str                   # as the user gave it (the recipe's model)
    found: LocalModel = field(repr=False)

    @classmethod
    def open(cls, source: str, **safety) -> "Checkpoint":
        """Resolve `source` once (`sources.resolve_local`, with its safety rules: allow_pickle, trust_remote_code,
        revision); no weight is read."""
        return cls(source, resolve_local(source, **safety))

    @property
    def local_dir(self) -> Path:
        return self.found.local_dir

    @property
    def safetensors(self) -> bool:
        return self.found.weights == "safetensors"

    @cached_property
    def config(self) -> dict:
        return json.loads((self.local_dir / "config.json").read_text())

    @cached_property
    def index(self) -> ShardIndex | None:
        """The safetensors headers, or None for pickle weights."""
        return ShardIndex.open(self.local_dir) if self.safetensors else None

    @cached_property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.local_dir)

    @cached_property
    def export_dtype(self) -> torch.dtype:
        from compressor.stream.skeleton import checkpoint_dtype
        try:
            cfg, index = self.config, self.index
        except (OSError, ValueError, ShardError):
            return torch.float32
        if index is None:
            return torch.float32
        named = cfg.get("dtype") or cfg.get("torch_dtype")
        dtype = checkpoint_dtype(SimpleNamespace(dtype=named), index)
        return dtype if dtype.is_floating_point else torch.float32

    @cached_property
    def quantization(self):
        """config.json's quantization (`compressor.formats.QuantInfo`: FP8, MXFP4, compressed-tensors), None for
        plain weights. Both drivers read such a checkpoint dequantized and write the cut model unquantized."""
        from compressor.formats import QuantFormatError, quantization_of
        try:
            return quantization_of(self.config)
        except QuantFormatError as e:
            raise ValueError(f"{self.source}: {e}") from e

    def input_notes(self) -> list[str]:
        """What a user should know about the input: a quantized one is dequantized and written unquantized."""
        q = self.quantization
        if q is None:
            return []
        dtype = str(self.export_dtype).removeprefix("torch.")
        return [f"the input is quantized ({q.label}, {q.method}) and is read dequantized; the slimmed checkpoint is "
                f"written unquantized ({dtype}), so it can be larger on disk than the input. Quantize the run "
                "(quantize in the recipe, or `python -m compressor quantize CHECKPOINT`) to shrink it again."]

    def plan(self, recipe) -> ExecutionPlan:
        """The recipe's execution plan on this checkpoint, decided once (`compressor.engine.plan`). Pickle weights
        cannot be read layer by layer: they run in memory, and `streaming: on` on them is refused."""
        from compressor.slimming.apply import analysis_needs
        mode, blockwise = recipe.execution.streaming, bool(recipe.distill.blockwise_steps)
        if not self.safetensors:
            if mode == "on" or blockwise:
                raise ValueError(f"{self.source}: layer-by-layer work reads safetensors shards; this model has only "
                                 "pickle weights. Convert it to safetensors, or set execution.streaming: off (and "
                                 "distill.blockwise_steps: 0).")
            return in_memory_plan("pickle weights are read whole: in memory")
        return plan_execution(self.local_dir, mode, tokens=recipe.calibration.tokens, dtype=torch.float32,
                              taylor=analysis_needs(recipe.slimming)[1], index=self.index,
                              in_memory_factor=in_memory_factor(recipe), blockwise=blockwise,
                              spill_mb=recipe.execution.spill_mb)
