"""Scales, zero points and rounding of one weight matrix W [R, C] on a `WeightScheme` grid; round to nearest.

Formulas in `compressor.quantization.scheme`. Shapes of the quantization parameters (compressed-tensors' layout):

    channel   scale, zero [R, 1]
    group     scale, zero [R, C / g]                (C must be a multiple of g)
    block     scale       [ceil(R / br), ceil(C / bc)], zero all 0

`column_params` gives the per-row scale and zero of one column, which GPTQ needs when it rounds a column at a time.

    scale, zero = qparams(w, SCHEMES["W4A16"])
    w_hat = fake_quantize(w, scale, zero, SCHEMES["W4A16"])   # same shape and dtype as w, values on the grid
    res = rtn(w, SCHEMES["W8A16"])                             # QuantizedWeight(weight, scale, zero)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.quantization.scheme import WeightScheme

FP8 = torch.float8_e4m3fn


@dataclass
class QuantizedWeight:
    """A weight's grid values in float (`weight`, dequantized, the matrix's dtype) and the parameters that store it."""

    weight: torch.Tensor          # [R, C] w_hat
    scale: torch.Tensor           # see the module docstring
    zero: torch.Tensor            # same shape as scale; int values (0 when symmetric / FP8)
    loss: float | None = None     # GPTQ: sum over rows of the reference's (w - q)^2 / d^2 / 2; RTN: None


def check_shape(w: torch.Tensor, scheme: WeightScheme, *, name: str = "weight") -> None:
    """Refuse a matrix whose columns the scheme's groups do not divide."""
    if w.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D weight [out, in], got shape {tuple(w.shape)}")
    if scheme.strategy == "group" and w.shape[1] % scheme.group_size:
        raise ValueError(f"{name}: {w.shape[1]} input columns are not a multiple of group_size "
                         f"{scheme.group_size}; set quantize.group_size to a divisor of {w.shape[1]} (e.g. 64 or "
                         "32) or `channel`")


def _minmax(w: torch.Tensor, scheme: WeightScheme) -> tuple[torch.Tensor, torch.Tensor]:
    R, C = w.shape
    if scheme.strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if scheme.strategy == "group":
        g = w.reshape(R, C // scheme.group_size, scheme.group_size)
        return g.amin(-1), g.amax(-1)
    br, bc = scheme.block
    pad = torch.nn.functional.pad(w, (0, -C % bc, 0, -R % br), value=0.0)
    tiles = pad.reshape(pad.shape[0] // br, br, pad.shape[1] // bc, bc)
    return tiles.amin((1, 3)), tiles.amax((1, 3))


@torch.no_grad()
def qparams(w: torch.Tensor, scheme: WeightScheme, *, scale_dtype: torch.dtype | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of `w` [R, C] by min / max over each group (module docstring). `scale_dtype` (the
    checkpoint's dtype) rounds the scale to what will be stored, so the grid used here is the grid reloaded."""
    check_shape(w, scheme)
    w = w.float()
    lo, hi = _minmax(w, scheme)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if scheme.symmetric:
        scale = torch.maximum(lo.abs(), hi) / ((scheme.qmax - scheme.qmin) / 2)      # FP8: max|w| / 448
    else:
        scale = (hi - lo) / (scheme.qmax - scheme.qmin)
    if scale_dtype is not None:
        scale = scale.to(scale_dtype).float()
    eps = torch.finfo(scale_dtype or torch.float32).eps
    scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
    if scheme.symmetric:
        zero = torch.zeros_like(scale)
    else:
        zero = torch.round(torch.clamp(scheme.qmin - lo / scale, scheme.qmin, scheme.qmax))
    return scale, zero


def round_to_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: WeightScheme) -> torch.Tensor:
    """w_hat of `x` given broadcastable per-element `scale` and `zero` (float32 in, float32 out)."""
    if scheme.type == "float":
        return torch.clamp(x / scale, scheme.qmin, scheme.qmax).to(FP8).float() * scale
    q = torch.clamp(torch.round(x / scale + zero), scheme.qmin, scheme.qmax)     # compressed-tensors order
    return (q - zero) * scale


def expand(p: torch.Tensor, shape: tuple[int, int], scheme: WeightScheme) -> torch.Tensor:
    """A per-group parameter (scale or zero) repeated to one value per weight, [R, C]."""
    R, C = shape
    if scheme.strategy == "channel":
        return p.expand(R, C)
    if scheme.strategy == "group":
        return p.repeat_interleave(scheme.group_size, dim=1)
    br, bc = scheme.block
    return p.repeat_interleave(br, dim=0)[:R].repeat_interleave(bc, dim=1)[:, :C]


def column_params(scale: torch.Tensor, zero: torch.Tensor, scheme: WeightScheme, col: int, rows: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale [R], zero [R]) of column `col`."""
    if scheme.strategy == "channel":
        return scale[:, 0], zero[:, 0]
    if scheme.strategy == "group":
        g = col // scheme.group_size
        return scale[:, g], zero[:, g]
    br, bc = scheme.block
    s = scale[:, col // bc].repeat_interleave(br)[:rows]
    return s, torch.zeros_like(s)


@torch.no_grad()
def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: WeightScheme) -> torch.Tensor:
    """w_hat = the grid value nearest to every weight (module docstring); same shape and dtype as `w`."""
    shape = tuple(w.shape)
    out = round_to_grid(w.float(), expand(scale, shape, scheme), expand(zero, shape, scheme), scheme)
    return out.to(w.dtype)


@torch.no_grad()
def rtn(w: torch.Tensor, scheme: WeightScheme, *, scale_dtype: torch.dtype | None = None) -> QuantizedWeight:
    """Round to nearest: w_hat = s * (clamp(round(w / s) + z) - z) with min / max scales per group."""
    scale, zero = qparams(w, scheme, scale_dtype=scale_dtype)
    return QuantizedWeight(fake_quantize(w, scale, zero, scheme), scale, zero)
