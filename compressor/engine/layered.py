"""The layer-by-layer driver: score, cut and evaluate a checkpoint one decoder layer at a time (`compressor.stream`),
writing the same outputs as the in-memory driver (`compressor.engine.outputs`).

Layer-local recovery (`distill.blockwise_steps`, `compressor.stream.blockwise`) takes the place of global
distillation. What needs the whole model in memory is refused by `check` before any work, with what to change
(`residency.layered_problems`), and so are the families whose layers cannot be run one at a time
(`families.catalog.STREAM_UNSUPPORTED`); the speed measurement is reported as not measured instead, since it is on by
default.

    check(recipe, ckpt, plan)
    result = run(recipe, ckpt, plan, staging, reporter)
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from compressor.data import calibration_for, eval_windows
from compressor.describe import describe_checkpoint
from compressor.device import resolve_device
from compressor.engine.outputs import PipelineResult, run_metrics, write_outputs
from compressor.engine.residency import check_layered
from compressor.evaluate.report import EvalReport
from compressor.evaluate.size import SizeStats
from compressor.families.catalog import check_streamable_family
from compressor.engine.scores import score_checkpoint
from compressor.importance import AnalyzeConfig
from compressor.progress import Reporter
from compressor.slimming.apply import analysis_needs
from compressor.sources import load_tokenizer
from compressor.stream.blockwise import BlockDistillConfig
from compressor.stream.evaluate import stream_quality
from compressor.stream.skeleton import Skeleton
from compressor.stream.slim import stream_slim
from compressor.stream.spill import Spill, spill_limit_bytes

SPEED_NOT_MEASURED = "a layer-by-layer run does not hold the model in memory to time it"


def check(recipe, ckpt, plan) -> None:
    """Refuse, before any work, what a layer-by-layer run of `recipe` on `ckpt` cannot do."""
    check_layered(recipe, plan.reason)
    check_streamable_family(SimpleNamespace(model_type=ckpt.config.get("model_type")))


def run(recipe, ckpt, plan, staging: Path, reporter: Reporter) -> PipelineResult:
    """Write checkpoint/, recipe.yaml and metrics.json into `staging`."""
    device = resolve_device(recipe.execution.device)       # the current layer's device; the rest stays on the CPU
    # activations past the limit go to staging/spill (files unlinked once mapped; staging goes on any error)
    spill = Spill(staging / "spill", spill_limit_bytes(recipe.execution.spill_mb))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    local = ckpt.local_dir
    tokenizer = load_tokenizer(local)
    if tokenizer is None:
        raise ValueError(f"{recipe.model} ships no tokenizer files; the pipeline needs one for calibration and "
                         "evaluation data")
    c, e = recipe.calibration, recipe.evaluate
    calib = calibration_for(tokenizer, c, seed=recipe.seed)
    windows = eval_windows(tokenizer, tokens=e.tokens, seq_len=e.seq_len)
    ts = time.perf_counter()
    importance = _scores(recipe, ckpt, calib, device, spill, reporter.span(0.0, 0.45))
    timings["calibrate"] = time.perf_counter() - ts
    ts = time.perf_counter()
    out = staging / "checkpoint"
    d = recipe.distill
    block = BlockDistillConfig(steps=d.blockwise_steps, lr=d.blockwise_lr) if d.blockwise_steps else None
    res = stream_slim(local, importance, recipe.slimming, out, batches=calib, block_distill=block,
                      reporter=reporter.span(.45, .7), spill=spill, device=device)
    timings["slim"] = time.perf_counter() - ts
    ts = time.perf_counter()
    report = evaluate_layered(out, local, windows if e.perplexity else None, device=device, spill=spill,
                              reporter=reporter.span(0.7, 0.98))
    spill.close()
    timings["final_evaluate"] = time.perf_counter() - ts
    timings["total"] = time.perf_counter() - t0
    stage = {"stage": "stage 1/1 (layer by layer)", "index": 1, "slimming": res.to_dict(),
             "scores_cache_hit": bool(importance and importance.meta.get("cache", {}).get("hit")),
             **{k: v for k, v in report.headline().items() if not k.startswith("peak")}}
    metrics = run_metrics(recipe, report, windows=windows, timings=timings, plan=plan, ckpt=ckpt,
                          fingerprint=ckpt.fingerprint,
                          dtype=str(ckpt.export_dtype).removeprefix("torch."))
    metrics["execution"].update(device=device, spill=spill.stats())
    metrics["speed_not_measured"] = SPEED_NOT_MEASURED
    write_outputs(staging, recipe, metrics=metrics, stages=[stage], card_model=Skeleton.open(out).model)
    reporter.report("done", step=1, total=1, message="finished")
    return PipelineResult(metrics=metrics, stages=[stage], checkpoint_dir=out, timings=timings)


def _scores(recipe, ckpt, calib, device, spill, reporter: Reporter):
    """The importance report the cuts need (None when they need none), scored layer by layer or from the cache."""
    want, taylor = analysis_needs(recipe.slimming)
    if not want:
        return None
    return score_checkpoint(ckpt, calib, AnalyzeConfig(want=want, taylor=taylor), layered=True, device=device,
                            spill=spill, reporter=reporter)


def evaluate_layered(model_dir: Path, baseline_dir: Path | None, windows, *, dtype=None, device: str = "cpu",
                     spill=None, reporter: Reporter | None = None) -> EvalReport:
    """The evaluation a layer-by-layer run can give: perplexity, agreement and KL against the baseline from one sweep
    per model (`stream.evaluate.stream_quality`; skipped when `windows` is None) and both sizes from the headers
    (`describe_checkpoint`); speed and tasks need the whole model in memory. The layered driver and
    `python -m compressor eval --streaming` both use it."""
    quality = (stream_quality(model_dir, baseline_dir, windows, dtype=dtype, device=device, spill=spill,
                              reporter=reporter) if windows is not None else None)
    sizes = [_size(describe_checkpoint(d)) if d is not None else None for d in (model_dir, baseline_dir)]
    return EvalReport(quality=quality, size=sizes[0], baseline_size=sizes[1])


def _size(summary: dict) -> SizeStats:
    return SizeStats(params_total=summary["params_total"], params_active=summary["params_active"], weight_bytes=0,
                     checkpoint_bytes=summary["checkpoint_bytes"], checkpoint_bytes_from="files",
                     peak_memory_bytes=0, peak_memory_method="none")
