"""Neurons of a gated MLP (a shared expert): data-free scores and the cut, for families whose expert-width field
also sizes the shared expert (Hunyuan's `shared_mlp`, DeepSeek-V4's `shared_experts`, Llama-4's `shared_expert`;
`FamilySpec.shared_width_coupled`). The routed experts and the shared expert then keep the same width.

Score (data-free, so both drivers pick the same neurons from the same weights, and a meta-device plan only needs
the shapes): for neuron j of h = act(x Wg^T) * (x Wu^T), y = h Wd^T,
    s_j = ||Wg[j]||_2 * ||Wu[j]||_2 * ||Wd[:, j]||_2
(for isotropic inputs E|h_j| grows with ||Wg[j]|| ||Wu[j]||, and ||Wd[:, j]|| is what neuron j writes back).
The kept ids are the `width` highest scores, ties to the lower id, sorted.

    keep = shared_keep(mlp, width=8)          # LongTensor [8]
    keep_mlp_neurons_(mlp, keep)              # gate_proj / up_proj rows and down_proj columns sliced in place
"""
from __future__ import annotations

import torch
from torch import nn

_GATE, _UP, _DOWN = ("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")


def _linear(mlp: nn.Module, names) -> nn.Linear | None:
    return next((m for n in names if isinstance(m := getattr(mlp, n, None), nn.Linear)), None)


def gated_parts(mlp: nn.Module) -> tuple[nn.Linear | None, nn.Linear, nn.Linear]:
    """(gate or None, up, down) Linear maps of an MLP; ValueError naming the module when it is not one."""
    gate, up, down = _linear(mlp, _GATE), _linear(mlp, _UP), _linear(mlp, _DOWN)
    if up is None and gate is not None:
        gate, up = None, gate                          # an MLP without a separate up projection
    if up is None or down is None or down.in_features != up.out_features:
        raise ValueError(f"{type(mlp).__name__}: not a gated MLP with gate_proj / up_proj / down_proj Linear maps")
    return gate, up, down


def mlp_neuron_scores(mlp: nn.Module) -> torch.Tensor:
    """s [I] float64 of the module docstring (all ones on the meta device: shapes only)."""
    gate, up, down = gated_parts(mlp)
    if down.weight.device.type == "meta":
        return torch.ones(down.in_features, dtype=torch.float64)
    s = up.weight.double().norm(dim=1) * down.weight.double().norm(dim=0)
    return s * gate.weight.double().norm(dim=1) if gate is not None else s


def shared_keep(mlp: nn.Module, *, width: int) -> torch.Tensor:
    """Ids [width] of the highest `mlp_neuron_scores` (ties: lower id), sorted ascending."""
    s = mlp_neuron_scores(mlp)
    if not 1 <= width <= s.numel():
        raise ValueError(f"shared-expert width must be in [1, {s.numel()}], got {width}")
    return torch.sort(s, descending=True, stable=True).indices[:width].sort().values


@torch.no_grad()
def keep_mlp_neurons_(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Keep neurons `keep` [I'] of a gated MLP in place: gate / up rows (and biases), down columns."""
    gate, up, down = gated_parts(mlp)
    for lin in (gate, up):
        if lin is None:
            continue
        _slice_(lin, "weight", keep, 0)
        if lin.bias is not None:
            _slice_(lin, "bias", keep, 0)
        lin.out_features = len(keep)
    _slice_(down, "weight", keep, 1)
    down.in_features = len(keep)
    for attr in ("intermediate_size", "ffn_hidden_size"):
        if isinstance(getattr(mlp, attr, None), int):
            setattr(mlp, attr, len(keep))


def _slice_(lin: nn.Linear, name: str, keep: torch.Tensor, axis: int) -> None:
    old = getattr(lin, name)
    new = old.index_select(axis, keep.to(old.device)).contiguous()
    setattr(lin, name, nn.Parameter(new, requires_grad=old.requires_grad))
