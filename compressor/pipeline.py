"""The whole job: load, then per stage score -> slim -> distil -> evaluate, then a final evaluation and the export.

    result = run_recipe(Recipe.load("recipe.yaml"), "out/run1", on_progress=print)
    result.metrics["perplexity"], result.checkpoint_dir      # out/run1/checkpoint (HF folder + README.md)

Stage i of N slims to the cumulative target of `distill.schedule.plan_stages` (geometric steps toward the recipe's
slimming; one stage is one-shot), rescoring the current model first (scores are cached on disk by weights, data and
settings), then distils for its share of `distill.steps` (`distill.final_stage_share`, 80% by default, for the last stage, the
rest split evenly over the earlier ones) from the teacher (the original model, or the previous
stage's student) and evaluates against the original. The model is trained in float32; the export casts it back to
the source checkpoint's dtype, and the final evaluation runs on exactly those rounded weights.

Files: `out_dir/checkpoint/` (safetensors + config + tokenizer + README.md model card with the recipe and metrics),
`out_dir/recipe.yaml`, `out_dir/metrics.json`. Everything is written under `out_dir/.partial/` first and moved into
place at the end; on `Cancelled` (or any error) the partial folder is removed, and so is `out_dir` if this run
created it and it is empty, before the exception propagates.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers.utils import logging as hf_logging

from compressor.data import calibration_batches, calibration_for, eval_windows
from compressor.distill import TeacherCache, distill_, plan_stages, split_steps
from compressor.distill.schedule import StageTarget
from compressor.evaluate import (BaselineReference, apply_kernel_, baseline_reference, choose_experts_kernel,
                                 evaluate, measure_speed, safe_default_kernel_, size_metrics)
from compressor.evaluate.card import pipeline_card
from compressor.evaluate.harness import check_lm_eval, resolve_backend, run_lm_eval
from compressor.evaluate.tasks import check_tasks
from compressor.device import resolve_device
from compressor.families import resolve_adapter
from compressor.importance import AnalyzeConfig, load_or_analyze
from compressor.progress import CancelFn, ProgressFn, Reporter
from compressor.quantize import check_quantize
from compressor.recipe import EvaluateConfig, Recipe, SlimmingConfig
from compressor.result import HELDOUT_TEXT, RESULT_VERSION, EvalSet, RunResult
from compressor.slimming.apply import analysis_needs, apply_slimming_
from compressor.slimming.export import model_card, save_checkpoint, verify_reload
from compressor.slimming.report import LayerDropReport
from compressor.sources import load_model

PARTIAL = ".partial"
OUTPUTS = ("checkpoint", "recipe.yaml", "metrics.json")
LOAD_SPAN, STAGES_END = 0.04, 0.88


@dataclass
class PipelineResult:
    metrics: dict                      # headline figures at the top level, plus timings and the full evaluation
    stages: list[dict]                 # one dict per stage (stage, target, params, quality, distil loss, seconds)
    checkpoint_dir: Path
    timings: dict = field(default_factory=dict)   # wall seconds per phase

    @property
    def result(self) -> RunResult:
        """The typed result (`compressor.result`): what metrics.json holds, by named fields."""
        return RunResult.read({**self.metrics, "stages": self.stages})


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


class _Timings(dict):
    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[phase] = self.get(phase, 0.0) + time.perf_counter() - t0


def run_recipe(recipe: Recipe, out_dir: str | Path, *, on_progress: ProgressFn | None = None,
               should_cancel: CancelFn | None = None) -> PipelineResult:
    """Run `recipe` and write its outputs into `out_dir` (see the module docstring). Raises `Cancelled` when
    `should_cancel()` turns True, leaving no partial files; outputs of an earlier run in `out_dir` are replaced
    only when this run succeeds."""
    out_dir = Path(out_dir)
    check_tasks(recipe.evaluate.tasks)
    check_lm_eval(recipe.evaluate.lm_eval)
    check_quantize(recipe.quantize)
    check_feasible(recipe)
    resolve_device(recipe.execution.device)                   # a device this machine lacks is refused first
    created = not out_dir.exists()
    staging = out_dir / PARTIAL
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with _no_hf_bars():
            result = _run(recipe, staging, Reporter(on_progress, should_cancel))
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


@dataclass
class _Job:
    """What every stage of one run shares."""

    recipe: Recipe
    model: torch.nn.Module
    tokenizer: object
    calib: list[dict]
    distil_batches: list[dict]
    windows: torch.Tensor
    baseline: torch.nn.Module | BaselineReference
    original_teacher: TeacherCache | None    # `teacher: original` with a top-k cache: the original's logits
    cached: bool                             # the teacher is a top-k cache (distill.cache_teacher_topk > 0)
    original_layers: int
    layer_map: list[int]                     # original index of every current decoder layer
    timings: _Timings
    local_dir: Path
    fingerprint: str
    source_dtype: torch.dtype


def check_feasible(recipe: Recipe) -> None:
    """The feasibility rules (`compressor.feasibility`) on the model's config.json, before any weight is read."""
    from compressor.feasibility import ModelLimits, check_slimming
    from compressor.quantize import check_group_sizes
    from compressor.sources import resolve_local
    if recipe.slimming.is_identity and recipe.quantize is None:
        return
    config = json.loads((resolve_local(recipe.model).local_dir / "config.json").read_text())
    check_group_sizes(recipe.quantize, config, expert_keep_ratio=recipe.slimming.expert_keep_ratio)
    if recipe.slimming.is_identity:
        return
    check_slimming(ModelLimits.from_config(config), recipe.slimming, stages=recipe.stages)


