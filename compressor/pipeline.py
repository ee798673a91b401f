"""The whole job, whichever engine runs it: check the recipe, open the checkpoint once, decide once whether it runs
in memory or layer by layer, refuse what that driver cannot do before any work, then run the driver.

    result = run_recipe(Recipe.load("recipe.yaml"), "out/run1", on_progress=print)
    result.metrics["perplexity"], result.checkpoint_dir      # out/run1/checkpoint (HF folder + README.md)
    result.metrics["execution"]["residency"]                 # "in memory" | "layer by layer", and why

Drivers (`compressor.engine`): `in_memory` (load in float32, stages of score -> slim -> distil -> evaluate, export
in the source dtype, quantize, evaluate the exported weights) and `layered` (score, cut and evaluate one decoder layer
at a time). The choice is `Checkpoint.plan` (`compressor.engine.residency`: the recipe's `execution.streaming`, the
model's size and the machine's total memory), made here and recorded in the result.

Files: `out_dir/checkpoint/` (safetensors + config + tokenizer + README.md model card with the recipe and metrics),
`out_dir/recipe.yaml`, `out_dir/metrics.json`. Everything is written under `out_dir/.partial/` first and moved into
place at the end; on `Cancelled` (or any error) the partial folder is removed, and so is `out_dir` if this run
created it and it is empty, before the exception propagates.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as hf_logging

from compressor.device import resolve_device
from compressor.engine import in_memory, layered
from compressor.engine.checkpoint import Checkpoint
from compressor.engine.outputs import OUTPUTS, PipelineResult
from compressor.evaluate.harness import check_lm_eval
from compressor.evaluate.tasks import check_tasks
from compressor.feasibility import ModelLimits, check_slimming
from compressor.progress import CancelFn, ProgressFn, Reporter
from compressor.quantize import check_group_sizes, check_quantize
from compressor.recipe import Recipe

PARTIAL = ".partial"
__all__ = ["PipelineResult", "check_feasible", "run_recipe"]


@contextmanager
def _no_hf_bars():
    """transformers draws its own progress bars when loading and saving; the library never prints, so hide them."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def run_recipe(recipe: Recipe, out_dir: str | Path, *, on_progress: ProgressFn | None = None,
               should_cancel: CancelFn | None = None) -> PipelineResult:
    """Run `recipe` and write its outputs into `out_dir` (see the module docstring). Raises `Cancelled` when
    `should_cancel()` turns True, leaving no partial files; outputs of an earlier run in `out_dir` are replaced
    only when this run succeeds."""
    out_dir = Path(out_dir)
    check_tasks(recipe.evaluate.tasks)
    check_lm_eval(recipe.evaluate.lm_eval)
    check_quantize(recipe.quantize)
    resolve_device(recipe.execution.device)                   # a device this machine lacks is refused first
    ckpt = Checkpoint.open(recipe.model)
    check_feasible(recipe, ckpt.config)
    plan = ckpt.plan(recipe)
    driver = layered if plan.streaming else in_memory
    if driver is layered:
        layered.check(recipe, ckpt, plan)
    created = not out_dir.exists()
    staging = out_dir / PARTIAL
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with _no_hf_bars():
            result = driver.run(recipe, ckpt, plan, staging, Reporter(on_progress, should_cancel))
        for name in OUTPUTS:                                   # move into place only once everything succeeded
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    result.checkpoint_dir = out_dir / "checkpoint"
    return result


def check_feasible(recipe: Recipe, config: dict) -> None:
    """The feasibility rules (`compressor.feasibility`) on the model's config.json, before any weight is read."""
    if recipe.slimming.is_identity and recipe.quantize is None:
        return
    check_group_sizes(recipe.quantize, config, expert_keep_ratio=recipe.slimming.expert_keep_ratio)
    if recipe.slimming.is_identity:
        return
    check_slimming(ModelLimits.from_config(config), recipe.slimming, stages=recipe.stages)
