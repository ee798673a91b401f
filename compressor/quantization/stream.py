"""Quantize a checkpoint folder layer by layer, with one decoder layer's weights in memory at a time.

The layer-by-layer driver's machinery (`compressor.stream`): a `Skeleton` on the meta device, the calibration
batches' inputs captured through the model's own forward (`capture_inputs`), then for each layer i: load it
(float32), quantize it in place with `quantize_layer_` (GPTQ Hessians from forwarding it on the current hidden
states, each expert on its routed tokens), write its tensors (kept ones in the checkpoint's dtype, quantized ones
through `export.compressed_tensors`) to its own shard, forward the quantized layer to give layer i+1 its inputs,
and free it. Memory: one layer, its Hessians and the activations between layers (spilled to disk past the spill
limit, `compressor.stream.spill`). The result is the checkpoint `save_compressed` writes for the same model in
memory (same keys, same values; shards per layer).

    report = stream_quantize("big-model", "big-model-w4", batches, QuantPlan.of({"experts": SCHEMES["W4A16"]}))
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from compressor.progress import Reporter
from compressor.quantization.sequential import QuantizedParams, QuantReport, check_plan, quantize_layer_
from compressor.quantization.targets import QuantPlan

COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
          "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


@torch.no_grad()
def stream_quantize(folder: str | Path, out: str | Path, batches: list | None, plan: QuantPlan, *,
                    device: str = "cpu", spill=None, reporter: Reporter | None = None) -> QuantReport:
    """Write the compressed-tensors checkpoint of the checkpoint in `folder` into `out` (module docstring)."""
    import time

    from compressor.stream.skeleton import Skeleton, checkpoint_dtype
    from compressor.stream.writer import ShardWriter
    from transformers.core_model_loading import revert_weight_conversion

    if plan.method == "gptq" and not batches:
        raise ValueError("GPTQ needs calibration batches (compressor.data.calibration_for); none were given")
    t0 = time.perf_counter()
    reporter = reporter or Reporter()
    folder, out = Path(folder), Path(out)
    probe = Skeleton.open(folder)
    dtype = checkpoint_dtype(probe.config, probe.index)
    sk = Skeleton.open(folder, dtype=torch.float32, device=device)
    report = QuantReport(method=plan.method, matrices={}, params_quantized=0,
                         schemes={k: (s.label() if s is not None else "kept") for k, s in plan.schemes.items()})
    globals_, acts = _capture(sk, batches, plan, report, spill=spill)
    schemes, classes = {}, {}
    L = len(sk.layers)
    out.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out, original_format=False) as writer:
        writer.write(revert_weight_conversion(sk.model, {k: v.to(dtype) for k, v in globals_.items()}))
        del globals_
        for i in range(L):
            reporter.report("quantize", i, L, message=f"layer {i + 1}/{L}: {plan.method}")
            _quantize_and_write_layer(sk, i, plan, report, writer, acts=acts, dtype=dtype, schemes=schemes,
                                      classes=classes)
    _write_config(folder, out, sk.model, schemes, classes)
    for name in COPIED:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    report.seconds = time.perf_counter() - t0
    return report


def _capture(sk, batches: list | None, plan: QuantPlan, report: QuantReport, *, spill=None) -> tuple[dict, object]:
    """With the globals loaded: the tensors outside the decoder layers, and for GPTQ the calibration batches'
    inputs to layer 0 (their token count goes into `report`). Returns (globals, activations or None)."""
    from compressor.stream.sweep import capture_inputs

    acts = None
    sk.load_globals_()
    globals_ = _global_tensors(sk.model)
    if plan.method == "gptq":
        acts = capture_inputs(sk, batches, spill=spill)
        report.calibration_tokens = int(sum(ids.numel() for ids in acts.input_ids))
    sk.release_globals_()
    return globals_, acts


def _quantize_and_write_layer(sk, i: int, plan: QuantPlan, report: QuantReport, writer, *, acts, dtype: torch.dtype,
                              schemes: dict, classes: dict) -> None:
    """Layer i: load it (float32), quantize it in place (the plan is checked on layer 0), write its tensors, forward
    the quantized layer to give layer i+1 its inputs, free it. Adds the layer's schemes and classes to `schemes`
    and `classes`."""
    from compressor.families import resolve_adapter
    from compressor.quantization.export import check_experts_quantized, compressed_tensors
    from compressor.stream.sweep import advance_

    layer = sk.load_layer_(i)
    view = sk.layer_view(i)
    adapter = resolve_adapter(view)
    blocks = adapter.moe_blocks(view)
    if i == 0:
        check_plan(view, plan, adapter=adapter, blocks=blocks)
    params = QuantizedParams()
    quantize_layer_(view, adapter, i, plan, params, report, acts=acts, scale_dtype=dtype, blocks=blocks)
    check_experts_quantized(view, params)
    packed, layer_schemes = compressed_tensors(view, params, dtype=dtype, conversion_model=sk.model)
    schemes.update(layer_schemes)
    classes.update({n: q.klass for n, q in params.linear.items()})
    writer.write(_layer_tensors(sk.model, layer, i, packed, dtype=dtype))
    if acts is not None and i + 1 < len(sk.layers):
        advance_(layer, acts, i)
    sk.release_layer_(i)


def _layer_tensors(model: nn.Module, layer: nn.Module, i: int, packed: dict, *, dtype: torch.dtype) -> dict:
    """Layer i's tensors as stored: kept ones in the checkpoint's dtype under the checkpoint's names, each quantized
    weight replaced by its packed parts (`<name>.weight_packed`, `.weight_scale`, ...)."""
    from transformers.core_model_loading import revert_weight_conversion

    prefix = f"model.layers.{i}."
    plain = revert_weight_conversion(model, {prefix + k: v.to(dtype) if v.is_floating_point() else v
                                             for k, v in layer.state_dict().items()})
    tensors = {k: v for k, v in plain.items() if k not in packed}
    for k, parts in packed.items():
        tensors.update({k.removesuffix("weight") + s: t for s, t in parts.items()})
    return tensors


def _write_config(folder: Path, out: Path, model: nn.Module, schemes: dict, classes: dict) -> None:
    """The source config.json with the `quantization_config` of the written layers (plain linears outside the
    experts that were not quantized are listed as kept)."""
    from compressor.quantization.export import quantization_config

    kept = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and n not in classes and ".experts." not in n]
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = quantization_config(model, schemes, kept, classes)
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _global_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything outside the decoder layers, each stored tensor once (a tied LM head is left to the config)."""
    seen, out = set(), {}
    for k, v in model.state_dict().items():
        if k.startswith("model.layers.") or v.device.type == "meta" or v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out