def _streamed(recipe: Recipe, staging: Path, reporter: Reporter) -> PipelineResult | None:
    """The layer-by-layer run (`compressor.stream.pipeline`) when `recipe.execution.streaming` and the model's size
    call for it (`compressor.stream.budget`), else None."""
    from compressor.sources import resolve_local
    from compressor.stream.budget import DISTILL_FACTOR, IN_MEMORY_FACTOR, plan_execution

    mode = recipe.execution.streaming
    if mode == "off":
        if recipe.distill.blockwise_steps:
            raise ValueError("distill.blockwise_steps is layer-local recovery, which runs layer by layer: set "
                             "execution.streaming to on (or auto), or use distill.steps for global distillation")
        return None
    found = resolve_local(recipe.model)
    if found.weights != "safetensors":
        if mode == "on":
            raise ValueError(f"{recipe.model}: layer-by-layer work reads safetensors shards; this model has only "
                             "pickle weights. Convert it to safetensors, or set execution.streaming: off.")
        return None
    factor = DISTILL_FACTOR if recipe.distill.steps else IN_MEMORY_FACTOR
    plan = plan_execution(found.local_dir, mode, tokens=recipe.calibration.tokens, dtype=torch.float32,
                          taylor=analysis_needs(recipe.slimming)[1], in_memory_factor=factor,
                          spill_mb=recipe.execution.spill_mb)
    if not plan.streaming and recipe.distill.blockwise_steps:
        plan = replace(plan, streaming=True, reason="distill.blockwise_steps asks for layer-local recovery")
    if not plan.streaming:
        return None
    from compressor.stream.pipeline import run_streamed_recipe
    out = run_streamed_recipe(recipe, staging, reporter, found, plan)
    return PipelineResult(metrics=out["metrics"], stages=out["stages"], checkpoint_dir=staging / "checkpoint",
                          timings=out["timings"])


def _run(recipe: Recipe, staging: Path, reporter: Reporter) -> PipelineResult:
    """prepare (load, data, baseline, the original's teacher) -> every stage with its teacher -> finish."""
    streamed = _streamed(recipe, staging, reporter)
    if streamed is not None:
        return streamed
    job = _prepare(recipe, staging, reporter)
    stages = _run_stages(job, staging, reporter)
    return _finish(job, staging, stages, reporter.span(STAGES_END, 1.0))


