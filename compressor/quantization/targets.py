"""What is quantized, by module class, and with which scheme (mixed precision).

Classes of the weights inside the decoder layers:

    experts         the routed experts: fused 3-D tensors (sliced per expert, `compressor.quantization.experts`) or
                    nn.Linear modules inside the experts module
    shared_experts  nn.Linear inside the block's shared expert (Qwen2-MoE, DeepSeek-V3, ...)
    attention       nn.Linear under the layer's attention module (a child whose name holds "attn" / "attention")
    dense_mlp       every other nn.Linear of a decoder layer (dense MLPs of dense layers, extra projections)

Always kept in the checkpoint's dtype: routers and shared-expert gates (one row per expert: rounding them flips
routing), norms, biases, embeddings and the LM head (outside the decoder layers).

    plan = QuantPlan.of({"experts": SCHEMES["W4A16"], "attention": SCHEMES["W8A16"]}, method="gptq")
    found = layer_targets(model, adapter, i)       # LayerTargets: linears by class, MoE blocks
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from compressor.quantization.scheme import WeightScheme

CLASSES = ("experts", "shared_experts", "attention", "dense_mlp")
ATTENTION_WORDS = ("attn", "attention")


@dataclass(frozen=True)
class GPTQSettings:
    """GPTQ's knobs: `block_size` columns per lazy update, dampening `percdamp` * mean(diag H), act order, and the
    routed-token count below which an expert is rounded to nearest instead (its Hessian would be mostly damping)."""

    block_size: int = 128
    percdamp: float = 0.01
    act_order: bool = False
    min_expert_tokens: int = 64

    def __post_init__(self):
        if self.block_size < 1 or not 0 < self.percdamp <= 1 or self.min_expert_tokens < 1:
            raise ValueError("gptq: block_size >= 1, 0 < percdamp <= 1 and min_expert_tokens >= 1")


@dataclass(frozen=True)
class QuantPlan:
    """The scheme of every class (None = kept) and the method ("rtn" | "gptq")."""

    schemes: dict = field(default_factory=dict)         # class -> WeightScheme | None
    method: str = "gptq"
    gptq: GPTQSettings = field(default_factory=GPTQSettings)

    def __post_init__(self):
        unknown = set(self.schemes) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown module classes {sorted(unknown)}; use {', '.join(CLASSES)}")
        if self.method not in ("rtn", "gptq"):
            raise ValueError(f"quantization method {self.method!r}: use rtn or gptq")
        if not any(self.schemes.values()):
            raise ValueError("the quantization plan keeps every class; give at least one class a scheme")

    @classmethod
    def of(cls, schemes: dict, *, method: str = "gptq", gptq: GPTQSettings | None = None) -> "QuantPlan":
        return cls({c: schemes.get(c) for c in CLASSES}, method, gptq or GPTQSettings())

    def scheme(self, klass: str) -> WeightScheme | None:
        return self.schemes.get(klass)


@dataclass
class LayerTargets:
    """One decoder layer's quantizable weights: {module name: (class, nn.Linear)} and its MoE blocks (fused
    experts)."""

    linears: dict = field(default_factory=dict)
    blocks: list = field(default_factory=list)
    kept: list = field(default_factory=list)             # names of routers / gates kept in the dtype


def layer_targets(model: nn.Module, adapter, i: int, *, blocks=None) -> LayerTargets:
    """The classes of decoder layer i's weights (module docstring). Names are the model's module paths."""
    names = {id(m): n for n, m in model.named_modules()}
    layer = adapter.decoder_layers(model)[i]
    layer_name = names[id(layer)]
    mine = [b for b in (blocks if blocks is not None else adapter.moe_blocks(model)) if b.layer == i]
    out = LayerTargets(blocks=[b for b in mine if not _expert_linears(b)])
    kept = {id(m) for b in mine for m in (b.router, b.shared_gate) if m is not None}
    shared = {id(m) for b in mine if b.shared is not None for m in b.shared.modules()}
    experts = {id(m) for b in mine for m in b.experts.modules()}
    for mod in layer.modules():
        if not isinstance(mod, nn.Linear):
            continue
        name = names[id(mod)]
        if id(mod) in kept:
            out.kept.append(name)
        elif id(mod) in experts:
            out.linears[name] = ("experts", mod)
        elif id(mod) in shared:
            out.linears[name] = ("shared_experts", mod)
        else:
            child = name[len(layer_name) + 1:].split(".")[0].lower()
            klass = "attention" if any(w in child for w in ATTENTION_WORDS) else "dense_mlp"
            out.linears[name] = (klass, mod)
    return out


def _expert_linears(blk) -> bool:
    """Experts kept as nn.Linear modules (a ModuleList of MLPs) rather than fused tensors."""
    return any(isinstance(m, nn.Linear) for m in blk.experts.modules())
