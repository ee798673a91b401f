"""Write a checkpoint one group of tensors at a time: one safetensors shard per decoder layer (plus one for the
embeddings / norm / head), then `model.safetensors.index.json`, as `save_pretrained` lays out a sharded model.

Tensors are written in the hub's original key layout (`save_original_format=True`, what `save_pretrained` writes):
transformers' own `revert_weight_conversion` is applied per shard, as transformers does for offloaded models.

    with ShardWriter(out_dir, model=skeleton.model) as w:
        w.write(embeddings_and_head)              # {name: tensor}
        for layer tensors: w.write(tensors)
    # out_dir/model-00001-of-00005.safetensors ... + model.safetensors.index.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from compressor.stream.shards import INDEX_FILE


class ShardWriter:
    def __init__(self, out_dir: Path | str, *, model=None, original_format: bool = True):
        self.out = Path(out_dir)
        self.model, self.original_format = model, original_format
        self.out.mkdir(parents=True, exist_ok=True)
        self._parts: list[tuple[Path, list[str]]] = []
        self.bytes = 0
        self.params = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        """One shard with `tensors` (contiguous CPU copies are made; shared storage is written once per name)."""
        if not tensors:
            return
        if self.original_format and self.model is not None:
            from transformers.core_model_loading import revert_weight_conversion
            tensors = revert_weight_conversion(self.model, dict(tensors))
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        path = self.out / f".part-{len(self._parts):05d}.safetensors"
        save_file(data, str(path), metadata={"format": "pt"})
        self._parts.append((path, sorted(data)))
        self.bytes += path.stat().st_size
        self.params += sum(t.numel() for t in data.values())

    def close(self) -> list[Path]:
        """Rename the parts to `model-0000i-of-0000N.safetensors` and write the index (one file: no index)."""
        n = len(self._parts)
        if n == 0:
            raise ValueError("no tensors were written")
        names, weight_map = [], {}
        for i, (part, keys) in enumerate(self._parts, 1):
            final = self.out / ("model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors")
            os.replace(part, final)
            names.append(final)
            weight_map.update({k: final.name for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.bytes, "total_parameters": self.params},
                     "weight_map": dict(sorted(weight_map.items()))}
            (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return names

    def abort(self) -> None:
        for part, _ in self._parts:
            part.unlink(missing_ok=True)
        self._parts.clear()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()
