"""Wanda statistics of a model's linear maps: which maps a sparsity run prunes, their input norms, and the per-layer
statistics OWL and DLP allocate by. Scoring maths (the importance pass records them for Explore, the sparsity cut
allocates with the very same functions), so it lives below both.

Wanda (Sun et al. 2023):  A_ij = |W_ij| * ||X_j||_2,  X_j = input feature j over the calibration tokens.
    OWL (Yin et al. 2024):  D_l = share of A entries in layer l above M * mean(A_l)
    DLP (Chen et al. 2025): s_l = median(A_l) (or mean(A_l)), ironartisan/DLP `lib/prune.py`
Input norms come from sum_t x_tj^2 per input feature, recorded by the importance pass under the keys
    "<module name>"                  [in]    every nn.Linear of a decoder layer except routers / shared-expert gates
    "<moe block>.experts.gate_up"    [E, H]  input of expert e's gate and up (tokens routed to e only)
    "<moe block>.experts.down"       [E, I]  input of expert e's down (its intermediate activation h)

    maps = sparsifiable_maps(model)
    s, d, n = layer_statistics(maps, wanda_inputs_from_sums(report.layers.wanda_inputs), L, owl_m=None)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from compressor.families import resolve_adapter


def wanda_scores(*, weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """A = |W| * ||X||: weight [..., out, in], input_norms [..., in] -> [..., out, in] (float32)."""
    return weight.detach().abs().float().mul_(input_norms.float().unsqueeze(-2))     # abs() is a new tensor


def outlier_share(*, scores: torch.Tensor, threshold: float) -> tuple[int, int]:
    """(entries of `scores` above `threshold`, entries): the two counts that give OWL's D_l when summed over maps."""
    return int(torch.count_nonzero(scores > threshold).item()), scores.numel()


_HALF = 1 << 16


def lower_median(*, chunks: Callable[[], Iterable[torch.Tensor]]) -> float:
    """`torch.median(torch.cat([c.float().flatten() for c in chunks()]))`, exactly, with one chunk in memory at a time.

    For an even count this is the lower of the two middle values (k = (n - 1) // 2 in sorted order, 0-based), as
    `torch.median` returns it. Every value must be >= 0 (Wanda scores are). Radix select over the float32 bit
    patterns, which for x >= 0 order like the values: pass 1 counts the high 16 bits of every value in a 65536-bin
    histogram and finds the bin holding rank k; pass 2 counts the low 16 bits of the values in that bin. `chunks`
    is called once per pass and must give the same values each time. Returns NaN when there are no values.

        lower_median(chunks=lambda: [torch.tensor([3.0, 1.0]), torch.tensor([2.0, 5.0])])     # 2.0
    """
    hist, n = torch.zeros(_HALF, dtype=torch.int64), 0
    for c in chunks():
        bits = _float_bits(c)
        hist += torch.bincount(bits >> 16, minlength=_HALF).cpu()
        n += bits.numel()
    if n == 0:
        return float("nan")
    k = (n - 1) // 2
    high, k = _bin_of_rank(hist, k)
    hist.zero_()
    for c in chunks():
        bits = _float_bits(c)
        hist += torch.bincount(bits[(bits >> 16) == high] & (_HALF - 1), minlength=_HALF).cpu()
    low, _ = _bin_of_rank(hist, k)
    return torch.tensor([(high << 16) | low], dtype=torch.int32).view(torch.float32).item()


def _float_bits(c: torch.Tensor) -> torch.Tensor:
    """Non-negative values -> their float32 bit patterns as int64 [n] (-0.0 counted as +0.0)."""
    v = c.detach().reshape(-1).float() + 0.0            # IEEE: -0.0 + 0.0 = +0.0
    bits = v.view(torch.int32).long()
    if bool((bits < 0).any()) or bool(torch.isnan(v).any()):
        raise ValueError("lower_median needs values >= 0 and no NaN (Wanda scores are |W| * ||X||)")
    return bits


