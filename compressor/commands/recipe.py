"""`python -m compressor recipe`: print the example recipe, or validate a recipe file.

    python -m compressor recipe --example > recipe.yaml      # every field at its default, neurons slimmed to 50%
    python -m compressor recipe validate recipe.yaml         # prints the normalised recipe, or what is wrong
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "recipe"
HELP = "print the example recipe (--example) or validate a recipe file (validate FILE)"

HEADER = """\
# MoE Compression Studio recipe (version {version}). Run it with:
#   python -m compressor run recipe.yaml --out runs/first
# model: demo | a Hugging Face folder | a .zip/.tar.gz of one | a hub id
# slimming.expert_keep_ratio: share of neurons every expert keeps (SlimMoE; 1.0 = off)
# slimming.experts_keep: experts kept per MoE layer (null = all); layers_drop; sparsity (unstructured Wanda)
# This example keeps every default except expert_keep_ratio (default 1.0 = no slimming), set to 0.5 here.
# stages: the target is reached in this many geometric steps, each scored, slimmed, distilled and evaluated
# distill.steps: optimizer steps over all stages (0 = no distillation); loss: forward_kl | reverse_kl | jsd
# distill.final_stage_share: the last stage's share of the steps (0.8: 300 steps in 3 stages -> 30, 30, 240)
# quantize (null = off): e.g. {{scheme: W4A16, method: gptq, attention: W8A16, group_size: 64}} writes the
#   checkpoint in the compressed-tensors format vLLM serves (docs/quantization.md); schemes W4A16 | W8A16 | FP8 |
#   FP8_BLOCK, per class: experts, shared_experts, attention, dense_mlp (a scheme or keep)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("validate", "example"), help="validate FILE, or example")
    parser.add_argument("file", nargs="?", type=Path, help="recipe file to validate (YAML or JSON)")
    parser.add_argument("--example", action="store_true",
                        help="print the example recipe as YAML: the defaults with expert_keep_ratio 0.5")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def example_recipe():
    """The recipe of the issue: every default, with neurons slimmed to half in 3 stages."""
    from compressor.recipe import Recipe
    return Recipe.parse({"slimming": {"expert_keep_ratio": 0.5}})


def run(args: argparse.Namespace) -> int:
    from compressor.recipe import RECIPE_VERSION, Recipe, RecipeError

    if args.example or args.action == "example":
        recipe = example_recipe()
        text = json.dumps(recipe.to_dict(), indent=2) + "\n" if args.json else \
            HEADER.format(version=RECIPE_VERSION) + recipe.to_yaml()
        sys.stdout.write(text)
        return 0
    if args.action != "validate" or args.file is None:
        sys.stderr.write("usage: python -m compressor recipe --example | recipe validate FILE\n")
        return 2
    if not args.file.is_file():
        raise FileNotFoundError(f"recipe file not found: {args.file}")
    try:
        recipe = Recipe.load(args.file)
    except RecipeError as exc:
        sys.stderr.write(f"{args.file}: {exc}\n")
        return 1
    problems = _model_problems(recipe)
    if problems:
        sys.stderr.write(f"{args.file}: {recipe.model} cannot take this slimming: " + "; ".join(problems) + "\n")
        return 1
    sys.stdout.write(json.dumps(recipe.to_dict(), indent=2) + "\n" if args.json else recipe.to_yaml())
    sys.stderr.write(f"{args.file}: valid recipe (version {recipe.version})\n")
    return 0


def _model_problems(recipe) -> list[str]:
    """The feasibility rules (compressor/feasibility.py) on the recipe's model, when it is the demo or a local
    folder (an archive or a hub id is checked when the run starts)."""
    from compressor.feasibility import ModelLimits, slimming_problems
    from compressor.sources import parse_source, resolve_local
    if recipe.slimming.is_identity or parse_source(recipe.model).kind not in ("demo", "directory"):
        return []
    config = resolve_local(recipe.model).local_dir / "config.json"
    if not config.is_file():
        return [f"{config} is missing"]
    return slimming_problems(ModelLimits.from_config(json.loads(config.read_text())), recipe.slimming,
                             stages=recipe.stages)
