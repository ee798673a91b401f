"""Quantize options that give the input's format back (`python -m compressor quantize OUT --like-input SOURCE`):
a slimmed block-FP8 model is written as block FP8 again instead of bf16.

Rule, from the source's `compressor.formats.QuantInfo` (config.json's quantization_config):
    fp8 block [128, 128]          -> FP8_BLOCK (128 x 128 tiles), experts FP8 per channel (the compressed-tensors
                                     export writes 3-D expert tensors per channel only), round to nearest
    fp8 per tensor                -> FP8 (per channel: one scale per row, finer than the input's one per tensor), rtn
    compressed-tensors W4A16 / W8A16 (int, one scheme for every group) -> the same scheme and group size
    compressed-tensors FP8        -> FP8 (FP8_BLOCK where the input's strategy is block)
    anything else (MXFP4, another fp8 block size, several schemes, plain weights) -> ValueError naming the nearest
The output is compressed-tensors (what vLLM serves; stock transformers reloads it, dequantized on a CPU), not the
input's own `quant_method: fp8` layout.

    fields, notes = quantize_fields_like(QuantInfo("fp8", "fp8-block", 8, block=(128, 128)))
    fields == {"scheme": "FP8_BLOCK", "experts": "FP8", "method": "rtn"}
"""
from __future__ import annotations

import re

FP8_BLOCK = (128, 128)
_LINE = re.compile(r"^W(\d+)A\d+ (\w+) (\w+)(?: group=(\d+))?")


def quantize_fields_like(info) -> tuple[dict, list[str]]:
    """(QuantizeConfig fields, notes on what differs from the input) for a source stored as `info` (module rule)."""
    if info is None:
        raise ValueError("the source is not quantized (no quantization_config in its config.json); choose --scheme")
    if info.method == "fp8":
        return _fp8(info)
    if info.method == "compressed-tensors":
        return _compressed(info)
    raise ValueError(f"writing {info.label} is not supported; the nearest is --scheme W4A16 --group-size 32 "
                     "(int4, one scale per 32 weights, as MXFP4's blocks)")


def _fp8(info) -> tuple[dict, list[str]]:
    if info.block is None:
        return {"scheme": "FP8", "method": "rtn"}, [
            "the input has one FP8 scale per tensor; the output has one per row (FP8 per channel)"]
    if tuple(info.block) != FP8_BLOCK:
        raise ValueError(f"the input's FP8 tiles are {list(info.block)}; the export writes {list(FP8_BLOCK)} tiles "
                         "only: use --scheme FP8_BLOCK (128 x 128) or --scheme FP8 (per channel)")
    return {"scheme": "FP8_BLOCK", "experts": "FP8", "method": "rtn"}, [
        "routed experts are written FP8 per channel (the export does not tile 3-D expert tensors); every other "
        "quantized weight in 128 x 128 FP8 tiles, as the input"]


def _compressed(info) -> tuple[dict, list[str]]:
    found = set()
    for line in info.schemes:
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"cannot read the input's scheme {line!r}; choose --scheme")
        bits, kind, strategy, group = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if kind == "float" and bits == 8:
            found.add(("FP8_BLOCK" if strategy == "block" else "FP8", None))
        elif kind == "int" and bits in (4, 8):
            found.add((f"W{bits}A16", int(group) if group else "channel"))
        else:
            raise ValueError(f"the input's scheme {line!r} has no preset here; choose --scheme")
    if len(found) != 1:
        raise ValueError(f"the input mixes schemes ({'; '.join(info.schemes)}); choose --scheme and the per-class "
                         "options (--experts, --attention, ...)")
    scheme, group = found.pop()
    fields = {"scheme": scheme} | ({"group_size": group} if group is not None else {})
    return fields, []
