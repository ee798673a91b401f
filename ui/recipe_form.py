"""The Compress form and recipes, both ways: a recipe (a run's, or pasted / uploaded YAML) into the form's controls,
what the form cannot hold of it, and the wall time a recipe should take on this machine (from earlier runs of the
model). Used by ui/compress.py; no Gradio components are built here.

    values = form_values(recipe, summary)               # one value per CompressTab.controls entry
    sections = form(model, *values)                     # the recipe of the form (all but `model`)
    seconds, basis = expected_seconds(recipe.to_dict(), services.model_runs(recipe.model))
"""
from __future__ import annotations

import copy
from pathlib import Path

from compressor.methods import EXPERT_MERGES
from compressor.recipe import Recipe
from ui.common import fmt_duration
from ui.run_table import expected_seconds, flat

DEFAULTS = Recipe()
MAX_YAML_BYTES = 256 * 1024
# The Compress tab's quantize choices: label -> the recipe's quantize section (compressed-tensors unless torchao).
QUANTIZE_PRESETS = {
    "none": None,
    "GPTQ W4A16": {"scheme": "W4A16", "method": "gptq"},
    "GPTQ experts W4A16 / attention W8A16": {"scheme": "W4A16", "attention": "W8A16", "method": "gptq"},
    "GPTQ W8A16": {"scheme": "W8A16", "method": "gptq"},
    "RTN W4A16": {"scheme": "W4A16", "method": "rtn"},
    "RTN W8A16": {"scheme": "W8A16", "method": "rtn"},
    "RTN FP8": {"scheme": "FP8", "method": "rtn"},
    "W8A16 torchao (RTN)": {"scheme": "W8A16", "method": "rtn", "format": "torchao"},
    "FP8 torchao (RTN)": {"scheme": "FP8", "method": "rtn", "format": "torchao"},
}


# What happens to the experts not kept (slimming.expert_merge; PRUNE = null: dropped by the expert score)
PRUNE = "prune"
MERGE_CHOICES = [("prune by the expert score", PRUNE)] + [(f"merge: {m.label}", name)
                                                          for name, m in EXPERT_MERGES.items()]
# execution.streaming, in words (compressor.engine.residency)
RESIDENCY_CHOICES = [("auto (from the model's size and this machine's memory)", "auto"),
                     ("in memory (the whole model)", "off"), ("layer by layer (one decoder layer at a time)", "on")]
RESIDENCY_WORDS = {"auto": "auto", "off": "in memory", "on": "layer by layer"}


def quantize_section(choice: str | None) -> dict | None:
    """The recipe's quantize section of a Compress-tab choice (a label of QUANTIZE_PRESETS; a bare scheme name such
    as W8A16 means GPTQ with that scheme)."""
    if choice in (None, "none"):
        return None
    if choice in QUANTIZE_PRESETS:
        return dict(QUANTIZE_PRESETS[choice])
    return {"scheme": choice}


def quantize_choice(recipe: Recipe) -> str:
    """The Compress-tab label of a recipe's quantize section; "none" when no preset holds it (the form then lists
    its fields as not held)."""
    if recipe.quantize is None:
        return "none"
    from compressor.recipe import QuantizeConfig
    for label, section in QUANTIZE_PRESETS.items():
        if section is not None and QuantizeConfig.model_validate(section) == recipe.quantize:
            return label
    return "none"


def form_values(recipe: Recipe, summary: dict | None) -> list:
    """The form's control values for `recipe`, in the order of `CompressTab.controls` (and of `compress.form`):
    experts_keep null shows as all the model's experts, a null last-stage share (version-1 recipes) as the
    default share."""
    s, d, c, e = recipe.slimming, recipe.distill, recipe.calibration, recipe.evaluate
    n_experts = (summary or {}).get("num_experts")
    n_experts = max(n_experts) if isinstance(n_experts, list) else n_experts
    experts_keep = s.experts_keep if s.experts_keep is not None else (n_experts or 8)
    share = d.final_stage_share if d.final_stage_share is not None else DEFAULTS.distill.final_stage_share
    kept = recipe.to_dict()
    kept.pop("model", None)
    return [s.expert_keep_ratio, s.neuron_score, experts_keep, s.expert_score, s.layers_drop, s.sparsity,
            s.sparsity_allocation, recipe.stages, d.steps, share, d.temperature, d.loss, d.lr, d.ce_weight,
            c.tokens, c.seq_len, e.tokens, e.perplexity, e.speed, recipe.seed, list(e.lm_eval.tasks),
            quantize_choice(recipe), s.expert_merge or PRUNE, s.merge_group_size, recipe.execution.streaming,
            d.blockwise_steps, kept]


