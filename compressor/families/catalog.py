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
    "dots1", "dots3_note_text", "ergo", "ernie4_5_moe", "exaone_moe", "flex_olmo", "flint",
    "gemma4", "gemma4_text", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "gpt_oss",
    "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared", "hunyuan_v1_moe", "hy_v3",
    "hy_v4", "inkling2_loop_text", "inkling2_text", "inkling_text", "jamba", "kimi_linear",
    "kolibri1", "kolibri1_1", "laguna", "lara_mini", "lfm2_moe", "llama4", "llama4_text",
    "mellum", "mimo_v2_flash", "minimax", "minimax_m2", "minimax_m3_vl_text", "minicpm5_moe", "mixtral",
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


STREAM_UNSUPPORTED: dict[str, str] = {
    "dbrx": "its decoder layers live at transformer.blocks, and the layer-by-layer engine reads model.layers",
    "gemma4": "its text model sits inside a vision-language model (model.language_model); open gemma4_text",
    "nemotron_h": "save_pretrained renames its layers (backbone.layers.*), so its shards cannot be read per layer",
    "inkling2_text": "save_pretrained renames its layer tensors, so its shards cannot be read per layer",
    "inkling2_loop_text": "save_pretrained renames its layer tensors, so its shards cannot be read per layer",
    "qwen4_exp": "a hyper-connection mixer runs after the last decoder layer, which the engine does not run",
    "qwen4_exp_text": "a hyper-connection mixer runs after the last decoder layer, which the engine does not run",
    "hy_v4": "its decoder layers pass state to the next layer besides the hidden states",
    "zaya": "its decoder layers pass routing state to the next layer besides the hidden states",
    "kolibri1_1": "its decoder layers pass indexer state to the next layer and read other layers' keys and values "
                  "(kv_source_layers) besides the hidden states",
    "glm_moe_dsa": "its decoder layers pass indexer state to the next layer besides the hidden states",
    "deepseek_v4": "its hash-routed layers need the token ids, which the engine does not pass layer by layer",
    "beam": "the layer-by-layer forward does not reproduce the whole model's (cross-layer residual connections)",
    "cohere2_moe": "the layer-by-layer forward does not reproduce the whole model's (checked on a tiny instance)",
    "inkling_text": "the layer-by-layer forward does not reproduce the whole model's (checked on a tiny instance)",
}


def check_streamable_family(config) -> None:
    """Refuse layer-by-layer processing for families whose layer-by-layer forward is known not to reproduce the
    model (`STREAM_UNSUPPORTED`; the conformance suite's `stream` check keeps the table honest)."""
    from compressor.families.errors import UnsupportedModelError
    model_type = getattr(config, "model_type", None)
    if model_type in STREAM_UNSUPPORTED:
        raise UnsupportedModelError(f"{model_type} cannot be processed layer by layer: "
                                    f"{STREAM_UNSUPPORTED[model_type]}. Run it in memory "
                                    "(execution.streaming: off) on a machine that holds the whole model.")


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
