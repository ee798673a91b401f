"""The logical tensors of a quantized checkpoint: what `from_pretrained` would hold after dequantizing, derived from
the stored tensors' names, dtypes and shapes (headers only; compressed-tensors' int `weight_shape` vectors are read).

Stored -> logical, per format (`compressor.formats.detect` gives the format, `compressor.formats.dequant` the math):
  fp8:    `m.weight` float8 [N, K] + `m.weight_scale_inv` [ceil(N/bm), ceil(K/bn)]   -> `m.weight` [N, K]
          (`m.activation_scale` / `m.input_scale`, static activation scales, are dropped)
  mxfp4:  `m.p_blocks` uint8 [E, R, G, 16] + `m.p_scales` uint8 [E, R, G]             -> `m.p` [E, G*32, R]
  compressed-tensors: `m.weight_packed` int32 + `m.weight_scale` + `m.weight_shape` (+ `weight_zero_point`), or
          `m.weight` fp8/int8 + `m.weight_scale`                                     -> `m.weight` [weight_shape]
Every other tensor is its own logical tensor (embeddings, norms, routers, biases kept in bf16).

    layout = QuantLayout.build(info, stored, dtype=torch.bfloat16, read=index_read_raw)
    layout.logical["model.layers.0.mlp.experts.0.up_proj.weight"]     # TensorInfo(file, torch.bfloat16, (I, H))
    layout.dequantize(name, {src: tensor for src in layout.sources[name]})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from compressor.formats.dequant import CompressedDequantizer, fp8_dequantize, mxfp4_dequantize
from compressor.formats.detect import QuantInfo
from compressor.formats.stored import TensorInfo

_DROPPED = (".activation_scale", ".input_scale", ".k_scale", ".v_scale", ".input_global_scale")


@dataclass
class QuantLayout:
    info: QuantInfo
    dtype: torch.dtype                                   # the compute dtype logical float tensors take
    logical: dict = field(default_factory=dict)          # logical name -> TensorInfo (file of its first source)
    sources: dict = field(default_factory=dict)          # logical name -> stored names, first the quantized one
    kinds: dict = field(default_factory=dict)            # logical name -> "fp8" | "mxfp4" | ("ct", group) | None
    ct: CompressedDequantizer | None = None

    @classmethod
    def build(cls, info: QuantInfo, stored: dict, *, dtype: torch.dtype, read: Callable, quantization_config: dict
              ) -> "QuantLayout":
        """`stored`: name -> TensorInfo from the headers; `read(names)` gives stored tensors (for weight_shape)."""
        layout = cls(info, dtype)
        taken: set[str] = set()
        if info.method == "fp8":
            layout._fp8(stored, taken)
        elif info.method == "mxfp4":
            layout._mxfp4(stored, taken)
        else:
            layout.ct = CompressedDequantizer(quantization_config, dtype)
            layout._compressed(stored, taken, read)
        for name, t in stored.items():
            if name not in taken and not name.endswith(_DROPPED):
                layout._add(name, t.file, t.dtype, t.shape, (name,), None)
        return layout

    def _add(self, name, file, dtype, shape, sources, kind) -> None:
        self.logical[name] = TensorInfo(file, dtype, tuple(int(d) for d in shape))
        self.sources[name], self.kinds[name] = tuple(sources), kind

    def _fp8(self, stored: dict, taken: set) -> None:
        for name in stored:
            if not name.endswith(".weight_scale_inv"):
                continue
            root = name.removesuffix("_scale_inv")
            if root not in stored:
                continue
            w = stored[root]
            self._add(root, w.file, self.dtype, w.shape, (root, name), "fp8")
            taken.update((root, name))

    def _mxfp4(self, stored: dict, taken: set) -> None:
        for name, b in stored.items():
            if not name.endswith("_blocks"):
                continue
            base = name.removesuffix("_blocks")
            if base + "_scales" not in stored or len(b.shape) != 4:
                continue
            E, R, G, _ = b.shape
            self._add(base, b.file, self.dtype, (E, G * 32, R), (name, base + "_scales"), "mxfp4")
            taken.update((name, base + "_scales"))

    def _compressed(self, stored: dict, taken: set, read: Callable) -> None:
        modules = self.ct.modules(stored)
        shapes = read([f"{m}.weight_shape" for m, (_, ps) in modules.items() if "weight_shape" in ps])
        for module, (group, params) in modules.items():
            srcs = tuple(f"{module}.{p}" for p in params)
            first = stored[srcs[0]]
            shape = shapes.get(f"{module}.weight_shape")
            shape = tuple(int(d) for d in shape.tolist()) if shape is not None else first.shape
            self._add(f"{module}.weight", first.file, self.dtype, shape, srcs, ("ct", group))
            taken.update(srcs)

    # -- data ---------------------------------------------------------------------------------------------------
    def dequantize(self, name: str, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logical tensor `name` from its stored sources `raw` (keyed by stored name)."""
        kind, srcs = self.kinds[name], self.sources[name]
        if kind is None:
            return raw[srcs[0]]
        if kind == "fp8":
            return fp8_dequantize(raw[srcs[0]], raw[srcs[1]], block=self.info.block, dtype=self.dtype,
                                  ue8m0=self.info.scale_fmt == "ue8m0")
        if kind == "mxfp4":
            return mxfp4_dequantize(raw[srcs[0]], raw[srcs[1]], dtype=self.dtype)
        module = name.removesuffix(".weight")
        return self.ct.dequantize(kind[1], {s.removeprefix(module + "."): raw[s] for s in srcs})
