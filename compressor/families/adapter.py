"""The family adapter: resolved once per model (or config), finds MoE blocks and reads / writes the config's MoE
fields. Structure is discovered (`discover`), config fields found by name (`fields`), real differences come from
the family's `FamilySpec`.

    adapter = resolve_adapter(model)             # raises UnsupportedModelError for dense / not understood models
    for blk in adapter.moe_blocks(model):        # one per MoE layer, dense layers skipped
        print(blk.layer, blk.num_experts, blk.intermediate_size)
    adapter.verify(model)                        # canonical views reproduce the experts module (numerical probe)
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.families import fields as F
from compressor.families.block import MoEBlock
from compressor.families.catalog import KNOWN_UNSUPPORTED, supported_families
from compressor.families.discover import discover_block, find_layer_list
from compressor.families.errors import UnsupportedModelError
from compressor.families.spec import FamilySpec, spec_for
from compressor.widths import WIDTH_ALIGN


class FamilyAdapter:
    """Config fields and structure of one MoE family."""

    def __init__(self, spec: FamilySpec, config):
        self.spec = spec
        cfg = F.text_config(config)
        self.count_fields = spec.expert_count_fields or F.expert_count_fields(cfg)
        self.top_k_field = spec.top_k_field or F.first_field(cfg, F.TOP_K_NAMES)
        self.width_field = spec.width_field or F.first_field(cfg, F.WIDTH_NAMES)
        self.shared_width_field = F.first_field(cfg, F.SHARED_WIDTH_NAMES)
        mult = spec.shared_multiplier_field or F.first_field(cfg, F.SHARED_COUNT_NAMES)
        self.shared_multiplier_field = None if self.shared_width_field and not spec.shared_multiplier_field else mult
        self.group_field = spec.group_field or F.first_field(cfg, F.GROUP_NAMES)
        self.topk_group_field = spec.topk_group_field or F.first_field(cfg, F.TOPK_GROUP_NAMES)

    @property
    def family(self) -> str:
        return self.spec.name

    # -- structure -------------------------------------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        cfg = F.text_config(model.config)
        n = getattr(cfg, "num_hidden_layers", None)
        found = find_layer_list(model, None) or find_layer_list(model, n)
        if found is None:
            raise UnsupportedModelError(f"{type(model).__name__} ({self.family}): no list of decoder layers found "
                                        "(looked for model.layers, transformer.blocks and a ModuleList of "
                                        f"num_hidden_layers={n} modules)")
        return found[1]

    def layer_prefix(self, model: nn.Module) -> str:
        cfg = F.text_config(model.config)
        found = find_layer_list(model, None) or find_layer_list(model, getattr(cfg, "num_hidden_layers", None))
        return found[0] if found else "model.layers"

    def moe_blocks(self, model: nn.Module, *, required: bool = True) -> list[MoEBlock]:
        """Every MoE block in layer order. `required=False` returns [] for a model (or a one-layer view) without
        MoE layers instead of raising."""
        cfg = F.text_config(model.config)
        hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0))
        hint = self.num_experts(cfg) if self.count_fields else None
        prefix = self.layer_prefix(model)
        blocks = []
        for i, layer in enumerate(self.decoder_layers(model)):
            parts = discover_block(layer, hidden=hidden, experts_hint=hint)
            if parts is None:
                continue
            blocks.append(MoEBlock(
                layer=i, name=f"{prefix}.{i}.{parts.path}".rstrip("."), block=parts.block, experts=parts.experts,
                router=parts.router, layout=parts.layout, shared=parts.shared, shared_gate=parts.shared_gate,
                indexed=parts.indexed, n_experts=hint if parts.layout.form == "rows" else None,
                extra={"router_weight": parts.router_weight, "router_rows": parts.router_rows,
                       "id_tensors": parts.id_tensors,
                       "shared_coupled": self.spec.shared_width_coupled and parts.shared is not None}))
        if not blocks and required:
            raise UnsupportedModelError(
                f"{type(model).__name__} ({self.family}): no MoE layer found. Looked in every decoder layer for a "
                "module with an 'experts' child holding fused gate_up_proj/down_proj [E, 2I, H] / [E, H, I] tensors "
                "(either orientation), up_proj/down_proj, or w1/v1/w2 rows; none matched")
        return blocks

    @torch.no_grad()
    def verify(self, model: nn.Module, *, atol: float = 1e-4) -> None:
        """Numerical probe: for the first MoE block, experts 0 and E-1 run through the canonical views must
        reproduce the experts module's own output on a random input. Skipped on meta tensors. Raises
        `UnsupportedModelError` naming what did not match."""
        blocks = self.moe_blocks(model)
        blk = blocks[0]
        if blk.device.type == "meta":
            return
        dtype = blk.down_weight().dtype
        g = torch.Generator().manual_seed(0)
        x = torch.randn(5, blk.hidden_size, generator=g).to(blk.device, dtype)
        for e in sorted({0, blk.num_experts - 1}):
            want = self._module_output(blk, x, e)
            if want is None:
                return
            got = blk.expert_output(blk.expert_hidden(x, e), e)
            err = (got.float() - want.float()).abs().max().item()
            scale = want.float().abs().max().item() + 1e-6
            if not err <= atol + 1e-2 * scale * (dtype != torch.float32):
                raise UnsupportedModelError(
                    f"{self.family}: the experts of {blk.name} ({type(blk.experts).__name__}) were read as "
                    f"{blk.layout.form} (transposed={blk.layout.transposed}, interleaved={blk.layout.interleaved}), "
                    f"but expert {e} computed that way differs from the module's own output by {err:.3g}; the "
                    "studio does not understand this experts layout")

    @staticmethod
    def _module_output(blk: MoEBlock, x: torch.Tensor, e: int) -> torch.Tensor | None:
        n = x.shape[0]
        if blk.routed_call:
            idx = torch.full((n, 1), e, dtype=torch.long, device=x.device)
            w = torch.ones(n, 1, dtype=x.dtype, device=x.device)
            out = blk.experts(x, idx, w)
            out = out[0] if isinstance(out, tuple) else out
            return out.reshape(n, -1)                    # DBRX returns [n, 1, H]
        try:                                    # Llama-4 style: forward(hidden [E * n, H]) runs every expert
            out = blk.experts(x.repeat(blk.num_experts, 1))
        except (TypeError, RuntimeError):
            return None
        return out.view(blk.num_experts, n, -1)[e]

    # -- config -------------------------------------------------------------------------------------------------
    def _get(self, config, name):
        return F.get_field(F.text_config(config), name)

    def num_experts(self, config) -> int:
        return int(self._get(config, self.count_fields[0]))

    def top_k(self, config) -> int:
        return int(self._get(config, self.top_k_field)) if self.top_k_field else 1

    def expert_width(self, config) -> int:
        return int(self._get(config, self.width_field))

    def shared_width(self, config) -> int:
        """Intermediate width of the shared expert (0 when the family has none)."""
        if self.shared_multiplier_field:
            return self.expert_width(config) * int(self._get(config, self.shared_multiplier_field) or 0)
        if self.shared_width_field:
            return int(self._get(config, self.shared_width_field) or 0)
        return 0

    def num_groups(self, config) -> int:
        return int(self._get(config, self.group_field) or 1) if self.group_field else 1

    def topk_group(self, config) -> int:
        """Groups a token's experts are chosen from (DeepSeek-style routing), 1 without groups."""
        return int(self._get(config, self.topk_group_field) or 1) if self.topk_group_field else 1

    def valid_expert_width(self, config, width: int) -> int:
        """Largest width <= `width` that the config can express and every expert kernel can run.

        Rules: widths of 8 or more are multiples of `WIDTH_ALIGN` (8): torch's grouped_mm, transformers' default
        expert kernel, needs 16-byte-aligned rows, and a bf16 down_proj row is 2 * width bytes, so an unaligned
        width gives a checkpoint that crashes on its first forward in stock transformers. DeepSeek sizes its shared
        MLP as width * n_shared_experts, so there the width must also divide the shared width."""
        if width < 1:
            raise ValueError("expert width must be at least 1")
        shared = self.shared_width(config) if self.shared_multiplier_field else 0
        for w in range(width, 0, -1):
            if w >= WIDTH_ALIGN and w % WIDTH_ALIGN:
                continue
            if shared and shared % w:
                continue
            return w
        return 1

    def set_expert_width_(self, config, width: int) -> None:
        """Write the new expert width, keeping a width-coupled shared expert at its current size."""
        if self.spec.neuron_slimming:
            raise ValueError(f"{self.family}: neuron slimming is not possible: {self.spec.neuron_slimming}")
        cfg = F.text_config(config)
        if self.shared_multiplier_field and self.shared_width(config):
            shared = self.shared_width(config)
            if shared % width:
                raise ValueError(f"{self.family}: expert width {width} does not divide the shared-expert width "
                                 f"{shared}; use valid_expert_width() to pick {self.valid_expert_width(config, width)}")
            F.set_field(cfg, self.shared_multiplier_field, shared // width)
        F.set_field(cfg, self.width_field, width)

    def check_width_change(self, model: nn.Module, width: int) -> None:
        """Refuse (before any cut) a width the config cannot give the experts alone: the config with the new width
        is rebuilt on the meta device, and any tensor outside the routed experts that changes shape means the width
        field also sizes another module (Jamba's dense MLPs, Inkling's router). A shared expert the spec declares
        width-coupled (Hunyuan, DeepSeek-V4, Llama-4: `FamilySpec.shared_width_coupled`) is cut with the experts."""
        import copy

        from compressor.slimming.structure import expected_shapes
        config = copy.deepcopy(model.config)
        self.set_expert_width_(config, width)
        want = expected_shapes(config, type(model))
        blocks = self.moe_blocks(model)
        experts = {f"{blk.name}.experts.{t}" for blk in blocks for t in blk.layout.tensor_names()}
        names = {id(m): n for n, m in model.named_modules()}
        shared = tuple(f"{names[id(b.shared)]}." for b in blocks if b.extra.get("shared_coupled"))   # cut with them
        changed = sorted(k for k, v in model.state_dict().items()
                         if k not in experts and not k.startswith(shared) and k in want and tuple(v.shape) != want[k])
        if changed:
            raise ValueError(f"{self.family}: the expert-width field '{self.width_field}' also sizes "
                             f"{', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}, so the experts cannot be "
                             "slimmed alone; prune experts or drop layers instead")

    def set_num_experts_(self, config, n: int) -> None:
        """Write E under every alias the family's config knows, so 4.x-era tools read it too."""
        for f in self.count_fields:
            F.set_field(F.text_config(config), f, n)

    def check_expert_count(self, config, n: int) -> None:
        """Refuse expert counts the router cannot use: fewer than top-k, or broken expert groups."""
        if self.spec.expert_pruning:
            raise ValueError(f"{self.family}: expert pruning is not possible: {self.spec.expert_pruning}")
        from compressor.feasibility import ModelLimits, expert_count_problems     # the one rule set
        limits = ModelLimits(family=self.family, num_experts=self.num_experts(config), top_k=self.top_k(config),
                             width=0, num_layers=0, groups=self.num_groups(config), topk_group=self.topk_group(config))
        problems = expert_count_problems(limits, n)
        if problems:
            raise ValueError(problems[0])

    def check_prunable(self, blocks: list[MoEBlock]) -> None:
        """Refuse expert pruning where the router is not understood (no [E, H] router weight, or expert-id
        tables that pruning cannot renumber)."""
        for blk in blocks:
            if blk.extra.get("router_weight") is None:
                raise ValueError(f"{self.family}: expert pruning is not possible: the router of {blk.name} has no "
                                 f"[E, H] weight (it is {type(blk.router).__name__ if blk.router else 'missing'}), "
                                 "so its expert rows cannot be found")
            if blk.extra.get("id_tensors"):
                raise ValueError(f"{self.family}: expert pruning is not possible: {blk.name} holds integer tensors "
                                 f"{blk.extra['id_tensors']} (expert-id tables) that pruning cannot renumber")

    def renormalises_topk(self, config) -> bool:
        r = self.spec.renormalises_topk
        return bool(self._get(config, r)) if isinstance(r, str) else bool(r)


def resolve_adapter(model_or_config) -> FamilyAdapter:
    """The adapter for a model (or its config). Raises `UnsupportedModelError` naming what was found."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    cfg = F.text_config(config)
    spec = spec_for(getattr(cfg, "model_type", None) or model_type)
    adapter = FamilyAdapter(spec, config)
    if not adapter.count_fields:
        what = ("a mixture-of-experts family whose expert-count field the studio does not know"
                if F.looks_moe(cfg) else "a dense model (no expert count in its config)")
        raise UnsupportedModelError(f"model_type '{model_type}' is {what}. Supported MoE families: "
                                    f"{', '.join(supported_families())}.")
    if not adapter.width_field:
        raise UnsupportedModelError(f"model_type '{model_type}': no expert-width field in its config (looked for "
                                    f"{', '.join(F.WIDTH_NAMES)})")
    if model_type in KNOWN_UNSUPPORTED:
        raise UnsupportedModelError(f"model_type '{model_type}' is a mixture-of-experts family the studio does not "
                                    f"support: {KNOWN_UNSUPPORTED[model_type]}")
    return adapter
