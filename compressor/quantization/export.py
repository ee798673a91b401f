"""Save a model quantized by `quantize_model_` as a compressed-tensors checkpoint (what vLLM serves and stock
transformers reloads through `CompressedTensorsConfig`).

Layout (as the family's hub checkpoints, e.g. RedHatAI's W4A16 MoE models):
  - keys in the checkpoint's original format: transformers' own `revert_weight_conversion` turns the fused
    `mlp.experts.gate_up_proj` [E, 2I, H] / `down_proj` [E, H, I] back into per-expert 2-D keys
    (`mlp.experts.N.gate_proj.weight` ...); the scales and zero points go through the same reversal, stacked in
    the fused tensor's arrangement, so each per-expert key gets its own;
  - every quantized 2-D weight is stored by compressed-tensors' compressor for its format: `pack-quantized`
    (int4 / int8: `weight_packed` int32, `weight_scale`, `weight_shape`, `weight_zero_point` when asymmetric) or
    `float-quantized` (FP8: `weight` float8_e4m3fn, `weight_scale`); scales in the checkpoint's dtype;
  - `config.json` `quantization_config` = compressed-tensors' `QuantizationConfig` with `quant_method:
    compressed-tensors`, status `compressed`: one config group per scheme. One scheme for everything gives
    `targets: ["Linear"]` with every kept nn.Linear (routers, LM head, kept classes) in `ignore`, as llm-compressor
    writes it; mixed precision gives `re:` targets per class (format `mixed-precision`), the experts' group being
    the one whose regex names `experts` (how transformers picks the experts' scheme).

transformers dequantizes fused experts while loading (`CompressedTensorsDequantize`), which reads only
`weight_packed`, `weight_scale` and `weight_shape` of expert keys and multiplies FP8 experts by a per-row scale:
block-FP8 experts are refused here for that reason (dense modules take block FP8); and fused experts left dense
are refused, because that loader runs on every expert merge once the config is compressed-tensors. Asymmetric int weights are
refused for every class: compressed-tensors 0.20.1 packs their zero points on save while transformers 5.25 builds
the module with unpacked ones (a size mismatch on load); the math supports them (`WeightScheme(symmetric=False)`).

    info = save_compressed(model, params, "out/w4", dtype=torch.bfloat16, tokenizer=tok)
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor.quantization.scheme import WeightScheme
from compressor.quantization.sequential import QuantizedParams

FORMAT = {"int": "pack-quantized", "float": "float-quantized"}


def check_scheme(scheme: WeightScheme | None, klass: str) -> None:
    """Refuse schemes that stock transformers cannot read back from this format (module docstring)."""
    if scheme is None:
        return
    if not scheme.symmetric:
        raise ValueError(f"{klass}: asymmetric int weights do not reload in stock transformers from compressed-"
                         "tensors (0.20.1 packs the zero points on save, transformers 5.25 expects them unpacked, "
                         "and its fused-expert loader drops them); use a symmetric scheme (W4A16, W8A16)")
    if klass != "experts":
        return
    if scheme.block is not None:
        raise ValueError("block-FP8 experts: transformers multiplies FP8 experts by one scale per row when loading "
                         "compressed-tensors; use FP8 (per channel) for experts — FP8_BLOCK works for the others")


def check_experts_quantized(model, params: QuantizedParams) -> None:
    """Fused experts left dense do not load beside a compressed-tensors config: transformers 5.25 runs its
    dequantize step on every expert merge, which drops plain `.weight` experts (a conversion error on load)."""
    from compressor.families import resolve_adapter
    from compressor.quantization.targets import _expert_linears
    names = {id(m): n for n, m in model.named_modules()}
    for blk in resolve_adapter(model).moe_blocks(model):
        if not _expert_linears(blk) and names[id(blk.experts)] not in params.experts:
            raise ValueError(f"{names[id(blk.experts)]}: fused experts kept dense cannot be loaded by transformers "
                             "beside a compressed-tensors config (its expert loader dequantizes every expert); "
                             "quantize the experts too (e.g. quantize.experts: W8A16) or use format torchao")


def ct_scheme(scheme: WeightScheme, targets: list[str]):
    """compressed-tensors' QuantizationScheme of one WeightScheme (weight-only)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    args = QuantizationArgs(num_bits=scheme.bits, type=scheme.type, symmetric=scheme.symmetric,
                            strategy=scheme.strategy, group_size=scheme.group_size,
                            block_structure=list(scheme.block) if scheme.block else None, dynamic=False)
    return QuantizationScheme(targets=targets, weights=args, format=FORMAT[scheme.type])


