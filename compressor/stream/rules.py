"""When a job runs layer by layer, and what such a run refuses: plain arithmetic on the model's size and the recipe,
without torch, so the web page can warn before a run is queued.

    mode_streams(params=30e9, recipe=recipe)     # (True, "the model needs about 224 GB in memory, ...")
    streaming_problems(recipe)                   # ["distill.steps is 150 (...): set it to 0 (...)", ...]
"""
from __future__ import annotations

import os

MODES = ("auto", "on", "off")
IN_MEMORY_FACTOR = 2.0      # a cut copy beside the model
DISTILL_FACTOR = 5.0        # teacher, student, gradients and AdamW state
LAYER_FACTOR = 3.0


def memory_available() -> int:
    """Bytes a job may use: MOE_STUDIO_MEMORY when set, else the machine's available memory."""
    raw = os.environ.get("MOE_STUDIO_MEMORY")
    if raw:
        from compressor.studio_cache import parse_size
        return parse_size(raw, name="MOE_STUDIO_MEMORY")
    import psutil
    return int(psutil.virtual_memory().available)


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def in_memory_factor(recipe) -> float:
    return DISTILL_FACTOR if recipe.distill.steps else IN_MEMORY_FACTOR


def mode_streams(*, params: float, recipe, available: int | None = None) -> tuple[bool, str]:
    """(layer by layer?, why) for a model of `params` parameters loaded in float32, as the pipeline decides:
    streaming on / off as asked; auto streams when params x 4 bytes x the in-memory factor exceeds half the
    available memory, or when the recipe asks for block-wise recovery."""
    mode = recipe.execution.streaming
    if mode == "off":
        return False, "streaming off (asked)"
    if mode == "on":
        return True, "streaming on (asked)"
    available = memory_available() if available is None else available
    need = params * 4 * in_memory_factor(recipe)
    if need > available / 2:
        return True, (f"the model needs about {gb(need)} in memory, more than half of the {gb(available)} "
                      "available: layer by layer")
    if recipe.distill.blockwise_steps:
        return True, "distill.blockwise_steps asks for layer-local recovery"
    return False, f"the model fits comfortably ({gb(need)} of {gb(available)} available)"


def streaming_problems(recipe) -> list[str]:
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


def check_streamable(recipe, reason: str) -> None:
    """Refuse what a layer-by-layer run cannot do, naming the fields to change."""
    problems = streaming_problems(recipe)
    if problems:
        raise ValueError(f"{recipe.model} runs layer by layer ({reason}), so: " + "; ".join(problems)
                         + ". Or set execution.streaming: off on a machine where the model fits.")
