"""What discovery cannot see: per-family facts kept as `FamilySpec` entries, only where a family really differs.

Structure (layers, MoE blocks, experts layout, router, shared experts) is discovered from the module tree
(`compressor.families.discover`); the config fields holding E, top-k and the expert width are found by name
(`compressor.families.fields`). A spec adds what neither shows: routing semantics worth telling the user, field
overrides where the generic names would pick the wrong field, and refusals (layer dropping or expert pruning that
would give a model that does not compute what the original computed without the removed parts).

    spec = spec_for("deepseek_v3")          # registered, or a generic spec for a discovered family
    spec.expert_pruning                      # None (allowed) or the reason it is refused
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilySpec:
    """Facts about one family beyond its discovered structure. Every field has a generic default."""

    name: str
    model_types: tuple[str, ...]
    expert_count_fields: tuple[str, ...] | None = None   # config fields holding E (None: found by name)
    width_field: str | None = None                       # config field holding the expert width I
    top_k_field: str | None = None
    shared_multiplier_field: str | None = None  # shared width = width_field * this field (DeepSeek)
    shared_width_coupled: bool = False          # the width field sizes the shared expert too: cut it to the same width
    group_field: str | None = None              # DeepSeek-style group routing: E % n_group == 0
    topk_group_field: str | None = None
    renormalises_topk: str | bool = True        # True, False, or the config field that decides
    router_applies_softmax_over_topk: bool = False
    zero_experts_field: str | None = None       # experts without weights (identity / zero): router rows E..E+z-1
    expert_pruning: str | None = None           # None: allowed; otherwise why it is refused
    neuron_slimming: str | None = None
    layer_dropping: str | None = None
    notes: str = ""


FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    for mt in spec.model_types:
        FAMILIES[mt] = spec
    return spec


def spec_for(model_type: str) -> FamilySpec:
    """The registered spec of `model_type`, or a generic one (all defaults) named after it."""
    return FAMILIES.get(model_type) or FamilySpec(name=model_type, model_types=(model_type,))


_DS = dict(group_field="n_group", topk_group_field="topk_group", renormalises_topk="norm_topk_prob")

register_family(FamilySpec("mixtral", ("mixtral", "minimax"), expert_count_fields=("num_local_experts",),
                           width_field="intermediate_size"))
register_family(FamilySpec("qwen2_moe", ("qwen2_moe",), renormalises_topk="norm_topk_prob"))
register_family(FamilySpec("qwen3_moe", ("qwen3_moe",), expert_count_fields=("num_experts", "num_local_experts"),
                           renormalises_topk="norm_topk_prob"))
register_family(FamilySpec("olmoe", ("olmoe",), width_field="intermediate_size", renormalises_topk="norm_topk_prob"))
register_family(FamilySpec("deepseek_v3", ("deepseek_v3", "glm4_moe"), expert_count_fields=("n_routed_experts",),
                           shared_multiplier_field="n_shared_experts", **_DS,
                           notes="sigmoid routing with e_score_correction_bias and expert groups"))
register_family(FamilySpec("phimoe", ("phimoe",), width_field="intermediate_size", renormalises_topk=False,
                           notes="sparsemixer routing"))
register_family(FamilySpec("gpt_oss", ("gpt_oss",), expert_count_fields=("num_local_experts", "num_experts"),
                           width_field="intermediate_size", router_applies_softmax_over_topk=True,
                           notes="transposed, interleaved gate/up with biases; router bias"))
register_family(FamilySpec("granitemoe", ("granitemoe",), width_field="intermediate_size",
                           router_applies_softmax_over_topk=True))
register_family(FamilySpec("deepseek_v4", ("deepseek_v4",), shared_width_coupled=True,
                           expert_pruning="its first layers route by token id through a fixed table "
                                          "(gate.tid2eid holds expert ids), which expert pruning cannot renumber",
                           notes="hash-routed early layers"))
register_family(FamilySpec("hunyuan_v1_moe", ("hunyuan_v1_moe",), shared_width_coupled=True,
                           notes="intermediate_size sizes the experts and the shared MLP: both slimmed to one width"))
register_family(FamilySpec("llama4_text", ("llama4_text",), shared_width_coupled=True,
                           notes="intermediate_size sizes the experts and the shared expert: both slimmed to one width"))
register_family(FamilySpec("jamba", ("jamba",),
                           neuron_slimming="its intermediate_size sizes the routed experts and the dense MLPs of its "
                                           "non-MoE layers together, and the studio does not slim those dense MLPs "
                                           "yet; prune experts or drop layers instead"))
register_family(FamilySpec("inkling_text", ("inkling_text",),
                           neuron_slimming="its moe_intermediate_size also sizes the router (mlp.gate is an MLP of "
                                           "that width), which neuron slimming cannot cut; prune experts or drop "
                                           "layers instead"))
register_family(FamilySpec("longcat_flash", ("longcat_flash",), zero_experts_field="zero_expert_num",
                           notes="zero (identity) experts beside the routed ones"))
register_family(FamilySpec("hy_v4", ("hy_v4",),
                           layer_dropping="its layers are coupled (a layer reads state that an earlier layer "
                                          "computes), so removing one changes what the others compute"))
register_family(FamilySpec("zaya", ("zaya",),
                           expert_pruning="its router is an MLP with E + 1 balancing biases (gate.balancing_biases) "
                                          "and no [E, H] weight, so its expert rows cannot be sliced",
                           layer_dropping="its layers are coupled (routing state is carried from layer to layer)",
                           notes="top-1 routing through an MLP router"))
register_family(FamilySpec("dots3_note_text", ("dots3_note_text",),
                           layer_dropping="its per-layer sub-configs (per_layer_config) are keyed by layer index "
                                          "and are not rewritten yet"))
