"""Weight quantization schemes: what grid a weight matrix W [R, C] (out, in) is rounded to. Torch-free.

    int, symmetric     q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1),        w_hat = s q,
                       s = max|w| / ((2^b - 1) / 2) over the group
    int, asymmetric    q = clamp(round(w / s + z), -2^(b-1), 2^(b-1) - 1),    w_hat = s (q - z),
                       s = (max(w, 0) - min(w, 0)) / (2^b - 1),  z = round(-2^(b-1) - min(w, 0) / s)
    float (fp8 e4m3)   w_hat = s fp8(clamp(w / s, -448, 448)),                 s = max|w| / 448

"The group" is one output row (per-channel), `group_size` consecutive input columns of one row (group), or a
`block` [rows, cols] tile (block FP8). These are the formulas of compressed-tensors' `calculate_qparams` and
`quantize` (compressed_tensors/quantization/utils/helpers.py, lifecycle/forward.py), so a weight quantized here is
stored by that library without changing a value. IST-DASLab/gptq `quant.py` uses the same grid shifted to
[0, 2^b - 1] (zero 2^(b-1) when symmetric).

    scheme = SCHEMES["W4A16"]                       # int4, symmetric, group 128
    scheme = WeightScheme(bits=8, group_size=None)  # int8 per channel
    WeightScheme.from_dict(scheme.to_dict()) == scheme
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

SCHEME_VERSION = 1
INT_BITS = (4, 8)


@dataclass(frozen=True)
class WeightScheme:
    """One weight grid (module docstring). `group_size` None = one scale per output row; `block` (float only) =
    one scale per [rows, cols] tile. Activations stay in the model's dtype (A16)."""

    type: str = "int"                       # "int" | "float"
    bits: int = 4
    symmetric: bool = True
    group_size: int | None = 128
    block: tuple[int, int] | None = None
    version: int = SCHEME_VERSION

    def __post_init__(self):
        if self.version != SCHEME_VERSION:
            raise ValueError(f"weight scheme version {self.version} is not supported (this studio reads "
                             f"{SCHEME_VERSION})")
        if self.type not in ("int", "float"):
            raise ValueError(f"scheme type {self.type!r}: use int or float")
        if self.type == "int" and self.bits not in INT_BITS:
            raise ValueError(f"int weights of {self.bits} bits: use 4 or 8")
        if self.type == "float":
            if self.bits != 8:
                raise ValueError(f"float weights of {self.bits} bits: only FP8 (e4m3, 8 bits) is supported")
            if not self.symmetric:
                raise ValueError("FP8 weights are symmetric (no zero point); set symmetric true")
            if self.group_size is not None:
                raise ValueError("FP8 weights take one scale per row or per block; set group_size null (and "
                                 "block [128, 128] for block FP8)")
        if self.group_size is not None and not (isinstance(self.group_size, int) and self.group_size > 0):
            raise ValueError(f"group_size {self.group_size!r} must be a positive integer or null (per channel)")
        if self.block is not None:
            if self.type != "float":
                raise ValueError("block scales are for FP8 weights; int weights use group_size")
            if len(self.block) != 2 or not all(isinstance(b, int) and b > 0 for b in self.block):
                raise ValueError(f"block {self.block!r} must be two positive integers [rows, cols]")
            object.__setattr__(self, "block", tuple(self.block))

    # -- the grid ------------------------------------------------------------------------------------------------
    @property
    def strategy(self) -> str:
        """compressed-tensors' name: "group", "channel" or "block"."""
        if self.block is not None:
            return "block"
        return "group" if self.group_size is not None else "channel"

    @property
    def qmin(self) -> float:
        return -448.0 if self.type == "float" else float(-(2 ** (self.bits - 1)))

    @property
    def qmax(self) -> float:
        return 448.0 if self.type == "float" else float(2 ** (self.bits - 1) - 1)

    def label(self) -> str:
        if self.type == "float":
            return "FP8 block " + "x".join(map(str, self.block)) if self.block else "FP8 per channel"
        grid = f"group {self.group_size}" if self.group_size else "per channel"
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} {grid}"

    def bits_per_weight(self, dtype_bytes: int = 2) -> float:
        """Stored bits per weight, scales and zero points included (a scale in the model dtype per group, a packed
        zero point of `bits` per group when asymmetric). Used by the size estimate."""
        per = {"group": self.group_size, "channel": None, "block": None}[self.strategy]
        extra = 0.0
        if per:
            extra = 8 * dtype_bytes / per + (0 if self.symmetric else self.bits / per)
        elif self.block:
            extra = 32 / (self.block[0] * self.block[1])       # float32 scale per tile
        return self.bits + extra

    def with_group_size(self, group_size: int | None) -> "WeightScheme":
        return replace(self, group_size=group_size)

    # -- (de)serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["block"] = list(self.block) if self.block else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WeightScheme":
        d = dict(d)
        if d.get("block") is not None:
            d["block"] = tuple(d["block"])
        return cls(**d)


SCHEMES: dict[str, WeightScheme] = {
    "W4A16": WeightScheme(bits=4, symmetric=True, group_size=128),
    "W8A16": WeightScheme(bits=8, symmetric=True, group_size=None),
    "FP8": WeightScheme(type="float", bits=8, group_size=None),
    "FP8_BLOCK": WeightScheme(type="float", bits=8, group_size=None, block=(128, 128)),
}
SCHEME_NAMES = tuple(SCHEMES)
# Asymmetric presets are left out: their compressed-tensors checkpoints do not reload in stock transformers 5.25
# (`compressor.quantization.export`); `WeightScheme(symmetric=False)` still rounds on the asymmetric grid.


def scheme_named(name: str, *, group_size: int | str | None = None) -> WeightScheme:
    """The preset `name`, with `group_size` overriding its grid (an int = groups of that many columns, "channel" =
    per channel, None = the preset's own)."""
    if name not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    s = SCHEMES[name]
    if group_size is None:
        return s
    if s.type == "float":
        raise ValueError(f"{name} takes no group_size (FP8 uses one scale per row or per block)")
    return s.with_group_size(None if group_size == "channel" else int(group_size))
