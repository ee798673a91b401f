"""How one experts module stores its E expert MLPs, found from parameter names and shapes (not from class names).

Three storage forms occur in transformers 5 (see `docs/moe-layouts.md` and each family's modeling file):

    fused      gate_up [E, 2I, H] (or transposed [E, H, 2I]), gate and up concatenated or interleaved on the 2I axis,
               down [E, H, I] (or [E, I, H]); optional biases gate_up_bias [E, 2I], down_bias [E, H]
               (almost every family; GPT-OSS transposed + interleaved + biases; Llama-4 transposed, undecorated)
    up-only    up [E, I, H], down [E, H, I]: h = act(x Wu^T), no gate (Nemotron-H)
    rows       gate, up, down each [E * I, H] (DBRX `experts.mlp.w1 / v1 / w2`; down_e = w2.view(E, I, H)[e]^T)

`ExpertsLayout` names the tensors and axes; `views` turns stored tensors (or their gradients) into the canonical
gate / up [E, I, H] and down [E, H, I] views; `neuron_slices` / `expert_slices` say how to cut them. This is written
here because no library slices fused 3-D expert tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ExpertsLayout:
    """Names (dotted, relative to the experts module) and orientation of one experts module's tensors."""

    form: str                       # "fused" | "up_only" | "rows"
    down: str
    gate_up: str | None = None      # fused
    gate: str | None = None         # rows
    up: str | None = None           # rows and up_only
    transposed: bool = False        # stored [E, in, out] instead of [E, out, in]
    interleaved: bool = False       # fused: gate = [..., 0::2], up = [..., 1::2] on the 2I axis
    gate_up_bias: str | None = None
    down_bias: str | None = None

    @property
    def has_gate(self) -> bool:
        return self.form != "up_only"

    @property
    def has_bias(self) -> bool:
        return self.gate_up_bias is not None or self.down_bias is not None

    def tensor_names(self) -> list[str]:
        return [n for n in (self.gate_up, self.gate, self.up, self.down, self.gate_up_bias, self.down_bias) if n]

    # -- sizes -------------------------------------------------------------------------------------------------
    def sizes(self, t: dict[str, torch.Tensor], num_experts: int | None = None) -> tuple[int, int, int]:
        """(E, I, H) from stored tensors `t` (name -> tensor). `rows` needs E (the router's row count)."""
        d = t[self.down]
        if self.form == "rows":
            if not num_experts:
                raise ValueError("rows-stored experts need the expert count to split [E*I, H]")
            return num_experts, d.shape[0] // num_experts, d.shape[1]
        E = d.shape[0]
        I, H = (d.shape[1], d.shape[2]) if self.transposed else (d.shape[2], d.shape[1])
        return E, I, H

    # -- canonical views -----------------------------------------------------------------------------------
    def views(self, t: dict[str, torch.Tensor], num_experts: int | None = None
              ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(gate [E, I, H] or None, up [E, I, H], down [E, H, I]): views into `t`'s tensors, no copies."""
        E, I, H = self.sizes(t, num_experts)
        if self.form == "rows":
            gate = t[self.gate].view(E, I, H)
            up = t[self.up].view(E, I, H)
            down = t[self.down].view(E, I, H).transpose(1, 2)
            return gate, up, down
        down = t[self.down].transpose(1, 2) if self.transposed else t[self.down]
        if self.form == "up_only":
            up = t[self.up].transpose(1, 2) if self.transposed else t[self.up]
            return None, up, down
        w = t[self.gate_up].transpose(1, 2) if self.transposed else t[self.gate_up]     # [E, 2I, H]
        if self.interleaved:
            return w[:, 0::2], w[:, 1::2], down
        return w[:, :I], w[:, I:], down

    def gate_up_positions(self, idx: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of neurons `idx` on a fused 2I axis of `width` I: (gate positions, up positions)."""
        if self.interleaved:
            return 2 * idx, 2 * idx + 1
        return idx, idx + width

    # -- cutting ----------------------------------------------------------------------------------------------
    def cut_neurons(self, t: dict[str, torch.Tensor], keep: torch.Tensor, num_experts: int | None = None
                    ) -> dict[str, torch.Tensor]:
        """New tensors (name -> contiguous tensor) keeping neurons `keep` [E, I'] (sorted ids per expert)."""
        E, I, H = self.sizes(t, num_experts)
        k = keep.shape[1]
        out: dict[str, torch.Tensor] = {}

        def along(x: torch.Tensor, axis: int, pos: torch.Tensor) -> torch.Tensor:   # x [E, ...], pos [E, n]
            return torch.stack([x[e].index_select(axis - 1, pos[e]) for e in range(E)]).contiguous()

        if self.form == "rows":
            for name in (self.gate, self.up, self.down):
                out[name] = along(t[name].view(E, I, H), 1, keep).view(E * k, H)
            return out
        if self.form == "up_only":
            out[self.up] = along(t[self.up], 2 if self.transposed else 1, keep)
        else:
            pos = []
            for e in range(E):
                g, u = self.gate_up_positions(keep[e], I)
                pos.append(torch.stack([g, u], 1).reshape(-1) if self.interleaved else torch.cat([g, u]))
            pos = torch.stack(pos)                                                    # [E, 2I']
            out[self.gate_up] = along(t[self.gate_up], 2 if self.transposed else 1, pos)
            if self.gate_up_bias:
                out[self.gate_up_bias] = along(t[self.gate_up_bias], 1, pos)
        out[self.down] = along(t[self.down], 1 if self.transposed else 2, keep)
        return out

    def cut_experts(self, t: dict[str, torch.Tensor], keep_ids: torch.Tensor, num_experts: int | None = None
                    ) -> dict[str, torch.Tensor]:
        """New tensors keeping experts `keep_ids` [E'] (every tensor of the layout, biases included)."""
        if self.form == "rows":
            E, I, H = self.sizes(t, num_experts)
            return {n: t[n].view(E, I, H)[keep_ids].reshape(-1, H).contiguous() for n in (self.gate, self.up, self.down)}
        return {n: t[n][keep_ids].contiguous() for n in self.tensor_names()}


def get_tensor(module: nn.Module, dotted: str) -> torch.Tensor:
    owner, _, leaf = dotted.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, leaf)


def set_tensor(module: nn.Module, dotted: str, value: torch.Tensor) -> None:
    """Replace a parameter (keeping requires_grad) or buffer at `dotted` under `module`."""
    owner_name, _, leaf = dotted.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    old = getattr(owner, leaf)
    if isinstance(old, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=old.requires_grad))
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        setattr(owner, leaf, value)


def find_layout(experts: nn.Module, hidden: int) -> ExpertsLayout | None:
    """The layout of `experts` from its own tensors (names and shapes) and hidden size H, or None if no form fits.

    Orientation: a fused down tensor [E, H, I] is untransposed, [E, I, H] transposed; when I == H the decorator's
    `is_transposed` flag decides, else the fused gate_up tensor ([E, H, 2I] transposed); the numerical probe at
    open checks the choice either way."""
    own = dict(experts.named_parameters()) | dict(experts.named_buffers())
    three = {n: p for n, p in own.items() if p.dim() == 3}
    flag_t = getattr(experts, "is_transposed", None)
    interleaved = not bool(getattr(experts, "is_concatenated", True))

    def oriented(down: torch.Tensor) -> bool | None:
        if flag_t is not None:
            return bool(flag_t)
        if down.shape[1] == hidden and down.shape[2] != hidden:
            return False
        if down.shape[2] == hidden and down.shape[1] != hidden:
            return True
        return None

    def bias(name: str) -> str | None:
        b = own.get(f"{name}_bias")
        return f"{name}_bias" if b is not None and b.dim() == 2 else None

    down = next((n for n in ("down_proj", "w2") if n in three), None)
    gate_up = next((n for n in ("gate_up_proj", "w13") if n in three), None)
    if down and gate_up:
        t = oriented(three[down])
        if t is None:                  # I == H: the fused gate_up [E, H, 2I] / [E, 2I, H] still shows it
            t = oriented(three[gate_up].transpose(1, 2))
        if t is None:
            return None
        return ExpertsLayout("fused", down=down, gate_up=gate_up, transposed=t, interleaved=interleaved,
                             gate_up_bias=bias(gate_up), down_bias=bias(down))
    if down and "up_proj" in three and "gate_proj" not in three:
        t = oriented(three[down])
        if t is None:
            return None
        return ExpertsLayout("up_only", down=down, up="up_proj", transposed=t)
    two = {n: p for n, p in own.items() if p.dim() == 2}
    for g, u, d in (("mlp.w1", "mlp.v1", "mlp.w2"), ("w1", "v1", "w2")):
        if all(n in two for n in (g, u, d)) and len({tuple(two[n].shape) for n in (g, u, d)}) == 1 \
                and two[d].shape[1] == hidden:
            return ExpertsLayout("rows", down=d, gate=g, up=u)
    return None
