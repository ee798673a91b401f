"""MoE family adapters: where each transformers-5 family keeps its router, experts and config fields.

Every supported family stores experts as one fused module (`@use_experts_implementation`):
`gate_up_proj` [E, 2I, H] (gate rows then up rows) and `down_proj` [E, H, I], except GPT-OSS, which is transposed
and interleaved: `gate_up_proj` [E, H, 2I] (gate = `[..., ::2]`, up = `[..., 1::2]`) + biases, `down_proj` [E, I, H].
`MoEBlock` hides that: algorithms read canonical weights `gate`/`up` [E, I, H] and `down` [E, H, I], run one expert
with `expert_hidden` / `expert_output`, and cut with `keep_neurons_` / `keep_experts_`. They never branch on class names.

    adapter = resolve_adapter(model)             # raises UnsupportedModelError for dense / unknown models
    for blk in adapter.moe_blocks(model):        # one per MoE layer, dense layers skipped
        print(blk.layer, blk.num_experts, blk.intermediate_size)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.widths import WIDTH_ALIGN


class UnsupportedModelError(ValueError):
    """The model is not a mixture-of-experts causal LM of a supported family."""


@dataclass(frozen=True)
class FamilySpec:
    """Static facts about one family (names of modules and config fields)."""

    name: str
    model_types: tuple[str, ...]
    block_attr: str                          # decoder-layer attribute holding the MoE block
    router_attr: str                         # block attribute holding the router
    expert_count_fields: tuple[str, ...]     # config fields holding E (every alias is written on export)
    width_field: str                         # config field holding the expert width I
    top_k_field: str = "num_experts_per_tok"
    shared_attr: str | None = None           # block attribute holding the shared expert MLP
    shared_gate_attr: str | None = None      # block attribute holding the shared expert's sigmoid gate
    shared_multiplier_field: str | None = None  # shared width = width_field * this field (DeepSeek)
    shared_width_field: str | None = None    # independent shared width field (Qwen2-MoE)
    group_field: str | None = None           # DeepSeek-style group routing: E % n_group == 0
    topk_group_field: str | None = None
    renormalises_topk: str | bool = True     # True, False, or the config field that decides
    router_applies_softmax_over_topk: bool = False  # GPT-OSS / Granite: softmax over the top-k logits
    notes: str = ""


FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    for mt in spec.model_types:
        FAMILIES[mt] = spec
    return spec


register_family(FamilySpec("mixtral", ("mixtral", "minimax"), "mlp", "gate",
                           ("num_local_experts",), "intermediate_size"))
register_family(FamilySpec("qwen2_moe", ("qwen2_moe",), "mlp", "gate", ("num_experts",), "moe_intermediate_size",
                           shared_attr="shared_expert", shared_gate_attr="shared_expert_gate",
                           shared_width_field="shared_expert_intermediate_size", renormalises_topk="norm_topk_prob"))
register_family(FamilySpec("qwen3_moe", ("qwen3_moe",), "mlp", "gate", ("num_experts", "num_local_experts"),
                           "moe_intermediate_size", renormalises_topk="norm_topk_prob"))
register_family(FamilySpec("olmoe", ("olmoe",), "mlp", "gate", ("num_experts",), "intermediate_size",
                           renormalises_topk="norm_topk_prob"))
register_family(FamilySpec("deepseek_v3", ("deepseek_v3", "glm4_moe"), "mlp", "gate",
                           ("n_routed_experts",), "moe_intermediate_size", shared_attr="shared_experts",
                           shared_multiplier_field="n_shared_experts", group_field="n_group",
                           topk_group_field="topk_group", renormalises_topk="norm_topk_prob",
                           notes="sigmoid routing with e_score_correction_bias and expert groups"))
register_family(FamilySpec("phimoe", ("phimoe",), "mlp", "router", ("num_local_experts",), "intermediate_size",
                           renormalises_topk=False, notes="sparsemixer routing"))
register_family(FamilySpec("gpt_oss", ("gpt_oss",), "mlp", "router", ("num_local_experts", "num_experts"),
                           "intermediate_size", router_applies_softmax_over_topk=True,
                           notes="transposed, interleaved gate/up with biases; router bias"))
register_family(FamilySpec("granitemoe", ("granitemoe",), "block_sparse_moe", "router", ("num_local_experts",),
                           "intermediate_size", router_applies_softmax_over_topk=True))


@dataclass
class MoEBlock:
    """One MoE layer: the block, its fused experts, its router and optional shared expert."""

    layer: int                # index of the decoder layer
    name: str                 # module path, e.g. "model.layers.3.mlp"
    block: nn.Module
    experts: nn.Module
    router: nn.Module
    shared: nn.Module | None = None
    shared_gate: nn.Module | None = None
    transposed: bool = False  # weights stored [E, in, out] instead of [E, out, in]
    interleaved: bool = False  # gate/up interleaved on the 2I axis instead of concatenated
    has_bias: bool = False
    extra: dict = field(default_factory=dict)

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return self.experts.gate_up_proj.shape[0]

    @property
    def intermediate_size(self) -> int:
        w = self.experts.gate_up_proj
        return (w.shape[2] if self.transposed else w.shape[1]) // 2

    @property
    def hidden_size(self) -> int:
        w = self.experts.gate_up_proj
        return w.shape[1] if self.transposed else w.shape[2]

    def expert_param_count(self) -> int:
        """Parameters of all routed experts of this block (weights and biases)."""
        return sum(p.numel() for p in self.experts.parameters(recurse=False))

    # -- canonical weights ------------------------------------------------------------------------------------
    def gate_up_positions(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of neurons `idx` on the stored 2I axis: (gate positions, up positions)."""
        if self.interleaved:
            return 2 * idx, 2 * idx + 1
        return idx, idx + self.intermediate_size

    def _gate_up_2i_first(self) -> torch.Tensor:
        w = self.experts.gate_up_proj                        # [E, 2I, H] or [E, H, 2I]
        return w.transpose(1, 2) if self.transposed else w  # [E, 2I, H]

    def gate_weight(self) -> torch.Tensor:
        """Gate projections, canonical [E, I, H] (a view)."""
        w = self._gate_up_2i_first()
        return w[:, 0::2] if self.interleaved else w[:, : self.intermediate_size]

    def up_weight(self) -> torch.Tensor:
        """Up projections, canonical [E, I, H] (a view)."""
        w = self._gate_up_2i_first()
        return w[:, 1::2] if self.interleaved else w[:, self.intermediate_size:]

    def down_weight(self) -> torch.Tensor:
        """Down projections, canonical [E, H, I] (a view)."""
        w = self.experts.down_proj
        return w.transpose(1, 2) if self.transposed else w

    # -- running one expert -----------------------------------------------------------------------------------
    def expert_hidden(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Intermediate activation h = act(x Wg^T) * (x Wu^T) of expert e, with the family's own gate. x [n, H] -> [n, I]."""
        ex = self.experts
        if self.transposed:
            gate_up = x @ ex.gate_up_proj[e]
        else:
            gate_up = nn.functional.linear(x, ex.gate_up_proj[e])
        if self.has_bias:
            gate_up = gate_up + ex.gate_up_proj_bias[e]
        return ex._apply_gate(gate_up)

    def expert_output(self, h: torch.Tensor, e: int) -> torch.Tensor:
        """f_e(x) = h Wd^T (+ bias) of expert e, before the router weight. h [n, I] -> [n, H]."""
        ex = self.experts
        out = h @ ex.down_proj[e] if self.transposed else nn.functional.linear(h, ex.down_proj[e])
        if self.has_bias:
            out = out + ex.down_proj_bias[e]
        return out

    # -- surgery ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def keep_neurons_(self, keep: torch.Tensor) -> None:
        """Keep neurons `keep` [E, I'] (sorted ids per expert) in every expert: slices gate, up, down and biases."""
        ex = self.experts
        E, k = keep.shape
        gu_rows = []
        for e in range(E):
            g, u = self.gate_up_positions(keep[e])
            pos = torch.stack([g, u], 1).reshape(-1) if self.interleaved else torch.cat([g, u])
            gu_rows.append(pos)
        rows = torch.stack(gu_rows)                                             # [E, 2I']
        if self.transposed:
            gu = torch.stack([ex.gate_up_proj[e][:, rows[e]] for e in range(E)])   # [E, H, 2I']
            dn = torch.stack([ex.down_proj[e][keep[e]] for e in range(E)])         # [E, I', H]
        else:
            gu = torch.stack([ex.gate_up_proj[e][rows[e]] for e in range(E)])      # [E, 2I', H]
            dn = torch.stack([ex.down_proj[e][:, keep[e]] for e in range(E)])      # [E, H, I']
        ex.gate_up_proj = nn.Parameter(gu.contiguous(), requires_grad=ex.gate_up_proj.requires_grad)
        ex.down_proj = nn.Parameter(dn.contiguous(), requires_grad=ex.down_proj.requires_grad)
        if self.has_bias:
            b = torch.stack([ex.gate_up_proj_bias[e][rows[e]] for e in range(E)])
            ex.gate_up_proj_bias = nn.Parameter(b.contiguous(), requires_grad=ex.gate_up_proj_bias.requires_grad)
        for attr in ("intermediate_dim", "intermediate_size", "expert_dim"):
            if isinstance(getattr(ex, attr, None), int):
                setattr(ex, attr, k)

    @torch.no_grad()
    def keep_experts_(self, keep_ids: torch.Tensor) -> None:
        """Keep experts `keep_ids` [E'] (sorted): slices every expert tensor, router rows, router bias and
        score-correction bias, and updates every cached expert count so all kernels (grouped_mm too) agree."""
        k = keep_ids
        ex, r = self.experts, self.router
        for pn, p in list(ex.named_parameters(recurse=False)):
            setattr(ex, pn, nn.Parameter(p[k].contiguous(), requires_grad=p.requires_grad))
        r.weight = nn.Parameter(r.weight[k].contiguous(), requires_grad=r.weight.requires_grad)
        if getattr(r, "bias", None) is not None:
            r.bias = nn.Parameter(r.bias[k].contiguous(), requires_grad=r.bias.requires_grad)
        if getattr(r, "e_score_correction_bias", None) is not None:
            r.e_score_correction_bias = r.e_score_correction_bias[k].contiguous()
        for mod in (ex, r, self.block):
            for attr in ("num_experts", "out_features"):
                if isinstance(getattr(mod, attr, None), int):
                    setattr(mod, attr, len(k))


class FamilyAdapter:
    """Resolved once per model: finds MoE blocks and reads / writes the family's config fields."""

    def __init__(self, spec: FamilySpec):
        self.spec = spec

    @property
    def family(self) -> str:
        return self.spec.name

    # -- structure -------------------------------------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        base = getattr(model, "model", model)
        layers = getattr(base, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise UnsupportedModelError(f"{type(model).__name__}: no decoder layers at model.layers")
        return layers

    def moe_blocks(self, model: nn.Module, *, required: bool = True) -> list[MoEBlock]:
        """Every MoE block in layer order. `required=False` returns [] for a model (or a one-layer view) without
        MoE layers instead of raising."""
        blocks = []
        for i, layer in enumerate(self.decoder_layers(model)):
            blk = getattr(layer, self.spec.block_attr, None)
            experts = getattr(blk, "experts", None)
            if experts is None or not hasattr(experts, "gate_up_proj"):
                continue                                          # dense layer (first_k_dense_replace, mlp_only_layers)
            router = getattr(blk, self.spec.router_attr)
            name = f"model.layers.{i}.{self.spec.block_attr}"
            blocks.append(MoEBlock(
                layer=i, name=name, block=blk, experts=experts, router=router,
                shared=getattr(blk, self.spec.shared_attr, None) if self.spec.shared_attr else None,
                shared_gate=getattr(blk, self.spec.shared_gate_attr, None) if self.spec.shared_gate_attr else None,
                transposed=bool(getattr(experts, "is_transposed", False)),
                interleaved=not bool(getattr(experts, "is_concatenated", True)),
                has_bias=bool(getattr(experts, "has_bias", False)),
            ))
        if not blocks and required:
            raise UnsupportedModelError(f"{type(model).__name__} ({self.family}) has no MoE layers")
        return blocks

    # -- config -------------------------------------------------------------------------------------------------
    def num_experts(self, config) -> int:
        return int(getattr(config, self.spec.expert_count_fields[0]))

    def top_k(self, config) -> int:
        return int(getattr(config, self.spec.top_k_field))

    def expert_width(self, config) -> int:
        return int(getattr(config, self.spec.width_field))

    def shared_width(self, config) -> int:
        """Intermediate width of the shared expert (0 when the family has none)."""
        if self.spec.shared_multiplier_field:
            return self.expert_width(config) * int(getattr(config, self.spec.shared_multiplier_field) or 0)
        if self.spec.shared_width_field:
            return int(getattr(config, self.spec.shared_width_field) or 0)
        return 0

    def num_groups(self, config) -> int:
        return int(getattr(config, self.spec.group_field, 1) or 1) if self.spec.group_field else 1

    def valid_expert_width(self, config, width: int) -> int:
        """Largest width <= `width` that the config can express and every expert kernel can run.

        Rules: widths of 8 or more are multiples of `WIDTH_ALIGN` (8): torch's grouped_mm, transformers' default
        expert kernel, needs 16-byte-aligned rows, and a bf16 down_proj row is 2 * width bytes, so an unaligned
        width gives a checkpoint that crashes on its first forward in stock transformers. DeepSeek sizes its shared
        MLP as width * n_shared_experts, so there the width must also divide the shared width."""
        if width < 1:
            raise ValueError("expert width must be at least 1")
        shared = self.shared_width(config) if self.spec.shared_multiplier_field else 0
        for w in range(width, 0, -1):
            if w >= WIDTH_ALIGN and w % WIDTH_ALIGN:
                continue
            if shared and shared % w:
                continue
            return w
        return 1

    def set_expert_width_(self, config, width: int) -> None:
        """Write the new expert width, keeping a width-coupled shared expert at its current size."""
        if self.spec.shared_multiplier_field:
            shared = self.shared_width(config)
            if shared % width:
                raise ValueError(f"{self.family}: expert width {width} does not divide the shared-expert width "
                                 f"{shared}; use valid_expert_width() to pick {self.valid_expert_width(config, width)}")
            setattr(config, self.spec.shared_multiplier_field, shared // width)
        setattr(config, self.spec.width_field, width)

    def set_num_experts_(self, config, n: int) -> None:
        """Write E under every alias the family's config knows, so 4.x-era tools read it too."""
        for f in self.spec.expert_count_fields:
            setattr(config, f, n)

    def check_expert_count(self, config, n: int) -> None:
        """Refuse expert counts the router cannot use: fewer than top-k, or broken expert groups."""
        k, E = self.top_k(config), self.num_experts(config)
        if n > E:
            raise ValueError(f"cannot keep {n} experts: the model has only {E}")
        if n < k:
            raise ValueError(f"cannot keep {n} experts: the router picks top-{k}, so keep at least {k}")
        groups = self.num_groups(config)
        if groups > 1:
            if n % groups:
                raise ValueError(f"{self.family} routes in {groups} expert groups: keep a multiple of {groups} "
                                 f"experts (e.g. {max(groups * 2, (n // groups) * groups)})")
            if n // groups < 2:
                raise ValueError(f"{self.family} scores each group by its top-2 experts: keep at least "
                                 f"{2 * groups} experts ({groups} groups x 2)")
            topk_group = int(getattr(config, self.spec.topk_group_field, 1) or 1)
            if topk_group * (n // groups) < k:
                raise ValueError(f"{self.family}: {topk_group} selected groups x {n // groups} experts per group "
                                 f"is fewer than top-{k}")

    def renormalises_topk(self, config) -> bool:
        r = self.spec.renormalises_topk
        return bool(getattr(config, r, False)) if isinstance(r, str) else bool(r)


def resolve_adapter(model_or_config) -> FamilyAdapter:
    """The adapter for a model (or its config). Raises `UnsupportedModelError` naming what was found."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    spec = FAMILIES.get(model_type)
    if spec is None:
        moe_like = any(hasattr(config, f) for f in ("num_local_experts", "num_experts", "n_routed_experts",
                                                     "moe_num_experts"))
        what = "a mixture-of-experts family this studio does not support yet" if moe_like else \
            "a dense model (no experts in its config)"
        supported = ", ".join(sorted({s.name for s in FAMILIES.values()}))
        raise UnsupportedModelError(f"model_type '{model_type}' is {what}. Supported MoE families: {supported}.")
    return FamilyAdapter(spec)
