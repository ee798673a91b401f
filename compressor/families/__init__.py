"""MoE families: structure discovered from the module tree, config fields found by name, specs for real differences.

    adapter = resolve_adapter(model)             # raises UnsupportedModelError for dense / not understood models
    for blk in adapter.moe_blocks(model):        # one per MoE layer, dense layers skipped
        print(blk.layer, blk.num_experts, blk.intermediate_size)

Modules: `layout` (how experts are stored), `block` (MoEBlock: canonical views and cuts), `discover` (finding
layers, blocks, routers), `fields` (config field names), `spec` (FamilySpec registry), `adapter`
(FamilyAdapter, resolve_adapter), `catalog` (the installed transformers' MoE families, supported or not).
The names load on first use (PEP 562): `spec` and `fields` are torch-free and the feasibility rules use them.
"""
from compressor.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "FamilyAdapter": "adapter", "UnsupportedModelError": "adapter", "resolve_adapter": "adapter",
    "ExpertIndexed": "block", "MoEBlock": "block", "ExpertsLayout": "layout",
    "FAMILIES": "spec", "FamilySpec": "spec", "register_family": "spec", "spec_for": "spec",
})