def _prepare(recipe: Recipe, staging: Path, reporter: Reporter) -> _Job:
    """Load the model in float32, build the data, the baseline and, for `teacher: original` with a top-k cache, the
    cache of the original's logits over every distillation batch."""
    t, d = _Timings(), recipe.distill
    torch.manual_seed(recipe.seed)
    with t("load"):
        reporter.report("load", message=f"loading {recipe.model}")
        loaded = load_model(recipe.model, dtype=torch.float32, device=recipe.execution.device)
        model, tokenizer = loaded.model, loaded.tokenizer
        if tokenizer is None:
            raise ValueError(f"{recipe.model} ships no tokenizer files; the pipeline needs one for calibration, "
                             "distillation and evaluation data")
        adapter = resolve_adapter(model)
        safe_default_kernel_(model)
    with t("data"):
        calib, distil_batches, windows = _data(recipe, tokenizer)
    cached = d.cache_teacher_topk > 0 and d.steps > 0
    with t("baseline"):
        reporter.span(0, LOAD_SPAN).report("load", message="preparing the baseline")
        baseline = (_reference(model, tokenizer, windows, loaded.local_dir, recipe.evaluate) if cached
                    else copy.deepcopy(model).requires_grad_(False).eval())
    original_teacher = None
    if cached and d.teacher == "original":
        with t("teacher_cache"):
            original_teacher = TeacherCache.build(model, distil_batches, directory=staging / "teacher-cache",
                                                  k=d.cache_teacher_topk, temperature=d.temperature,
                                                  reporter=reporter.span(0, LOAD_SPAN))
    layers = len(adapter.decoder_layers(model))
    return _Job(recipe, model, tokenizer, calib, distil_batches, windows, baseline, original_teacher, cached,
                layers, list(range(layers)), t, loaded.local_dir, loaded.fingerprint,
                _source_dtype(loaded.local_dir))


def teacher_kind(*, teacher: str, cached: bool, steps: int) -> str:
    """What teaches a stage with `steps` distillation batches: "none" (no step: nothing is built or sliced, so a
    0-step stage of a `previous_stage` recipe costs no teacher), "original" (the baseline copy), "original_cache"
    (this stage's slice of the cache of the original's top-k logits), "previous_copy" (a frozen copy of the model as
    this stage starts) or "previous_cache" (a top-k cache of it over this stage's batches)."""
    if steps <= 0:
        return "none"
    if teacher == "original":
        return "original_cache" if cached else "original"
    if teacher == "previous_stage":
        return "previous_cache" if cached else "previous_copy"
    raise ValueError(f"unknown distill.teacher {teacher!r}: use original or previous_stage")


def _stage_teacher(job: _Job, kind: str, batches: list[dict], done: int, staging: Path, reporter: Reporter):
    """The teacher object of one stage (see `teacher_kind`)."""
    d = job.recipe.distill
    if kind == "none":
        return None
    if kind == "original":
        return job.baseline
    if kind == "original_cache":
        return job.original_teacher.slice(done, done + len(batches))
    with job.timings("teacher_cache" if kind == "previous_cache" else "teacher_copy"):
        if kind == "previous_cache":
            return TeacherCache.build(job.model, batches, directory=staging / "teacher-cache", k=d.cache_teacher_topk,
                                      temperature=d.temperature, reporter=reporter.span(0, 0.05))
        return copy.deepcopy(job.model).requires_grad_(False).eval()


