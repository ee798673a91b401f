"""The Compress form and recipes, both ways: a recipe (a run's, or pasted / uploaded YAML) into the form's controls,
what the form cannot hold of it, and the wall time a recipe should take on this machine (from earlier runs of the
model). Used by ui/compress.py; no Gradio components are built here.

    values, dropped = form_values(recipe, summary)      # one value per CompressTab.controls entry
    seconds, basis = expected_seconds(recipe.to_dict(), services.model_runs(recipe.model))
"""
from __future__ import annotations

from pathlib import Path

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
    return [s.expert_keep_ratio, s.neuron_score, experts_keep, s.expert_score, s.layers_drop, s.sparsity,
            s.sparsity_allocation, recipe.stages, d.steps, share, d.temperature, d.loss, d.lr, d.ce_weight,
            c.tokens, c.seq_len, e.tokens, e.perplexity, e.speed, recipe.seed, list(e.lm_eval.tasks),
            quantize_choice(recipe)]


def not_in_form(recipe: Recipe, rebuilt: Recipe) -> list[str]:
    """Fields of `recipe` the form does not hold (they come back as the defaults in `rebuilt`, the recipe the form
    makes), as "field: value" lines; `model` is left out (the form runs on the model open in tab 1)."""
    a, b = flat(recipe.to_dict()), flat(rebuilt.to_dict())
    return [f"{k}: {a.get(k)!r}" for k in a if k != "model" and a.get(k) != b.get(k)]


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
