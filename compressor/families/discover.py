"""Find the MoE structure of a causal LM from its module tree and parameter shapes, not from class names.

Rules (each one is what every transformers-5 MoE family that passes the conformance suite satisfies):
    decoder layers   the `nn.ModuleList` with `num_hidden_layers` entries (model.layers, transformer.blocks, ...)
    MoE block        in a layer, the module (at most two levels down) with a child named `experts` whose tensors
                     fit an `ExpertsLayout` (fused, up-only or rows)
    router           the 2-D tensor [R, H] of the block outside the experts and shared modules with R >= E (the
                     smallest such R); its top-level child of the block is the router module
    expert-indexed   every tensor of the block outside experts and shared modules with an axis of size E or R
                     (router weight and bias, score-correction bias, balancing bias); R - E trailing entries are
                     zero / null experts and are always kept
    shared experts   the block's other children with a >= 2-D tensor that has an axis of size H; a child
                     nn.Linear(H, 1) is the shared expert's gate
Layers without such a block are dense (first_k_dense_replace, mlp_only_layers, hybrid mamba / linear layers).

    found = discover_blocks(model.model.layers, hidden=64)        # {layer index: BlockParts}
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.families.block import ExpertIndexed
from compressor.families.layout import ExpertsLayout, find_layout

LAYER_LIST_PATHS = ("model.layers", "layers", "transformer.blocks", "transformer.h", "model.decoder.layers",
                    "model.language_model.layers", "language_model.model.layers")
ROUTER_NAMES = ("gate", "router")


@dataclass
class BlockParts:
    """What discovery found in one decoder layer."""

    path: str                        # block path relative to the layer, e.g. "mlp"
    block: nn.Module
    experts: nn.Module
    layout: ExpertsLayout
    router: nn.Module | None
    router_weight: str | None        # dotted name of the router's [R, H] tensor under `router`
    router_rows: int
    shared: nn.Module | None
    shared_gate: nn.Module | None
    indexed: list[ExpertIndexed] = field(default_factory=list)
    id_tensors: list[str] = field(default_factory=list)     # integer tensors of the router (expert-id tables)


def find_layer_list(model: nn.Module, num_layers: int | None) -> tuple[str, nn.ModuleList] | None:
    """(path, ModuleList) of the decoder layers: a known path first, else the ModuleList with `num_layers`
    entries closest to the root."""
    for path in LAYER_LIST_PATHS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and (num_layers is None or len(mod) == num_layers):
            return path, mod
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and num_layers and len(mod) == num_layers:
            if best is None or name.count(".") < best[0].count("."):
                best = (name, mod)
    return best


def _tensors(mod: nn.Module, skip: set[int]) -> list[tuple[nn.Module, str, torch.Tensor, str]]:
    """(owner, leaf name, tensor, dotted name relative to mod) of mod's params and buffers outside `skip` modules."""
    out = []
    for mname, sub in mod.named_modules():
        if any(id(s) in skip for s in _ancestors(mod, mname)):
            continue
        for leaf, t in list(sub._parameters.items()) + list(sub._buffers.items()):
            if t is not None:
                out.append((sub, leaf, t, f"{mname}.{leaf}" if mname else leaf))
    return out


def _ancestors(root: nn.Module, dotted: str) -> list[nn.Module]:
    mods, cur = [root], root
    for part in dotted.split(".") if dotted else []:
        cur = getattr(cur, part)
        mods.append(cur)
    return mods


def _num_experts(layout: ExpertsLayout, experts: nn.Module, hint: int | None) -> int | None:
    if layout.form != "rows":
        return dict(experts.named_parameters())[layout.down].shape[0]
    return hint


def _is_mlp(mod: nn.Module, hidden: int) -> bool:
    """A gated MLP H -> I -> H (a shared expert whatever its width, even when I happens to equal E)."""
    from compressor.families.shared_mlp import gated_parts
    try:
        gate, up, down = gated_parts(mod)
    except ValueError:
        return False
    return down.out_features == hidden and up.in_features == hidden


def discover_block(layer: nn.Module, *, hidden: int, experts_hint: int | None = None) -> BlockParts | None:
    """The MoE block of one decoder layer, or None when the layer is dense."""
    for path, mod in layer.named_modules():
        if path.count(".") > 1:
            continue
        experts = getattr(mod, "experts", None)
        if not isinstance(experts, nn.Module) or isinstance(experts, nn.ModuleList):
            continue
        layout = find_layout(experts, hidden)
        if layout is None:
            continue
        return _parts(path, mod, experts, layout, hidden, experts_hint)
    return None


def _parts(path, block, experts, layout, hidden, experts_hint) -> BlockParts:
    E = _num_experts(layout, experts, experts_hint)
    children = dict(block.named_children())
    if not path:                   # experts directly on the decoder layer (Gemma-4): only its router is the block's
        children = {n: c for n, c in children.items() if n in ROUTER_NAMES or c is experts}
    shared, shared_gate = None, None
    candidates = []
    for cname, child in children.items():
        if child is experts:
            continue
        tensors = [t for _, _, t, _ in _tensors(child, set())]
        if isinstance(child, nn.Linear) and child.out_features == 1 and child.in_features == hidden:
            shared_gate = child
        elif cname not in ROUTER_NAMES and (_is_mlp(child, hidden) or (
                any(t.dim() >= 2 and hidden in t.shape for t in tensors)
                and not any(t.dim() == 2 and t.shape[1] == hidden and E and t.shape[0] in (E,) for t in tensors))):
            candidates.append((cname, child))
    if candidates:
        shared = candidates[0][1]
    skip = {id(experts)} | ({id(shared)} if shared is not None else set()) | \
           ({id(shared_gate)} if shared_gate is not None else set())
    outside = _tensors(block, skip) if path else [
        (o, leaf, t, f"{n}.{name}") for n, c in children.items() if c is not experts
        for o, leaf, t, name in _tensors(c, set())]
    rows = [(t.shape[0], name) for _, _, t, name in outside
            if t.dim() == 2 and t.shape[1] == hidden and t.is_floating_point() and (E is None or t.shape[0] >= E)]
    router = router_weight = None
    R = E or 0
    if rows:
        exact = [r for r in rows if r[0] == E]
        R, wname = min(exact or rows, key=lambda r: (r[0], r[1].count("."), r[1]))
        top = wname.split(".")[0]
        router = children.get(top) if wname.count(".") else block
        router_weight = wname.split(".", 1)[1] if wname.count(".") else wname
        if E is None:
            E = R
    if router is None:
        router = next((children[n] for n in ROUTER_NAMES if n in children), None)
    indexed, id_tensors = [], []
    for owner, leaf, t, name in outside:
        if not t.is_floating_point():
            id_tensors.append(name)
            continue
        for axis, size in enumerate(t.shape):
            if E and size in (E, R) and size >= E:
                if t.dim() == 2 and t.shape[1] == hidden and axis == 1:
                    continue
                if t.dim() == 2 and axis == 0 and t.shape[1] != hidden and t.shape[0] != 1:
                    continue                       # a [E, x] hidden-layer weight of an MLP router is not indexed
                indexed.append(ExpertIndexed(owner=owner, name=leaf, axis=axis, extra=size - E))
                break
    return BlockParts(path=path, block=block, experts=experts, layout=layout, router=router,
                      router_weight=router_weight, router_rows=R, shared=shared, shared_gate=shared_gate,
                      indexed=indexed, id_tensors=id_tensors)
