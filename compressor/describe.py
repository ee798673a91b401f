"""A model's summary from config.json and the safetensors headers alone: no tensor data is read, nothing of the
model's size is allocated, so a 60 GB checkpoint opens in about a second and a few hundred megabytes.

Checks, in this order, each before anything larger is built (a refusal names the field and the tensor):
1. config.json's own numbers: positive integers (widths: or one per layer, as Hunyuan's) within generous bounds (layers <= 1,024, hidden <= 65,536,
   experts <= 4,096, vocab <= 4,194,304), top-k <= the expert count;
2. against the headers: decoder layers stored == `num_hidden_layers`, the embedding is [vocab_size, hidden_size];
3. structure: every stored tensor, as a meta tensor of its header's shape, goes through transformers' checkpoint
   conversion into the meta-device model that config.json builds; a missing, unexpected or differently shaped
   tensor is refused (so `num_experts_per_tok`, widths and expert counts that disagree with the tensors are found).
Then the summary is `inspect_model` of that meta model, and the fingerprint `quick_fingerprint`.

A quantized checkpoint (FP8, MXFP4, compressed-tensors; `compressor.formats`) is checked through its logical
(dequantized) tensors, and the summary says how it is stored: `quantization` {method, format, bits, block, ...}
(None for plain weights), `checkpoint_bytes` (on disk) and `dequantized_bytes` (its weights in the compute dtype,
what a layer-by-layer run holds per layer and an in-memory load in all). Next-n prediction layers stored beyond
`num_hidden_layers` (DeepSeek-V3's `model.layers.61`) are set aside and reported in `next_n_layers`.

    info = describe_checkpoint(Path("my-model"))      # {"family", "num_layers", "params_total", ...}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from compressor.stream.shards import ShardError, ShardIndex

LIMITS = {"num_hidden_layers": 1024, "hidden_size": 65536, "vocab_size": 4_194_304, "num_experts": 4096,
          "num_local_experts": 4096, "n_routed_experts": 4096, "moe_num_experts": 4096,
          "intermediate_size": 1_048_576, "moe_intermediate_size": 1_048_576, "num_attention_heads": 4096}
PER_LAYER_FIELDS = ("intermediate_size", "moe_intermediate_size")   # real configs may give one value per layer
TOP_K_FIELDS = ("num_experts_per_tok", "moe_k", "top_k")
EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16


class CheckpointError(ValueError):
    """config.json and the weights disagree, or a setting is impossible; the message names both sides."""


def check_config_numbers(config: dict) -> None:
    """Rule 1 of the module docstring (on the raw config.json dict, before transformers builds anything)."""
    cfg = {**config, **(config.get("text_config") or {})} if isinstance(config.get("text_config"), dict) else config
    for key, top in LIMITS.items():
        v = cfg.get(key)
        if v is None:
            continue
        values = v if isinstance(v, list) and v and key in PER_LAYER_FIELDS else [v]   # Hunyuan: one per layer
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= top for x in values):
            raise CheckpointError(f"config.json: {key} = {str(v)[:40]} is not a plausible value (a positive integer "
                                  f"up to {top:,}{', or a list of them, one per layer' if key in PER_LAYER_FIELDS else ''}"
                                  "); fix config.json or use the model's original one.")
    given = {f: cfg[f] for f in EXPERT_FIELDS if isinstance(cfg.get(f), int) and cfg[f] > 0}
    if len(set(given.values())) > 1:
        raise CheckpointError(f"config.json names the expert count twice with different values "
                              f"({', '.join(f'{k} = {v}' for k, v in given.items())}); keep one value.")
    experts = next(iter(given.values()), None)
    top_k = next((cfg[f] for f in TOP_K_FIELDS if isinstance(cfg.get(f), int)), None)
    if experts is not None and top_k is not None and not 0 < top_k <= experts:
        raise CheckpointError(f"config.json: the router picks top-{top_k} of {experts} experts; top-k must be between "
                              f"1 and the expert count. Fix num_experts_per_tok.")


def check_against_headers(config: dict, index: ShardIndex) -> None:
    """Rule 2 of the module docstring."""
    cfg = {**config, **(config.get("text_config") or {})} if isinstance(config.get("text_config"), dict) else config
    layers = cfg.get("num_hidden_layers")
    stored = index.num_layers()
    if isinstance(layers, int) and stored and layers != stored:
        raise CheckpointError(f"config.json says num_hidden_layers = {layers}, but the weights hold {stored} decoder "
                              f"layers (model.layers.0 .. model.layers.{stored - 1}); the config is not this model's.")
    embed = next((n for n in index.tensors if n.endswith("embed_tokens.weight")), None)
    if embed is not None:
        rows, cols = (index.shape(embed) + (None, None))[:2]
        for key, want in (("vocab_size", rows), ("hidden_size", cols)):
            if isinstance(cfg.get(key), int) and cfg[key] != want:
                raise CheckpointError(f"config.json says {key} = {cfg[key]}, but {embed} is "
                                      f"{list(index.shape(embed))} in {index.info(embed).file}; the config is not "
                                      "this model's.")


def check_structure_against_headers(skeleton) -> None:
    """Rule 3 of the module docstring: the stored shapes through the conversion into the meta model."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig

    from compressor.stream.skeleton import _quiet_loading

    index, model = skeleton.index, skeleton.model
    meta = {n: torch.empty(t.shape, dtype=t.dtype, device="meta") for n, t in index.tensors.items()}
    cfg = LoadStateDictConfig(dtype=skeleton.dtype, weight_mapping=get_model_conversion_mapping(model),
                              device_map={"": "meta"}, dtype_plan=model._get_dtype_plan(skeleton.dtype))
    with _quiet_loading():
        info = convert_and_load_state_dict_in_model(model, meta, cfg)[0]
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()                  # the conversion replaced the embedding; the head follows it again
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(set(info.missing_keys) - tied)
    problems = [f"{k[0] if isinstance(k, tuple) else k}: stored shape differs from what config.json builds"
                for k in sorted(info.mismatched_keys, key=str)[:3]]
    problems += [f"{k}: built by config.json, not in the weights" for k in missing[:3]]
    problems += [f"{k}: in the weights, not built by config.json" for k in sorted(info.unexpected_keys)[:3]]
    problems += [f"{k}: {v}" for k, v in list(info.conversion_errors.items())[:2]]
    if problems:
        more = len(info.mismatched_keys) + len(missing) + len(info.unexpected_keys) - len(problems)
        raise CheckpointError("config.json does not describe these weights: " + "; ".join(problems)
                              + (f" (+{more} more)" if more > 0 else "")
                              + ". Use the config.json that came with the weights.")


