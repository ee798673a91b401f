"""One MoE layer as algorithms see it: canonical expert weights, one expert at a time, and the two cuts.

Algorithms read gate / up [E, I, H] and down [E, H, I] (`gate_weight`, `up_weight`, `down_weight`), run expert e
with `expert_hidden` / `expert_output`, and cut with `keep_neurons_` / `keep_experts_`; the storage form is the
block's `ExpertsLayout`. They never branch on class names.

    blk = adapter.moe_blocks(model)[0]
    h = blk.expert_hidden(x, e=3)          # [n, I]  act(x Wg^T) * (x Wu^T) with the family's own activation
    y = blk.expert_output(h, e=3)          # [n, H]  h Wd^T (+ bias), before the router weight

Some experts modules transform each expert's output with weights of its own before the router weight (Ergo's
`post_expert_norm`: y = RMSNorm(h Wd^T) * w_e, w [E, H]). Such a child is found by shape and call (a child of the
experts module holding an [E, H] tensor and called as child(hidden, expert_ids)); `expert_output` applies it and
`keep_experts_` slices its tensor, so every score and cut sees the expert as the model computes it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.families.layout import ExpertsLayout, get_tensor, set_tensor


@dataclass(frozen=True)
class ExpertIndexed:
    """A tensor outside the experts module with one entry per expert on `axis` (router rows, router bias,
    score-correction bias, per-expert balancing bias). `extra` trailing entries belong to zero / null experts that
    have no weights; they are always kept."""

    owner: nn.Module
    name: str
    axis: int
    extra: int = 0


@dataclass
class MoEBlock:
    """One MoE layer: the block, its experts, its router and optional shared expert."""

    layer: int                # index of the decoder layer
    name: str                 # module path, e.g. "model.layers.3.mlp"
    block: nn.Module
    experts: nn.Module
    router: nn.Module | None
    layout: ExpertsLayout                 # storage form: blk.layout.transposed / interleaved / has_bias / has_gate
    shared: nn.Module | None = None
    shared_gate: nn.Module | None = None
    indexed: list[ExpertIndexed] = field(default_factory=list)
    n_experts: int | None = None          # E, for layouts whose tensors do not show it (rows)
    extra: dict = field(default_factory=dict)

    @property
    def routed_call(self) -> bool:
        """True when the experts module is called as experts(hidden [T, H], top_k_index [T, k], top_k_weights
        [T, k]) (the `@use_experts_implementation` signature the scoring hooks read)."""
        try:
            params = inspect.signature(type(self.experts).forward).parameters
        except (TypeError, ValueError):
            return False
        return len([p for p in params if p != "self"]) >= 3

    # -- tensors and sizes ------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: get_tensor(self.experts, n) for n in self.layout.tensor_names()}

    @property
    def device(self) -> torch.device:
        return get_tensor(self.experts, self.layout.down).device

    @property
    def num_experts(self) -> int:
        return self.layout.sizes(self.tensors(), self.n_experts)[0]

    @property
    def intermediate_size(self) -> int:
        return self.layout.sizes(self.tensors(), self.n_experts)[1]

    @property
    def hidden_size(self) -> int:
        return self.layout.sizes(self.tensors(), self.n_experts)[2]

    def expert_param_count(self) -> int:
        """Parameters of all routed experts of this block (weights and biases)."""
        return sum(p.numel() for p in self.experts.parameters())

    def expert_parameters(self) -> dict[str, torch.Tensor]:
        """The layout's tensors that are parameters (what a Taylor pass needs gradients for), by dotted name."""
        return {n: t for n, t in self.tensors().items() if isinstance(t, nn.Parameter)}

    # -- canonical weights ------------------------------------------------------------------------------------
    def gate_up_positions(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of neurons `idx` on the stored 2I axis: (gate positions, up positions)."""
        return self.layout.gate_up_positions(idx, self.intermediate_size)

    def canonical(self, tensors: dict[str, torch.Tensor] | None = None):
        """(gate [E, I, H] or None, up [E, I, H], down [E, H, I]) of the block's tensors, or of `tensors` (e.g.
        their gradients under the same names): views, no copies."""
        return self.layout.views(tensors if tensors is not None else self.tensors(), self.n_experts)

    def gate_weight(self) -> torch.Tensor | None:
        """Gate projections, canonical [E, I, H] (a view); None for experts without a gate (up-only)."""
        return self.canonical()[0]

    def up_weight(self) -> torch.Tensor:
        """Up projections, canonical [E, I, H] (a view)."""
        return self.canonical()[1]

    def down_weight(self) -> torch.Tensor:
        """Down projections, canonical [E, H, I] (a view)."""
        return self.canonical()[2]

    def _act(self):
        ex = self.experts
        for holder in (ex, getattr(ex, "mlp", None)):
            for attr in ("act_fn", "activation_fn", "act"):
                f = getattr(holder, attr, None) if holder is not None else None
                if callable(f):
                    return f
        raise AttributeError(f"{type(ex).__name__}: no activation function (act_fn) found on the experts module")

    # -- running one expert -----------------------------------------------------------------------------------
    def expert_hidden(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Intermediate activation h = act(x Wg^T) * (x Wu^T) of expert e (h = act(x Wu^T) without a gate), with
        the family's own gate function when the module has one (`_apply_gate`). x [n, H] -> [n, I]."""
        lay, ex = self.layout, self.experts
        if lay.form == "fused":
            w = get_tensor(ex, lay.gate_up)[e]
            gate_up = x @ w if lay.transposed else nn.functional.linear(x, w)
            if lay.gate_up_bias:
                gate_up = gate_up + get_tensor(ex, lay.gate_up_bias)[e]
            if hasattr(ex, "_apply_gate"):
                return ex._apply_gate(gate_up)
            if lay.interleaved:
                return self._act()(gate_up[..., 0::2]) * gate_up[..., 1::2]
            g, u = gate_up.chunk(2, dim=-1)
            return self._act()(g) * u
        gate, up, _ = self.canonical()
        if lay.form == "up_only":
            return self._act()(nn.functional.linear(x, up[e]))
        return self._act()(nn.functional.linear(x, gate[e])) * nn.functional.linear(x, up[e])

    def expert_output(self, h: torch.Tensor, e: int) -> torch.Tensor:
        """f_e(x) = h Wd^T (+ bias) of expert e, then its per-expert output transform if the module has one
        (`post_expert`), before the router weight. h [n, I] -> [n, H]."""
        out = nn.functional.linear(h, self.down_weight()[e])
        if self.layout.down_bias:
            out = out + get_tensor(self.experts, self.layout.down_bias)[e]
        post = self.post_expert
        if post is not None:
            out = post(out, torch.full((out.shape[0],), e, dtype=torch.long, device=out.device))
        return out

    @property
    def post_expert(self) -> nn.Module | None:
        """The child of the experts module that transforms expert e's output with weights of its own ([E, H]
        tensors, called as child(hidden [n, H], expert_ids [n])), or None (almost every family)."""
        if "post_expert" in self.extra:
            return self.extra["post_expert"]
        self.extra["post_expert"] = self._find_post_expert()
        return self.extra["post_expert"]

    def _find_post_expert(self) -> nn.Module | None:
        E, H = self.num_experts, self.hidden_size
        for child in self.experts.children():
            tensors = list(child.parameters(recurse=False)) + list(child.buffers(recurse=False))
            if not tensors or not all(t.dim() == 2 and tuple(t.shape) == (E, H) for t in tensors):
                continue
            try:
                params = [p for p in inspect.signature(type(child).forward).parameters if p != "self"]
            except (TypeError, ValueError):
                continue
            if len(params) == 2:
                return child
        return None

    # -- surgery ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def keep_neurons_(self, keep: torch.Tensor, *, shared_keep: torch.Tensor | None = None) -> None:
        """Keep neurons `keep` [E, I'] (sorted ids per expert) in every expert: slices gate, up, down and biases.
        A width-coupled shared expert (`extra["shared_coupled"]`, `FamilySpec.shared_width_coupled`) keeps I'
        neurons too: `shared_keep` [I'], or its highest data-free scores (`families.shared_mlp`)."""
        from compressor.families.shared_mlp import keep_mlp_neurons_, shared_keep as top_shared
        if self.extra.get("shared_coupled") and self.shared is not None:
            ids = shared_keep if shared_keep is not None else top_shared(self.shared, width=keep.shape[1])
            keep_mlp_neurons_(self.shared, ids)
        keep = keep if self.device.type == "meta" else keep.to(self.device)   # index_select: the weights' device
        for name, t in self.layout.cut_neurons(self.tensors(), keep, self.n_experts).items():
            set_tensor(self.experts, name, t)
        k = keep.shape[1]
        for mod in (self.experts, getattr(self.experts, "mlp", None)):
            for attr in ("intermediate_dim", "intermediate_size", "expert_dim", "ffn_hidden_size"):
                if mod is not None and isinstance(getattr(mod, attr, None), int):
                    setattr(mod, attr, k)

    @torch.no_grad()
    def keep_experts_(self, keep_ids: torch.Tensor) -> None:
        """Keep experts `keep_ids` [E'] (sorted): slices every expert tensor and every expert-indexed tensor of the
        block (router rows, router / correction / balancing biases; zero-expert entries kept), and updates every
        cached expert count so all kernels (grouped_mm too) agree."""
        E = self.num_experts
        keep_ids = keep_ids if self.device.type == "meta" else keep_ids.to(self.device)     # a meta plan keeps CPU ids
        post = self.post_expert
        for name, t in self.layout.cut_experts(self.tensors(), keep_ids, self.n_experts).items():
            set_tensor(self.experts, name, t)
        if post is not None:
            for leaf, t in list(post.named_parameters(recurse=False)) + list(post.named_buffers(recurse=False)):
                set_tensor(post, leaf, t.index_select(0, keep_ids.to(t.device)).contiguous())
        for ix in self.indexed:
            t = getattr(ix.owner, ix.name)
            ids = keep_ids.to(t.device)
            if ix.extra:
                ids = torch.cat([ids, torch.arange(E, E + ix.extra, device=t.device)])
            set_tensor(ix.owner, ix.name, t.index_select(ix.axis, ids).contiguous())
        n = len(keep_ids)
        if self.n_experts is not None:
            self.n_experts = n
        mods = [m for m in self.block.modules() if self.shared is None or m not in set(self.shared.modules())]
        for mod in mods:
            for attr, value in list(vars(mod).items()):
                if attr.startswith("_") or not isinstance(value, int) or isinstance(value, bool):
                    continue
                if attr in ("num_experts", "out_features") and value in (E, E + max((i.extra for i in self.indexed),
                                                                                   default=0)):
                    setattr(mod, attr, value - E + n)
                elif "expert" in attr and value == E and not any(s in attr for s in ("per_tok", "top", "shared")):
                    setattr(mod, attr, n)