def _run_stages(job: _Job, staging: Path, reporter: Reporter) -> list[dict]:
    """Every stage of `distill.schedule.plan_stages`, each with its share of the distillation batches."""
    recipe, model, d = job.recipe, job.model, job.recipe.distill
    adapter = resolve_adapter(model)
    blk = adapter.moe_blocks(model)[0]
    plan = plan_stages(recipe.slimming, stages=recipe.stages, num_experts=blk.num_experts,
                       width=blk.intermediate_size, expert_multiple=adapter.num_groups(model.config))
    steps = split_steps(total=d.steps, stages=recipe.stages, final_share=d.final_stage_share)
    stages, done, span = [], 0, (STAGES_END - LOAD_SPAN) / recipe.stages
    for i, target in enumerate(plan):
        sub = reporter.span(LOAD_SPAN + i * span, LOAD_SPAN + (i + 1) * span)
        batches = job.distil_batches[done:done + steps[i] * d.grad_accum]
        kind = teacher_kind(teacher=d.teacher, cached=job.cached, steps=len(batches))
        teacher = _stage_teacher(job, kind, batches, done, staging, sub)
        stages.append(_stage(job, i, target, batches, teacher, sub, job.fingerprint if i == 0 else None))
        teacher = None                                       # a previous-stage teacher is freed before the next
        if kind == "previous_cache":
            shutil.rmtree(staging / "teacher-cache", ignore_errors=True)
        done += len(batches)
    job.original_teacher = None
    return stages


def _finish(job: _Job, staging: Path, stages: list[dict], fin: Reporter) -> PipelineResult:
    """Export in the source dtype, quantize when asked, evaluate the exported weights, write the card and files."""
    recipe, t = job.recipe, job.timings
    model = job.model
    with t("export"):
        fin.report("export", message="saving the checkpoint")
        ckpt = staging / "checkpoint"
        _save(model, job.tokenizer, ckpt, job.source_dtype, job.windows)
    quant = None
    if recipe.quantize is not None:
        with t("quantize"):
            fin.report("quantize", message=f"quantizing the checkpoint: {recipe.quantize.label}")
            if recipe.quantize.format == "torchao":
                model, quant = _quantize(ckpt, staging, recipe.quantize, job.windows)
            else:
                model, quant = _quantize_compressed(job, ckpt, staging, fin.span(0, 0.1))
    with t("final_evaluate"):
        final = evaluate(model, job.baseline, job.tokenizer, recipe.evaluate, windows=job.windows,
                         checkpoint_dir=ckpt, baseline_checkpoint_dir=job.local_dir, reporter=fin.span(0.1, 1.0))
    timings = {**t, "total": sum(t.values())}
    dtype = str(job.source_dtype).removeprefix("torch.")
    metrics = {"result_version": RESULT_VERSION, **final.headline(), "timings": timings,
               "evaluation": final.to_dict(), "eval_set": EvalSet.of(job.windows, text=HELDOUT_TEXT).model_dump(),
               "source": {"model": recipe.model, "fingerprint": job.fingerprint, "dtype": dtype}}
    if quant is not None:
        metrics.update(quantize=quant.to_dict(), unquantized_checkpoint_bytes=quant.checkpoint_bytes_before)
    card_dtype = f"{dtype}, weight-only {recipe.quantize.label}" if quant is not None else dtype
    (ckpt / "README.md").write_text(model_card(model, pipeline_card(recipe, metrics, stages), dtype=card_dtype))
    (staging / "recipe.yaml").write_text(recipe.to_yaml())
    (staging / "metrics.json").write_text(json.dumps({**metrics, "stages": stages}, indent=2, default=str))
    shutil.rmtree(staging / "teacher-cache", ignore_errors=True)
    fin.report("done", step=1, total=1, message="finished")
    return PipelineResult(metrics=metrics, stages=stages, checkpoint_dir=ckpt, timings=timings)