def _bin_of_rank(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """(bin holding the value of 0-based rank k, rank of that value within the bin)."""
    cum = hist.cumsum(0)
    b = int(torch.searchsorted(cum, torch.tensor(k), right=True))
    return b, k - (int(cum[b - 1]) if b > 0 else 0)


def wanda_inputs_from_sums(sq_sums: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sum_t x_tj^2 -> ||X_j||_2 = sqrt(max(sum, 0)), per key."""
    return {k: torch.as_tensor(v).double().clamp_min(0).sqrt().float() for k, v in sq_sums.items()}


@dataclass
class LinearMap:
    """One linear map (or a stack of E expert maps) of a decoder layer: weight view [..., out, in]."""

    layer: int
    key: str               # key of its input norms in `wanda_inputs`
    weight: torch.Tensor   # a view into the parameter: writing zeros into it edits the model


def sparsifiable_maps(model: nn.Module) -> list[LinearMap]:
    """Every map `sparsify_` may prune, in layer order (rule in the module docstring)."""
    adapter = resolve_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    blocks = {b.layer: b for b in adapter.moe_blocks(model, required=False)}
    maps = []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        blk = blocks.get(i)
        skip = {id(s) for m in ((blk.router, blk.shared_gate) if blk else ()) if m is not None for s in m.modules()}
        for mod in layer.modules():
            if isinstance(mod, nn.Linear) and id(mod) not in skip:
                maps.append(LinearMap(i, names[id(mod)], mod.weight))
        if blk is not None:
            ex = f"{blk.name}.experts"
            if blk.layout.has_gate:
                maps.append(LinearMap(i, f"{ex}.gate_up", blk.gate_weight()))     # [E, I, H]
            maps.append(LinearMap(i, f"{ex}.gate_up", blk.up_weight()))       # [E, I, H]
            maps.append(LinearMap(i, f"{ex}.down", blk.down_weight()))        # [E, H, I]
    return maps


def map_norms(wanda_inputs: Mapping[str, torch.Tensor], m: LinearMap) -> torch.Tensor:
    if m.key not in wanda_inputs:
        raise ValueError(f"no Wanda input norms for {m.key!r}; collect them on this model with "
                         "collect_wanda_inputs(model, batches) (after any structural slimming)")
    x = torch.as_tensor(wanda_inputs[m.key]).to(m.weight.device).float()
    want = (*m.weight.shape[:-2], m.weight.shape[-1])
    if tuple(x.shape) != want:
        raise ValueError(f"Wanda input norms for {m.key!r} have shape {tuple(x.shape)}, expected {list(want)}")
    return x


def ranking_norms(x: torch.Tensor) -> torch.Tensor:
    """Norms used to rank: rows of all zeros (an expert no token reached) become ones, i.e. magnitude pruning."""
    dead = (x == 0).all(dim=-1, keepdim=True)
    return torch.where(dead, torch.ones_like(x), x)


def layer_statistics(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor], layers: int, *,
                     owl_m: float | None, dlp_statistic: str | None = "median"
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per decoder layer l, over the float32 Wanda scores A_l of all its maps: (DLP score s_l, OWL outlier share D_l,
    weights |A_l|), one map's scores in memory at a time.

    s_l = median(A_l) for `dlp_statistic` "median" (DLP paper / repository default; `torch.median` of the
    concatenation, the lower middle value for an even count, found exactly by a two-pass radix select over the
    float32 bit patterns, `lower_median`, no concatenation held), mean(A_l) for "mean"
    (float32 row sums, float64 across rows), zeros for None. D_l = share of A_l above owl_m * mean(A_l), computed
    only when `owl_m` is given (zeros otherwise). Called with one layer's maps it gives that layer's row exactly as
    a call over all maps does (the layer-by-layer engine relies on it).

        s, d, n = layer_statistics(sparsifiable_maps(model), inputs, L, owl_m=None)          # medians
    """
    if dlp_statistic not in ("median", "mean", None):
        raise ValueError(f"dlp_statistic must be one of ('median', 'mean') or None, got {dlp_statistic!r}")
    count = torch.zeros(layers, dtype=torch.float64)
    for m in maps:
        count[m.layer] += m.weight.numel()
    need_mean = owl_m is not None or dlp_statistic == "mean"
    mean = _layer_means(maps, wanda_inputs, count) if need_mean else torch.zeros(layers, dtype=torch.float64)
    above = torch.zeros(layers, dtype=torch.float64)
    if owl_m is not None:
        for m in maps:
            a = wanda_scores(weight=m.weight, input_norms=map_norms(wanda_inputs, m))
            above[m.layer] += outlier_share(scores=a, threshold=owl_m * mean[m.layer].item())[0]
    if dlp_statistic == "median":
        score = torch.zeros(layers, dtype=torch.float64)
        for i in sorted({m.layer for m in maps}):
            mine = [m for m in maps if m.layer == i]
            score[i] = lower_median(chunks=lambda: _layer_scores(mine, wanda_inputs))
    else:
        score = mean if dlp_statistic == "mean" else torch.zeros(layers, dtype=torch.float64)
    return score, above / count.clamp(min=1), count


def _layer_means(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor], count: torch.Tensor
                 ) -> torch.Tensor:
    """mean(A_l) per layer: float32 row sums, float64 across rows."""
    total = torch.zeros_like(count)
    for m in maps:
        a = wanda_scores(weight=m.weight, input_norms=map_norms(wanda_inputs, m))
        total[m.layer] += a.sum(-1).double().sum().item()
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def _layer_scores(maps: list[LinearMap], wanda_inputs: Mapping[str, torch.Tensor]):
    """The float32 Wanda scores of `maps`, one 2-D slice (one expert of a stacked map) at a time."""
    for m in maps:
        x = map_norms(wanda_inputs, m)
        w = m.weight.reshape(-1, *m.weight.shape[-2:])
        for e in range(w.shape[0]):
            yield wanda_scores(weight=w[e], input_norms=x.reshape(-1, x.shape[-1])[e])
