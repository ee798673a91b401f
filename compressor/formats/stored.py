"""One tensor as a safetensors header describes it: which shard file, its dtype and shape. The layer-by-layer reader
(`compressor.stream.shards`) and the quantized layouts (`compressor.formats.layout`) both speak it.

    TensorInfo("model-00001-of-00002.safetensors", torch.bfloat16, (768, 2048)).nbytes    # 3145728
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorInfo:
    file: str                  # shard file name inside the folder
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()