def _stage(job: _Job, i: int, target: StageTarget, batches: list[dict], teacher, reporter: Reporter,
           weights_fp: str | None) -> dict:
    """One stage: score, slim to `target`, distil on `batches`, evaluate. Updates `job.layer_map` in place."""
    recipe, model, t = job.recipe, job.model, job.timings
    before = dict(t)
    cfg = _stage_slimming(recipe.slimming, target, model, dropped=job.original_layers - len(job.layer_map))
    row: dict = {"stage": f"stage {i + 1}/{recipe.stages}", "index": i + 1, "target": target.to_dict()}
    if not cfg.is_identity:
        with t("calibrate"):
            want, taylor = analysis_needs(cfg)
            importance = None                     # an expert merge alone scores its layers itself, as it merges
            if want:
                importance = load_or_analyze(model, job.calib, config=AnalyzeConfig(want=want, taylor=taylor),
                                             weights_fp=weights_fp, reporter=reporter.span(0, .15))
            row["scores_cache_hit"] = bool(importance and importance.meta.get("cache", {}).get("hit"))
        with t("slim"):
            res = apply_slimming_(model, importance, cfg, batches=job.calib, reporter=reporter.span(.15, .2))
            for rep in res.reports:
                if isinstance(rep, LayerDropReport):
                    job.layer_map[:] = [job.layer_map[k] for k in rep.kept]
            safe_default_kernel_(model)
            row["slimming"] = res.to_dict()
    if batches:
        with t("distill"):
            dr = distill_(model, teacher=teacher, batches=batches, config=recipe.distill,
                          steps=len(batches) // recipe.distill.grad_accum, reporter=reporter.span(.2, .9),
                          layer_map=job.layer_map, seed=recipe.seed + i)
            row["distill"] = dr.to_dict()
    with t("stage_evaluate"):
        light = EvaluateConfig(perplexity=True, speed=False, tokens=recipe.evaluate.tokens,
                               seq_len=recipe.evaluate.seq_len)
        ev = evaluate(model, job.baseline, job.tokenizer, light, windows=job.windows, reporter=reporter.span(.9, 1.0))
        row.update({k: v for k, v in ev.headline().items() if not k.startswith("peak")})
    row["seconds"] = {k: v - before.get(k, 0.0) for k, v in t.items() if v - before.get(k, 0.0) > 0}
    return row


def _stage_slimming(final: SlimmingConfig, target: StageTarget, model, *, dropped: int) -> SlimmingConfig:
    """The recipe's slimming restated relative to the current model (which has lost `dropped` layers so far), so
    that applying it reaches `target`: keep ratio = target width / current width, and so on."""
    blk = resolve_adapter(model).moe_blocks(model)[0]
    width, experts = blk.intermediate_size, blk.num_experts
    return final.model_copy(update=dict(
        expert_keep_ratio=target.width / width if target.width is not None and target.width < width else 1.0,
        experts_keep=target.experts if target.experts is not None and target.experts < experts else None,
        layers_drop=max(0, target.layers_dropped - dropped),
        sparsity=target.sparsity))          # every other field (scores, merge, sparsity settings) as the recipe's


def _data(recipe: Recipe, tokenizer):
    c, d, e = recipe.calibration, recipe.distill, recipe.evaluate
    calib = calibration_for(tokenizer, c, seed=recipe.seed)
    distil = []
    if d.steps:
        n = d.steps * d.grad_accum * d.batch_size
        distil = calibration_batches(tokenizer, tokens=n * d.seq_len, seq_len=d.seq_len, batch_size=d.batch_size,
                                     seed=recipe.seed + 1)
        distil = [{"input_ids": b["input_ids"]} for b in distil]
    windows = eval_windows(tokenizer, tokens=e.tokens, seq_len=e.seq_len)
    return calib, distil, windows


