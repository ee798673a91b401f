"""The Compress tab's estimate in the page, without a server round trip (issue 27, item 9): `JS` (ui/live_estimate.js)
is the arithmetic of `compressor.estimate` and `ui.compress.estimate_card` in JavaScript; `payload(model)` is what it
reads, computed here by the Python source of truth once per model (the shape's derived parts, the feasibility
limits, each quantize preset's label and bits per weight), held in a hidden gr.JSON.

The server's preview still runs after every change and redraws the same card (and the YAML, the residency note,
refusals); the page's card only comes first. Where the page cannot decide (a refused cut, a staged expert cut, a
layer-by-layer run, a refusal on show), it leaves the card to the server. tests/ui/test_live_estimate.py checks that
both give the same HTML on several models and settings.

    gr.on(triggers, None, [shape_json, estimate, residency_note, *controls], estimate, js=JS)
"""
from __future__ import annotations

from pathlib import Path

from compressor.estimate import ModelShape, scheme_bits
from compressor.recipe import QuantizeConfig
from ui.recipe_form import QUANTIZE_PRESETS

JS = (Path(__file__).with_name("live_estimate.js")).read_text()
CUTS = ("expert_pruning", "neuron_slimming", "layer_dropping")


def payload(model: dict | None) -> dict | None:
    """What the page's estimate needs of `model` (the Model tab's state); None when there is no model or its
    summary has no single shape (the server's estimate then says why)."""
    if not model:
        return None
    try:
        shape = ModelShape.from_summary(model["summary"])
    except (KeyError, TypeError, ValueError):
        return None
    lim = shape.feasibility_limits
    return {
        "shape": {"num_layers": shape.num_layers, "moe_layers": shape.moe_layers, "num_experts": shape.num_experts,
                  "top_k": shape.top_k, "expert_width": shape.expert_width, "hidden": shape.hidden,
                  "vocab": shape.vocab, "params_total": shape.params_total, "params_active": shape.params_active,
                  "bytes_per_param": shape.bytes_per_param, "tied_embeddings": shape.tied_embeddings,
                  "expert_params": shape.expert_params, "neuron_params": shape.neuron_params,
                  "embedding_params": shape.embedding_params, "layer_rest_params": shape.layer_rest_params},
        "limits": {"num_experts": lim.num_experts, "top_k": lim.top_k, "num_layers": lim.num_layers,
                   "groups": lim.groups, "refusals": [c for c in CUTS if c in lim.refusals]},
        "quantize": {label: _preset(shape, section) for label, section in QUANTIZE_PRESETS.items()},
    }


def _preset(shape: ModelShape, section: dict | None) -> dict | None:
    """A quantize preset as the page's estimate uses it: the card's label, the format, and for compressed-tensors
    the bits per weight of the experts and of the attention (`compressor.estimate.scheme_bits`)."""
    if section is None:
        return None
    torchao = section.get("format") == "torchao"
    label = QuantizeConfig.model_validate(section).label + (" (torchao)" if torchao else "")
    if torchao:
        return {"label": label, "torchao": True}
    return {"label": label, "torchao": False, "bits_experts": scheme_bits(shape, section, "experts"),
            "bits_attention": scheme_bits(shape, section, "attention")}