def _overlay(base: dict, top: dict) -> dict:
    """`base` with every leaf of `top` written over it (nested dicts merged, anything else replaced)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def form(model: dict, keep_ratio, neuron_score, experts_keep, expert_score, layers_drop, sparsity, allocation,
         stages, steps, final_share, temperature, loss, lr, ce_weight, calib_tokens, calib_seq, eval_tokens,
         perplexity, speed, seed, lm_eval_tasks=(), quantize="none", expert_merge=PRUNE,
         merge_group_size=None, streaming="auto", blockwise_steps=0, kept=None) -> dict:
    """The recipe sections of the form (everything but `model`), over `kept`: the loaded recipe's fields that no
    control holds (device, batch sizes, ...), so loading a recipe keeps them. experts_keep == E means no pruning
    (null); expert_merge PRUNE means null."""
    n_experts = int((model or {}).get("summary", {}).get("num_experts") or 0)
    keep_e = None if experts_keep is None or int(experts_keep) >= n_experts else int(experts_keep)
    group = DEFAULTS.slimming.merge_group_size if merge_group_size in (None, "") else int(merge_group_size)
    sections = {
        "calibration": {"tokens": int(calib_tokens), "seq_len": int(calib_seq)},
        "slimming": {"expert_keep_ratio": float(keep_ratio), "neuron_score": neuron_score, "experts_keep": keep_e,
                     "expert_score": expert_score, "layers_drop": int(layers_drop), "sparsity": float(sparsity),
                     "sparsity_allocation": allocation,
                     "expert_merge": None if expert_merge in (None, "", PRUNE) else expert_merge,
                     "merge_group_size": group},
        "stages": int(stages),
        "distill": {"steps": int(steps), "final_stage_share": float(final_share), "lr": float(lr),
                    "temperature": float(temperature), "loss": loss, "ce_weight": float(ce_weight),
                    "blockwise_steps": int(blockwise_steps or 0)},
        "evaluate": {"perplexity": bool(perplexity), "speed": bool(speed), "tokens": int(eval_tokens),
                     "lm_eval": {"tasks": list(lm_eval_tasks or [])}},
        "quantize": quantize_section(quantize),
        "execution": {"streaming": streaming or "auto"},
        "seed": int(seed),
    }
    return _overlay({k: v for k, v in (kept or {}).items() if k not in ("model", "version")}, sections)


def not_in_form(recipe: Recipe, rebuilt: Recipe) -> list[str]:
    """Fields of `recipe` that differ in `rebuilt` (the recipe the form makes of it), as "field: value" lines;
    `model` is left out (the form runs on the model open in tab 1)."""
    a, b = flat(recipe.to_dict()), flat(rebuilt.to_dict())
    return [f"{k}: {a.get(k)!r}" for k in a if k != "model" and a.get(k) != b.get(k)]


def residency_text(streaming: str, chosen: tuple[bool, str], auto: tuple[bool, str]) -> str:
    """What the residency choice means for this model: the driver the run gets and why, and what `auto` picks."""
    where = {True: "layer by layer", False: "in memory"}
    if streaming == "auto":
        return f"auto picks {where[auto[0]]} for this model: {auto[1]}."
    return (f"{RESIDENCY_WORDS.get(streaming, streaming)} (chosen). auto would pick {where[auto[0]]} for this "
            f"model: {auto[1]}.")


def parse_yaml(text: str | None, file_path: str | None) -> Recipe:
    """A recipe from pasted YAML or an uploaded .yaml / .yml file (the file wins when both are given); raises
    RecipeError naming every bad field, ValueError for an empty, oversized or non-YAML file."""
    if file_path:
        path = Path(file_path)
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise ValueError(f"{path.name[:80]}: upload a .yaml or .yml recipe")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ValueError(f"{path.name[:80]} is larger than {MAX_YAML_BYTES // 1024} KB; a recipe is a few lines")
        text = path.read_text(errors="replace")
    if not (text or "").strip():
        raise ValueError("paste a recipe (YAML) or upload a .yaml file first")
    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:   # the same cap for pasted text as for files
        raise ValueError(f"the pasted recipe is larger than {MAX_YAML_BYTES // 1024} KB; a recipe is a few lines")
    return Recipe.from_yaml(text)


def cost_text(recipe: dict, earlier_runs) -> str:
    """One line: the expected wall time of `recipe` on this machine and what it rests on, or why there is none."""
    seconds, basis = expected_seconds(recipe, earlier_runs)
    if seconds is None:
        return f"Expected wall time: {basis}."
    return f"Expected wall time ≈ {fmt_duration(seconds)} ({basis})."
