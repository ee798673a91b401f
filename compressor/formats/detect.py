"""What a checkpoint's `config.json` says about how its weights are stored: a small, torch-free description.

Recognised `quantization_config` layouts (as they ship on the hub):
  - `quant_method: fp8` (transformers' `FineGrainedFP8Config`, DeepSeek-V3/R1, Kimi-K2, `*-FP8` Qwen3, GLM-4.x-FP8,
    MiniMax-M2): `weight` float8_e4m3fn plus `weight_scale_inv` float32 (or ue8m0 when `scale_fmt: ue8m0`), one
    scale per `weight_block_size` tile ([128, 128] on the hub); no `weight_block_size` means one scale per tensor.
  - `quant_method: mxfp4` (gpt-oss): routed experts as `*_blocks` uint8 [E, rows, cols/32, 16] (two E2M1 values
    per byte) and `*_scales` uint8 [E, rows, cols/32] (E8M0 exponents, bias 127): 4 bits, blocks of 32.
  - `quant_method: compressed-tensors` (llm-compressor / RedHat / nm-testing): per config group a weight scheme;
    `pack-quantized` int4/int8 (`weight_packed` int32, `weight_scale`, `weight_shape`), `float-quantized` FP8
    (`weight` float8 + `weight_scale`), `naive-quantized` / `int-quantized` (int8 `weight` + `weight_scale`).

    q = quantization_of(json.loads(Path("m/config.json").read_text()))
    q.to_dict()   # {"method": "fp8", "format": "fp8-block", "bits": 8, "block": [128, 128], ...}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

METHODS = ("fp8", "mxfp4", "compressed-tensors")
_CT_FORMATS = ("pack-quantized", "float-quantized", "naive-quantized", "int-quantized", "mixed-precision")


class QuantFormatError(ValueError):
    """A quantization_config the studio cannot read; the message names the field and what works."""


@dataclass(frozen=True)
class QuantInfo:
    """How the weights are stored. `bits` is the widest weight width of the config (4 for MXFP4, 8 for FP8)."""

    method: str                          # one of METHODS
    format: str                          # fp8-block | fp8-tensor | mxfp4 | a compressed-tensors format
    bits: int
    block: tuple[int, int] | None = None         # fp8-block tile (rows, cols); mxfp4 (1, 32)
    group_size: int | None = None                # compressed-tensors int schemes grouped along the input
    schemes: tuple[str, ...] = field(default=())  # compressed-tensors: one "W4A16 int group=128" line per group
    scale_fmt: str | None = None                 # fp8: "ue8m0" when scales are powers of two
    not_converted: tuple[str, ...] = field(default=())  # modules_to_not_convert / ignore, as written

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block"] = list(self.block) if self.block else None
        d["schemes"], d["not_converted"] = list(self.schemes), list(self.not_converted)
        return d

    @property
    def label(self) -> str:
        """One line for a table: 'fp8-block 8-bit [128, 128]', 'mxfp4 4-bit', 'pack-quantized 4-bit g128'."""
        extra = f" {list(self.block)}" if self.format == "fp8-block" else ""
        extra += f" g{self.group_size}" if self.group_size else ""
        return f"{self.format} {self.bits}-bit{extra}"


def quantization_of(config: dict) -> QuantInfo | None:
    """The description of `config["quantization_config"]` (a raw config.json dict), None for plain weights.
    Raises QuantFormatError for a method the studio does not read (bitsandbytes, gptq, awq, torchao, ...)."""
    q = config.get("quantization_config") if isinstance(config, dict) else None
    if q is None and isinstance(config, dict) and isinstance(config.get("text_config"), dict):
        q = config["text_config"].get("quantization_config")
    if not q:
        return None
    if not isinstance(q, dict):
        raise QuantFormatError("config.json: quantization_config must be a JSON object")
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8":
        return _fp8(q)
    if method == "mxfp4":
        return QuantInfo("mxfp4", "mxfp4", 4, block=(1, 32), not_converted=tuple(q.get("modules_to_not_convert") or ()))
    if method == "compressed-tensors":
        return _compressed(q)
    raise QuantFormatError(f"config.json: quantization_config.quant_method = {method or None!r} is not read by the "
                           f"studio (it reads {', '.join(METHODS)}); dequantize the checkpoint to bf16 first "
                           "(e.g. load it in transformers and save_pretrained), then open that folder.")


def _fp8(q: dict) -> QuantInfo:
    fmt = str(q.get("fmt", "e4m3")).lower()
    if fmt not in ("e4m3", "float8_e4m3fn"):
        raise QuantFormatError(f"config.json: quantization_config.fmt = {fmt!r}; the studio reads e4m3 FP8 only")
    block = q.get("weight_block_size")
    if block is not None:
        if not (isinstance(block, (list, tuple)) and len(block) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
            raise QuantFormatError(f"config.json: quantization_config.weight_block_size = {str(block)[:40]} is not "
                                   "two positive integers (rows, cols), e.g. [128, 128]")
        block = (int(block[0]), int(block[1]))
    return QuantInfo("fp8", "fp8-block" if block else "fp8-tensor", 8, block=block, scale_fmt=q.get("scale_fmt"),
                     not_converted=tuple(q.get("modules_to_not_convert") or ()))


def _compressed(q: dict) -> QuantInfo:
    groups = q.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise QuantFormatError("config.json: a compressed-tensors quantization_config without config_groups")
    fmt = str(q.get("format") or "")
    lines, bits, group_size = [], 0, None
    for name, g in sorted(groups.items()):
        w = (g or {}).get("weights") or {}
        b = int(w.get("num_bits") or 0)
        gs = w.get("group_size")
        bits, group_size = max(bits, b), group_size or (int(gs) if gs else None)
        act = (g or {}).get("input_activations")
        a = f"A{act.get('num_bits')}" if isinstance(act, dict) and act.get("num_bits") else "A16"
        lines.append(f"W{b}{a} {w.get('type', 'int')} {w.get('strategy', 'tensor')}"
                     + (f" group={gs}" if gs else "") + f" ({g.get('format') or fmt})")
    if fmt and fmt not in _CT_FORMATS:
        raise QuantFormatError(f"config.json: compressed-tensors format {fmt!r} is not read by the studio (it reads "
                               f"{', '.join(_CT_FORMATS)})")
    return QuantInfo("compressed-tensors", fmt or "pack-quantized", bits or 8, group_size=group_size,
                     schemes=tuple(lines), not_converted=tuple(q.get("ignore") or ()))
