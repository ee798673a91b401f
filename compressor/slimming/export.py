"""Save a slimmed model as a Hugging Face folder that stock `AutoModelForCausalLM.from_pretrained` loads, and prove it.

`save_checkpoint` checks that the config still rebuilds the model (`check_structure`), writes safetensors with the
hub's per-expert key layout (`save_original_format=True`, what transformers 4.x and other runtimes read), writes every
alias of the expert count into config.json (e.g. Qwen3 `num_experts` and `num_local_experts`), the tokenizer and a
model card. `verify_reload` reloads with no remote code and no `ignore_mismatched_sizes`, refuses missing /
unexpected / mismatched keys, and compares logits.

    nbytes = save_checkpoint(model, tokenizer, "out/checkpoint", extra_card={"recipe": "slim 50%"})
    verify_reload("out/checkpoint", model, tiny_inputs(), experts_implementation="eager")   # max |dlogits|
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from compressor.families import resolve_adapter
from compressor.inspect import inspect_model
from compressor.slimming.structure import check_structure

WEIGHT_GLOBS = ("*.safetensors", "model.safetensors.index.json")


class ReloadMismatchError(RuntimeError):
    """The saved checkpoint does not reload into the same model."""


def stored_numel(folder: str | Path) -> int:
    """Number of values stored over every *.safetensors file of `folder` (read from the headers)."""
    from safetensors import safe_open
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def expert_count_aliases(config) -> list[str]:
    """Every config key that names the routed-expert count: the family's fields and their `attribute_map` aliases."""
    fields = set(resolve_adapter(config).count_fields)
    amap = dict(getattr(type(config), "attribute_map", {}) or {})
    aliases = set(fields)
    for alias, target in amap.items():
        if target in fields or alias in fields:
            aliases.update((alias, target))
    return sorted(aliases)


def _write_aliases(out: Path, config) -> None:
    path = out / "config.json"
    data = json.loads(path.read_text())
    n = resolve_adapter(config).num_experts(config)
    for key in expert_count_aliases(config):
        data[key] = n
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def model_card(model: nn.Module, extra_card: str | dict | None = None, *, dtype: str | None = None) -> str:
    """README.md text: what the model is (inspect summary) plus the caller's notes (text, or a dict shown as JSON).
    `dtype` names the saved weights' dtype when the model in memory differs (the pipeline works in float32 and
    saves in the checkpoint's dtype)."""
    info = inspect_model(model)
    if dtype is not None:
        info["dtype"] = dtype
    lines = ["---", "library_name: transformers", "tags: [moe, compressed, moe-compression-studio]", "---", "",
             f"# Compressed {info['family']} mixture-of-experts model", "",
             "Made with MoE Compression Studio. Loads with stock `AutoModelForCausalLM.from_pretrained` "
             "(no remote code).", "", "```json", json.dumps(info, indent=2), "```", ""]
    if isinstance(extra_card, dict):
        lines += ["## Compression", "", "```json", json.dumps(extra_card, indent=2, default=str), "```", ""]
    elif extra_card:
        lines += [str(extra_card).rstrip(), ""]
    return "\n".join(lines)


def save_checkpoint(model: nn.Module, tokenizer, out_dir: str | Path, *, extra_card: str | dict | None = None,
                    overwrite: bool = False, save_original_format: bool = True) -> int:
    """Write `model` (+ `tokenizer` when not None, + README.md) to `out_dir`; return the folder's size in bytes.

    A folder that already holds weights is refused unless `overwrite`, which first deletes the old weight files so
    no stale shard survives."""
    out = Path(out_dir)
    check_structure(model)
    old = [p for g in WEIGHT_GLOBS for p in out.glob(g)] if out.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds a checkpoint ({old[0].name}); choose an empty folder or pass "
                              "overwrite=True")
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, save_original_format=save_original_format)
    _write_aliases(out, model.config)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(model, extra_card))
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def verify_reload(out_dir: str | Path, model: nn.Module, inputs: torch.Tensor, *,
                  experts_implementation: str | None = None, atol: float = 1e-5) -> float:
    """Reload `out_dir` with stock transformers and return max |logits(reloaded) - logits(model)| on `inputs` [B, S],
    both run with expert kernel `experts_implementation` (eager, grouped_mm, ...; None = each model's current one).

    Raises `ReloadMismatchError` on missing, unexpected or mismatched keys, or when the difference exceeds `atol`."""
    kw = {"experts_implementation": experts_implementation} if experts_implementation else {}
    reloaded, info = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=_dtype(model), trust_remote_code=False,
                                                          output_loading_info=True, **kw)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ReloadMismatchError(f"{out_dir} does not reload cleanly: {problems}")
    reloaded.eval()
    dev = next(model.parameters()).device
    reloaded.to(dev)
    ids = inputs.to(dev)
    got = reloaded(input_ids=ids, use_cache=False).logits.float()
    previous = getattr(model.config, "_experts_implementation", None)
    try:
        if experts_implementation and previous != experts_implementation:
            model.set_experts_implementation(experts_implementation)      # same kernel on both sides
        want = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        if experts_implementation and previous and previous != experts_implementation:
            model.set_experts_implementation(previous)
    diff = (want - got).abs().max().item()
    if not diff <= atol:
        raise ReloadMismatchError(f"reloaded logits differ from the in-memory model by {diff:.3g} (> {atol})")
    return diff