def _stack(per_expert: dict, proj: str, what: str) -> torch.Tensor:
    return torch.stack([getattr(per_expert[e][proj], what) for e in sorted(per_expert)])


def _fused_tensors(model, params: QuantizedParams) -> tuple[dict, dict, dict, dict]:
    """{stored name: tensor} of the quantized fused expert tensors (grid values), their scales and zeros in the
    stored arrangement, and {stored name: scheme}."""
    from compressor.families.layout import get_tensor
    weights, scales, zeros, schemes = {}, {}, {}, {}
    for name, per_expert in params.experts.items():
        lay = params.layouts[name]
        ex = model.get_submodule(name)
        if lay.transposed or lay.interleaved or lay.form not in ("fused", "up_only"):
            raise ValueError(f"{name}: experts stored {'transposed' if lay.transposed else lay.form}"
                             f"{' interleaved' if lay.interleaved else ''} have no compressed-tensors export here "
                             "(their hub checkpoints use other formats); keep experts unquantized "
                             "(quantize.experts: null) or use format torchao")
        first = next(iter(per_expert.values()))
        scheme = next(iter(first.values())).scheme
        parts = [("gate", "up"), lay.gate_up] if lay.form == "fused" else [("up",), lay.up]
        for projs, stored in (parts, [("down",), lay.down]):
            key = f"{name}.{stored}"
            weights[key] = get_tensor(ex, stored).detach()
            scales[key] = torch.cat([_stack(per_expert, p, "scale") for p in projs], dim=1)
            zeros[key] = torch.cat([_stack(per_expert, p, "zero") for p in projs], dim=1)
            schemes[key] = scheme
    return weights, scales, zeros, schemes


def compressed_tensors(model, params: QuantizedParams, *, dtype: torch.dtype, conversion_model=None
                       ) -> tuple[dict, dict]:
    """({original-format weight key: {suffix: tensor}} of every quantized weight, {original key: scheme}).
    `conversion_model` (default `model`) is the PreTrainedModel whose conversion mapping names the keys (the
    skeleton's model when `model` is a one-layer view)."""
    from compressed_tensors.compressors import BaseCompressor
    from transformers.core_model_loading import revert_weight_conversion

    for klass, scheme in params.classes().items():
        check_scheme(scheme, klass)
    weights, scales, zeros, schemes = _fused_tensors(model, params)
    for name, q in params.linear.items():
        key = f"{name}.weight"
        weights[key] = model.get_submodule(name).weight.detach()
        scales[key], zeros[key], schemes[key] = q.scale, q.zero, q.scheme
    out, out_schemes = {}, {}
    conv = conversion_model if conversion_model is not None else model
    for key in weights:                                         # one reversal per tensor: names follow their own
        rw = revert_weight_conversion(conv, {key: weights[key]})
        rs = revert_weight_conversion(conv, {key: scales[key]})
        rz = revert_weight_conversion(conv, {key: zeros[key]})
        scheme = schemes[key]
        rows = (lambda r: -(-r // scheme.block[0])) if scheme.block else (lambda r: r)
        if set(rw) != set(rs) or any(rw[k].dim() != 2 or rs[k].shape[0] != rows(rw[k].shape[0]) for k in rw):
            raise ValueError(f"{key}: transformers' conversion does not split it into 2-D weights with one scale "
                             "row per output row; this family's experts have no compressed-tensors export here")
        compressor = BaseCompressor.get_value_from_registry(FORMAT[scheme.type])
        cts = ct_scheme(scheme, ["Linear"])
        for k in rw:
            zp = rz[k].to(torch.int8 if scheme.type == "int" else dtype)
            packed = compressor.compress({"weight": rw[k].float(), "weight_scale": rs[k].to(dtype),
                                          "weight_zero_point": zp}, cts)
            out[k] = {s: t.detach().cpu().contiguous() for s, t in packed.items()}
            out_schemes[k] = scheme
    return out, out_schemes


def _regex(names: list[str]) -> str:
    """One `re:` target matching every name, layer and expert indices generalised."""
    pats = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(n)) for n in names})
    return "re:^(" + "|".join(pats) + ")$" if len(pats) > 1 else "re:^" + pats[0] + "$"


