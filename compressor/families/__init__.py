"""MoE families: structure discovered from the module tree, config fields found by name, specs for real differences.

    adapter = resolve_adapter(model)             # raises UnsupportedModelError for dense / not understood models
    for blk in adapter.moe_blocks(model):        # one per MoE layer, dense layers skipped
        print(blk.layer, blk.num_experts, blk.intermediate_size)

Modules: `layout` (how experts are stored), `block` (MoEBlock: canonical views and cuts), `discover` (finding
layers, blocks, routers), `fields` (config field names), `spec` (FamilySpec registry), `adapter`
(FamilyAdapter, resolve_adapter), `catalog` (the installed transformers' MoE families, supported or not).
"""
from compressor.families.adapter import FamilyAdapter, UnsupportedModelError, resolve_adapter
from compressor.families.block import ExpertIndexed, MoEBlock
from compressor.families.layout import ExpertsLayout
from compressor.families.spec import FAMILIES, FamilySpec, register_family, spec_for

__all__ = ["FAMILIES", "ExpertIndexed", "ExpertsLayout", "FamilyAdapter", "FamilySpec", "MoEBlock",
           "UnsupportedModelError", "register_family", "resolve_adapter", "spec_for"]