def describe_checkpoint(folder: Path | str, *, dtype: torch.dtype | None = None) -> dict:
    """Summary (as `inspect_model`, plus tie_word_embeddings, checkpoint_bytes, fingerprint) of a safetensors folder,
    after the checks of the module docstring. Raises CheckpointError, ShardError or UnsupportedModelError."""
    from transformers import AutoConfig

    from compressor.inspect import inspect_model
    from compressor.stream.skeleton import Skeleton

    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"config.json: not readable JSON ({type(e).__name__})") from e
    if not isinstance(raw, dict):
        raise CheckpointError("config.json: expected a JSON object")
    check_config_numbers(raw)
    index = ShardIndex.open(folder)
    check_against_headers(raw, index)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"config.json: transformers cannot read it ({type(e).__name__}: {str(e)[:200]})") from e
    skeleton = Skeleton.open(folder, index=index, config=config, dtype=dtype)
    check_structure_against_headers(skeleton)
    summary = inspect_model(skeleton.model)
    verify_first_moe_layer(skeleton, summary["moe_layers"][0])
    summary["tie_word_embeddings"] = bool(getattr(config, "tie_word_embeddings", False))
    summary["checkpoint_bytes"] = sum((folder / f).stat().st_size for f in index.files())
    summary["quantization"] = index.quantization.to_dict() if index.quantization is not None else None
    summary["dequantized_bytes"] = index.bytes_of(index.tensors)
    summary["next_n_layers"] = next_n_note(raw, index)
    summary["fingerprint"] = quick_fingerprint(folder, index)
    return summary


def next_n_note(config: dict, index: ShardIndex) -> dict | None:
    """{"layers", "bytes", "note"} for the multi-token-prediction layers the index set aside (DeepSeek-V3's
    `model.layers.61.*` beside num_hidden_layers = 61), else None."""
    layers = index.skipped_layers()
    if not layers:
        return None
    names = ", ".join(f"model.layers.{i}" for i in layers)
    return {"layers": layers, "bytes": sum(t.nbytes for t in index.skipped.values()),
            "note": f"{names}: multi-token-prediction weights (config.json's num_nextn_predict_layers), not part of "
                    "the causal LM transformers builds; they are not read, scored, slimmed or written, so the "
                    "output has no next-n prediction layer (speculative decoding with it is not available)."}


def verify_first_moe_layer(skeleton, layer: int) -> None:
    """Load one MoE layer (one layer's memory) and check that the discovered expert views reproduce its experts
    module (`FamilyAdapter.verify`); the layer goes back to the meta device afterwards."""
    from compressor.families import resolve_adapter
    from compressor.families.catalog import STREAM_UNSUPPORTED
    if skeleton.config.model_type in STREAM_UNSUPPORTED:
        return                      # its shards are not read per layer; inspect_model verifies once it is loaded
    skeleton.load_layer_(layer)
    try:
        view = skeleton.layer_view(layer)
        resolve_adapter(view).verify(view)
    finally:
        skeleton.release_layer_(layer)


def quick_fingerprint(folder: Path, index: ShardIndex) -> str:
    """sha256("moe-studio/quick/v1" NUL, then per shard file in name order: name NUL size NUL header bytes NUL and
    16 blocks of 64 KiB at evenly spaced offsets). Reads about 1 MiB per shard whatever its size: a cheap identity
    for a checkpoint (any re-save, re-shard or edit of a header changes it), not a proof that no byte changed;
    score caches keep using the full `weights_fingerprint`."""
    h = hashlib.sha256(b"moe-studio/quick/v1\0")
    for name in index.files():
        path = folder / name
        size = path.stat().st_size
        h.update(f"{name}\0{size}\0".encode())
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            f.seek(0)
            h.update(f.read(8 + min(n, 100 << 20)))
            for k in range(_SAMPLES):
                f.seek(size * k // _SAMPLES)
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def describe_source(text: str) -> dict:
    """Resolve a source string (demo, folder, archive, hub id) and describe it: {"source", "kind", "local_dir",
    "summary"}. Safetensors only (no pickle, no remote code): this is what the studio runs on untrusted input, in
    a memory-capped child (`compressor.isolate`)."""
    from compressor.sources import parse_source, resolve_local

    src = parse_source(text)
    found = resolve_local(src)
    summary = describe_checkpoint(found.local_dir)
    return {"source": str(found.source), "kind": src.kind, "local_dir": str(found.local_dir), "summary": summary}
