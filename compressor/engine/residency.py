"""Where a job's model lives, in memory or layer by layer: one torch-free rule on the model's size, the recipe and
the machine's total memory, used by the pipeline, the CLI commands, scoring and the Compress tab's estimate.

    in-memory need = model bytes (float32) x factor      factor: `DISTILL_FACTOR` (5: student, teacher, gradients,
                                                          two AdamW moments) with global distillation, else
                                                          `IN_MEMORY_FACTOR` (2: a cut copy beside the model)
    memory         = `MOE_STUDIO_MEMORY` ("16gb") when set, else the machine's total memory (psutil)
    off  -> in memory (block-wise recovery, which is layer-local, is refused)
    on   -> layer by layer
    auto -> layer by layer when the in-memory need passes half of `memory`, or when the recipe asks for block-wise
            recovery (`distill.blockwise_steps`); else in memory

Total memory, not what is free at the moment: the same recipe on the same machine always runs the same way (a
machine's free memory moved from 12.7 to 17.9 GB within minutes while the studio ran). What a layer-by-layer run
cannot do is refused here too, before any work, naming the field to change (`layered_problems`).

    decide_residency("auto", model_bytes=8e9, factor=2.0, blockwise=False, memory=15e9)   # (True, "the model ...")
    residency_of_recipe(recipe, params=30e9)                                             # the estimate's view
"""
from __future__ import annotations

import os

MODES = ("auto", "on", "off")
IN_MEMORY_FACTOR = 2.0
DISTILL_FACTOR = 5.0
LAYER_FACTOR = 3.0          # the loaded layer, its cut copy, the copy written
MEMORY_ENV = "MOE_STUDIO_MEMORY"
BLOCKWISE_REASON = "distill.blockwise_steps asks for layer-local recovery"


def machine_memory(env: dict | None = None) -> int:
    """Bytes a job may plan for: `MOE_STUDIO_MEMORY` when set, else the machine's total memory."""
    env = os.environ if env is None else env
    raw = env.get(MEMORY_ENV, "").strip()
    if raw:
        from compressor.studio_cache import parse_size
        return parse_size(raw, name=MEMORY_ENV)
    import psutil
    return int(psutil.virtual_memory().total)


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def in_memory_factor(recipe) -> float:
    return DISTILL_FACTOR if recipe.distill.steps else IN_MEMORY_FACTOR


def decide_residency(mode: str, *, model_bytes: float, factor: float, blockwise: bool,
                     memory: int | None = None) -> tuple[bool, str]:
    """(layer by layer?, why), by the rule of the module docstring."""
    if mode not in MODES:
        raise ValueError(f"streaming must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        if blockwise:
            raise ValueError("distill.blockwise_steps is layer-local recovery, which runs layer by layer: set "
                             "execution.streaming to on (or auto), or use distill.steps for global distillation")
        return False, "streaming off (asked)"
    if mode == "on":
        return True, "streaming on (asked)"
    memory = machine_memory() if memory is None else memory
    need = model_bytes * factor
    if need > memory / 2:
        return True, (f"the model needs about {gb(need)} in memory, more than half of this machine's "
                      f"{gb(memory)}: layer by layer")
    if blockwise:
        return True, BLOCKWISE_REASON
    return False, f"the model fits comfortably ({gb(need)} of this machine's {gb(memory)})"


def residency_of_recipe(recipe, *, params: float, memory: int | None = None) -> tuple[bool, str]:
    """`decide_residency` for `recipe` on a model of `params` parameters, loaded in float32 as the pipeline loads."""
    return decide_residency(recipe.execution.streaming, model_bytes=params * 4, factor=in_memory_factor(recipe),
                            blockwise=bool(recipe.distill.blockwise_steps), memory=memory)


def layered_problems(recipe) -> list[str]:
    """What a layer-by-layer run of `recipe` cannot do, each with the field to change."""
    problems = []
    if recipe.distill.steps > 0:
        problems.append(f"distill.steps is {recipe.distill.steps} (global distillation holds the whole model, its "
                        "teacher and their gradients): set it to 0 (distill.blockwise_steps recovers layer by layer)")
    if recipe.stages > 1:
        problems.append(f"stages is {recipe.stages} (stages distil in between): set it to 1")
    if recipe.evaluate.tasks:
        problems.append("evaluate.tasks need the whole model: remove them")
    if recipe.evaluate.lm_eval.tasks:
        problems.append("evaluate.lm_eval.tasks run the whole model (lm-eval's HFLM or vLLM): remove them, and run "
                        "`python -m compressor eval CHECKPOINT --lm-eval ...` on a machine where it fits")
    if recipe.quantize is not None:
        problems.append("quantize is evaluated on the reloaded quantized model, which the layer-by-layer engine cannot "
                        "read yet: set it to null, then quantize the run's checkpoint layer by layer with `python -m "
                        "compressor quantize CHECKPOINT --streaming on --out DIR` (GPTQ or RTN, compressed-tensors)")
    if recipe.slimming.is_identity:
        problems.append("slimming cuts nothing")
    return problems


def check_layered(recipe, reason: str) -> None:
    """Refuse what a layer-by-layer run cannot do, naming the fields to change."""
    problems = layered_problems(recipe)
    if problems:
        raise ValueError(f"{recipe.model} runs layer by layer ({reason}), so: " + "; ".join(problems)
                         + ". Or set execution.streaming: off on a machine where the model fits.")
