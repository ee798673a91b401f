"""A recipe on a model that does not fit: score, cut and evaluate layer by layer, with the same files as
`compressor.pipeline.run_recipe` (checkpoint/ with its model card, recipe.yaml, metrics.json).

Layer-local recovery (`distill.blockwise_steps`, `compressor.stream.blockwise`) takes the place of global
distillation. What needs the whole model in memory is refused before any work, with what to change: global distillation
(`distill.steps > 0`), multi-stage slimming (`stages > 1`, which distils between the stages), multiple-choice tasks
and the speed measurement (`evaluate.speed`, reported as not measured instead of refused, since it is on by default).

    result = run_streamed_recipe(recipe, staging, reporter, found, plan)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from compressor.data import calibration_for, eval_windows
from compressor.evaluate.report import EvalReport
from compressor.evaluate.size import SizeStats
from compressor.importance import AnalyzeConfig, load_or_analyze
from compressor.progress import Reporter
from compressor.result import HELDOUT_TEXT, RESULT_VERSION, EvalSet
from compressor.recipe import Recipe
from compressor.slimming.apply import analysis_needs
from compressor.stream.blockwise import BlockDistillConfig
from compressor.stream.rules import check_streamable


def run_streamed_recipe(recipe: Recipe, staging: Path, reporter: Reporter, found, plan) -> dict:
    """Write checkpoint/, recipe.yaml and metrics.json into `staging`; return {"metrics", "stages", "timings"}."""
    from compressor.describe import describe_checkpoint
    from compressor.fingerprint import weights_fingerprint
    from compressor.slimming.export import model_card
    from compressor.evaluate.card import pipeline_card
    from compressor.sources import load_tokenizer
    from compressor.stream.analyze import stream_analyze
    from compressor.stream.evaluate import stream_quality
    from compressor.stream.skeleton import Skeleton
    from compressor.stream.slim import stream_slim

    check_streamable(recipe, plan.reason)
    from compressor.device import resolve_device
    device = resolve_device(recipe.execution.device)       # the current layer's device; the rest stays on the CPU
    from compressor.stream.spill import Spill, spill_limit_bytes
    # activations past the limit go to staging/spill (files unlinked once mapped; staging goes on any error)
    spill = Spill(staging / "spill", spill_limit_bytes(recipe.execution.spill_mb))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    local = found.local_dir
    tokenizer = load_tokenizer(local)
    if tokenizer is None:
        raise ValueError(f"{recipe.model} ships no tokenizer files; the pipeline needs one for calibration and "
                         "evaluation data")
    c, e = recipe.calibration, recipe.evaluate
    calib = calibration_for(tokenizer, c, seed=recipe.seed)
    windows = eval_windows(tokenizer, tokens=e.tokens, seq_len=e.seq_len)
    want, taylor = analysis_needs(recipe.slimming)
    base_fp = weights_fingerprint(local)     # the base model's identity, as the in-memory driver records it
    importance = None
    ts = time.perf_counter()
    if want:
        skeleton = Skeleton.open(local)

        def analyzer(batches, **kw):
            return stream_analyze(local, batches, device=device, spill=spill, **kw)

        importance = load_or_analyze(skeleton.model, calib, config=AnalyzeConfig(want=want, taylor=taylor),
                                     weights_fp=base_fp, analyzer=analyzer,
                                     reporter=reporter.span(0.0, 0.45))
    timings["calibrate"] = time.perf_counter() - ts
    ts = time.perf_counter()
    ckpt = staging / "checkpoint"
    d = recipe.distill
    block = BlockDistillConfig(steps=d.blockwise_steps, lr=d.blockwise_lr) if d.blockwise_steps else None
    res = stream_slim(local, importance, recipe.slimming, ckpt, batches=calib, block_distill=block,
                      reporter=reporter.span(.45, .7), spill=spill, device=device)
    timings["slim"] = time.perf_counter() - ts
    ts = time.perf_counter()
    quality = (stream_quality(ckpt, local, windows, reporter=reporter.span(0.7, 0.98), device=device, spill=spill)
               if e.perplexity else None)
    spill.close()
    sizes = [describe_checkpoint(d) for d in (ckpt, local)]
    report = EvalReport(quality=quality, size=_size(sizes[0]), baseline_size=_size(sizes[1]))
    timings["final_evaluate"] = time.perf_counter() - ts
    timings["total"] = time.perf_counter() - t0
    stage = {"stage": "stage 1/1 (layer by layer)", "index": 1, "slimming": res.to_dict(),
             "scores_cache_hit": bool(importance and importance.meta.get("cache", {}).get("hit")),
             **{k: v for k, v in report.headline().items() if not k.startswith("peak")}}
    metrics = {"result_version": RESULT_VERSION, **report.headline(), "timings": timings,
               "evaluation": report.to_dict(), "eval_set": EvalSet.of(windows, text=HELDOUT_TEXT).model_dump(),
               "execution": {**plan.to_dict(), "device": device, "spill": spill.stats()}, "speed_not_measured": "a layer-by-layer run does not hold the model "
                                                                   "in memory to time it",
               "source": {"model": recipe.model, "fingerprint": base_fp, "dtype": sizes[1]["dtype"]}}
    (ckpt / "README.md").write_text(model_card(Skeleton.open(ckpt).model, pipeline_card(recipe, metrics, [stage])))
    (staging / "recipe.yaml").write_text(recipe.to_yaml())
    (staging / "metrics.json").write_text(json.dumps({**metrics, "stages": [stage]}, indent=2, default=str))
    reporter.report("done", step=1, total=1, message="finished")
    return {"metrics": metrics, "stages": [stage], "timings": timings}


def _size(summary: dict) -> SizeStats:
    return SizeStats(params_total=summary["params_total"], params_active=summary["params_active"], weight_bytes=0,
                     checkpoint_bytes=summary["checkpoint_bytes"], checkpoint_bytes_from="files",
                     peak_memory_bytes=0, peak_memory_method="none")