def _reference(model, tokenizer, windows: torch.Tensor, local_dir: Path, cfg: EvaluateConfig) -> BaselineReference:
    """Everything evaluation needs from the original, measured before it is slimmed in place."""
    ref = baseline_reference(model, windows, batch_size=8)
    if cfg.lm_eval.tasks:
        ref.lm_eval = run_lm_eval(model, tokenizer, cfg.lm_eval, backend=resolve_backend(cfg.lm_eval.backend),
                                  checkpoint_dir=local_dir)
    ref.size = size_metrics(model, sample_ids=windows[:8], checkpoint_dir=local_dir)
    if cfg.speed:                    # the probe's kernel, and eager, which every slimmed model can run too
        choice = choose_experts_kernel(model, sample_ids=windows[:2], allow_bf16=False)
        for label in dict.fromkeys([choice.label, f"eager/{choice.dtype}"]):
            apply_kernel_(model, label.split("/")[0])
            ref.speeds[label] = measure_speed(model, prompt_ids=windows[:2])
            ref.speeds[label].settings.update(kernel=label, kernels={"model": label})
        apply_kernel_(model, choice)
        ref.speed = ref.speeds[choice.label]
    return ref


def _source_dtype(local_dir: Path) -> torch.dtype:
    """The dtype the export writes: the rule both drivers share (`stream.skeleton.checkpoint_dtype`: config.json's
    dtype, else the most common floating dtype stored, as `from_pretrained(dtype="auto")`); float32 for a folder
    without a readable config.json or safetensors headers (pickle checkpoints)."""
    from compressor.stream.shards import ShardError, ShardIndex
    from compressor.stream.skeleton import checkpoint_dtype

    try:
        cfg = json.loads((Path(local_dir) / "config.json").read_text())
        index = ShardIndex.open(local_dir)
    except (OSError, ValueError, ShardError):
        return torch.float32
    named = cfg.get("dtype") or cfg.get("torch_dtype")
    dtype = checkpoint_dtype(SimpleNamespace(dtype=named), index)
    return dtype if dtype.is_floating_point else torch.float32


def _quantize(ckpt: Path, staging: Path, cfg, windows: torch.Tensor):
    """Replace the saved checkpoint by its quantized form (`compressor.quantize`); returns the reloaded quantized
    model, on which the final evaluation runs, and the QuantizeReport."""
    from compressor.quantize import load_quantized, quantize_checkpoint
    tmp = staging / "quantized"
    report = quantize_checkpoint(ckpt, tmp, cfg, check_ids=windows[:1, :32])
    shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)
    return load_quantized(ckpt), report


def _quantize_compressed(job: _Job, ckpt: Path, staging: Path, reporter: Reporter):
    """Quantize the exported model (its float32 copy of the saved values) by `recipe.quantize` on the run's
    calibration batches, layer by layer (`compressor.quantize.quantize_to_compressed`), and replace the saved
    checkpoint by the compressed-tensors one; returns the reloaded model, on which the final evaluation runs."""
    from compressor.quantize import quantize_to_compressed
    tmp = staging / "quantized"
    model, report = quantize_to_compressed(job.model, job.calib, job.recipe.quantize, tmp, dtype=job.source_dtype,
                                           tokenizer=job.tokenizer, unquantized=ckpt,
                                           check_ids=job.windows[:1, :32], reporter=reporter)
    shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)
    model.to(next(job.model.parameters()).device)          # evaluated where the run works (a GPU run: the GPU)
    safe_default_kernel_(model)
    return model, report


def _save(model, tokenizer, ckpt: Path, dtype: torch.dtype, windows: torch.Tensor) -> None:
    """Save in the source dtype; the in-memory model keeps float32 copies of exactly the saved values.

    Non-persistent buffers (rotary inv_freq) are not saved, a reload recomputes them in float32, so they are put
    back unrounded after the round trip."""
    work = next(model.parameters()).dtype
    transient = [(mod, name, buf.detach().clone()) for mod in model.modules()
                 for name, buf in mod.named_buffers(recurse=False) if name in mod._non_persistent_buffers_set]
    model.to(dtype)
    try:
        save_checkpoint(model, tokenizer, ckpt, overwrite=True)
    finally:
        model.to(work)
        for mod, name, buf in transient:
            setattr(mod, name, buf)
    verify_reload(ckpt, model, windows[:1, :32], experts_implementation="eager", atol=1e-4)
