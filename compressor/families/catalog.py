"""The MoE causal-LM families of the installed transformers, and which the studio supports.

`SUPPORTED` lists the model types that pass the conformance suite (`tests/compressor/families/test_conformance.py`:
identity at keep 1.0, slimmed == zeroed neurons, pruned == masked router, dropped layer == bypassed layer, stock
reload, parameter counts). `KNOWN_UNSUPPORTED` gives, for every other MoE family, the part that is not understood.
A test fails when transformers gains a family that is in neither, so an upgrade is seen.

    installed_moe_families()     # model types with an experts module and an AutoModelForCausalLM class
"""
from __future__ import annotations

import importlib
import inspect
import re

SUPPORTED: tuple[str, ...] = (
    "afmoe", "aria_text", "axk1", "axk2", "bailing_hybrid", "beam",
    "cohere2_moe", "dbrx", "deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4",
    "dots1", "dots3_note_text", "ernie4_5_moe", "exaone_moe", "flex_olmo", "flint",
    "gemma4", "gemma4_text", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "gpt_oss",
    "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared", "hunyuan_v1_moe", "hy_v3",
    "hy_v4", "inkling2_loop_text", "inkling2_text", "inkling_text", "jamba", "kimi_linear",
    "kolibri1", "laguna", "lara_mini", "lfm2_moe", "llama4", "llama4_text",
    "mellum", "mimo_v2_flash", "minimax", "minimax_m2", "minimax_m3_vl_text", "mixtral",
    "nemotron_h", "olmoe", "phimoe", "qwen2_moe", "qwen3_5_moe", "qwen3_5_moe_text",
    "qwen3_moe", "qwen3_next", "qwen4_exp", "qwen4_exp_text", "solar_open", "zaya",
)

KNOWN_UNSUPPORTED: dict[str, str] = {
    "jetmoe": "its experts are split over two ParallelExperts modules (mlp.input_linear / mlp.output_linear) with the "
              "router beside them, and its attention is a mixture of attention experts (self_attention.experts); "
              "neither is a fused experts module the studio can slice",
    "longcat_flash": "its experts module mixes E routed experts with zero (identity) experts on the gate_up axis and "
                     "calls them with its own signature, so the canonical expert views do not reproduce it",
    "dots3_note": "the composite (vision + text) config cannot be reduced to its text model here; open the text model "
                  "(dots3_note_text) instead",
}


def supported_families() -> list[str]:
    return sorted(SUPPORTED)


def installed_moe_families() -> list[str]:
    """Model types of the installed transformers whose modeling file builds an experts module (`self.experts =`)
    and that map to a causal-LM class: the set the studio is measured against."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    out = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        name = model_type_to_module_name(model_type)
        try:
            module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
            source = inspect.getsource(module)
        except (ImportError, OSError, TypeError):
            continue
        if re.search(r"self\.experts\s*=", source) and re.search(r"top_k|num_experts_per_tok|moe", source):
            out.append(model_type)
    return sorted(out)