def quantization_config(model, schemes_by_key: dict, kept_linear: list[str], klass_of: dict) -> dict:
    """config.json's `quantization_config` (module docstring)."""
    from compressed_tensors.quantization import QuantizationConfig
    distinct = list(dict.fromkeys(schemes_by_key.values()))
    if len(distinct) == 1:
        groups = {"group_0": ct_scheme(distinct[0], ["Linear"])}
        fmt = FORMAT[distinct[0].type]
    else:
        groups = {}
        for j, scheme in enumerate(distinct):
            names = [k.removesuffix(".weight") for k, s in schemes_by_key.items() if s == scheme]
            by_class: dict[str, list[str]] = {}
            for n in names:
                by_class.setdefault(klass_of.get(n, "experts"), []).append(n)
            ordered = sorted(by_class, key=lambda c: c != "experts")     # experts' regex first
            groups[f"group_{j}"] = ct_scheme(scheme, [_regex(by_class[c]) for c in ordered])
        fmt = "mixed-precision"
    qc = QuantizationConfig(config_groups=groups, format=fmt, ignore=sorted(kept_linear),
                            quantization_status="compressed")
    return {**qc.model_dump(mode="json"), "quant_method": "compressed-tensors"}


@dataclass
class ExportInfo:
    keys_compressed: int
    format: str
    checkpoint_bytes: int


def save_compressed(model, params: QuantizedParams, out: str | Path, *, dtype: torch.dtype, tokenizer=None
                    ) -> ExportInfo:
    """Write the compressed-tensors checkpoint of the quantized `model` into `out` (module docstring)."""
    from safetensors.torch import load_file, save_file
    from torch import nn

    from compressor.evaluate.size import checkpoint_bytes

    out = Path(out)
    check_experts_quantized(model, params)
    packed, schemes = compressed_tensors(model, params, dtype=dtype)
    state, seen = {}, set()
    for k, v in model.state_dict().items():            # tied weights (LM head = embeddings) are saved once
        if v.data_ptr() in seen and v.numel():
            continue
        seen.add(v.data_ptr())
        state[k] = v.to(dtype) if v.is_floating_point() else v
    model.save_pretrained(out, state_dict=state)
    replaced: dict[str, str] = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors = load_file(shard)
        mine = [k for k in tensors if k in packed]
        if not mine:
            continue
        for k in mine:
            del tensors[k]
            base = k.removesuffix("weight")
            for suffix, t in packed[k].items():
                tensors[base + suffix] = t
                replaced[base + suffix] = shard.name
        save_file(tensors, shard, metadata={"format": "pt"})
    missing = set(packed) - {k.rsplit(".", 1)[0] + ".weight" for k in replaced}
    if missing:
        raise RuntimeError(f"{len(missing)} quantized weights were not in the saved checkpoint (e.g. "
                           f"{sorted(missing)[0]}); the family's saved names differ from its conversion mapping")
    index = out / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        wm = {k: v for k, v in data["weight_map"].items() if k not in packed}
        data["weight_map"] = {**wm, **replaced}
        index.write_text(json.dumps(data, indent=2))
    klass_of = {n: q.klass for n, q in params.linear.items()}
    kept = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in params.linear]
    qcfg = quantization_config(model, schemes, kept, klass_of)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = qcfg
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return ExportInfo(keys_compressed=len(packed), format=qcfg["format"], checkpoint_bytes=checkpoint_bytes(out) or 0)


def is_compressed_tensors_checkpoint(path: str | Path) -> bool:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (cfg.get("quantization_config") or {}).get("quant_method") == "compressed-tensors"


def load_compressed(path: str | Path, *, dtype=None, plain: bool = True):
    """A compressed-tensors checkpoint through stock `from_pretrained` (dequantized to `dtype` on the CPU). With
    `plain` every module is then decompressed and stripped of its quantization state (scales, scheme, wrapped
    forward: compressed-tensors' `decompress_module(..., leave_decompressed=False)`), so the model holds exactly the
    dequantized weights as ordinary parameters and parameter counts are those of the architecture."""
    import transformers as tf
    from compressed_tensors.compressors import decompress_module
    from compressed_tensors.quantization import QuantizationMetadata, QuantizationStatus

    kw = {"dtype": dtype} if dtype is not None else {}
    model = tf.AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    if plain:
        for module in model.modules():
            if not hasattr(module, "quantization_scheme"):
                continue
            if getattr(module, "quantization_status", None) == QuantizationStatus.COMPRESSED:
                decompress_module(module, leave_decompressed=False)
            else:
                QuantizationMetadata.clear_quantization(module)
    return model
