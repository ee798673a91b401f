"""The in-memory driver's stages: stage i of N slims to the cumulative target of `distill.schedule.plan_stages`
(geometric steps toward the recipe's slimming; one stage is one-shot), rescoring the current model first (scores are
cached on disk by weights, data and settings), then distils for its share of `distill.steps`
(`distill.final_stage_share`, 80% by default, for the last stage, the rest split evenly over the earlier ones) from
the teacher (the original model, or the previous stage's student) and evaluates against the original.

    stages = run_stages(job, staging, reporter)       # one dict per stage: target, slimming, distil loss, quality
"""
from __future__ import annotations

import copy
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compressor.distill import DistillReport, TeacherCache, distill_, plan_stages, split_steps
from compressor.distill.sharded import distill_sharded_
from compressor.distill.schedule import StageTarget
from compressor.evaluate import BaselineReference, evaluate, safe_default_kernel_
from compressor.families import resolve_adapter
from compressor.importance import AnalyzeConfig, load_or_analyze
from compressor.progress import Reporter
from compressor.recipe import EvaluateConfig, Recipe, SlimmingConfig
from compressor.slimming.apply import analysis_needs, apply_slimming_
from compressor.slimming.report import LayerDropReport

LOAD_SPAN, STAGES_END = 0.04, 0.88


class Timings(dict):
    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[phase] = self.get(phase, 0.0) + time.perf_counter() - t0


@dataclass
class Job:
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
    timings: Timings
    checkpoint: object                       # the source `engine.checkpoint.Checkpoint`
    fingerprint: str                         # its weights' fingerprint (computed by the load)
    staging: Path | None = None              # the run's partial folder (the sharded engine's hand-over files)
    distill_execution: dict = field(default_factory=dict)   # how distillation ran: metrics.execution.distill

    @property
    def local_dir(self) -> Path:
        return self.checkpoint.local_dir

    @property
    def source_dtype(self) -> torch.dtype:
        """The dtype the export writes (`Checkpoint.export_dtype`, the rule both drivers share)."""
        return self.checkpoint.export_dtype


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


def stage_teacher(job: Job, kind: str, batches: list[dict], done: int, staging: Path, reporter: Reporter):
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


def run_stages(job: Job, staging: Path, reporter: Reporter) -> list[dict]:
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
        teacher = stage_teacher(job, kind, batches, done, staging, sub)
        stages.append(_stage(job, i, target, batches, teacher, sub, job.fingerprint if i == 0 else None))
        teacher = None                                       # a previous-stage teacher is freed before the next
        if kind == "previous_cache":
            shutil.rmtree(staging / "teacher-cache", ignore_errors=True)
        done += len(batches)
    job.original_teacher = None
    return stages


def _stage(job: Job, i: int, target: StageTarget, batches: list[dict], teacher, reporter: Reporter,
           weights_fp: str | None) -> dict:
    """One stage: score, slim to `target`, distil on `batches`, evaluate. Updates `job.layer_map` in place.
    The last stage of a run without quantization is not evaluated here: the final evaluation, on the exported
    weights, fills its row (`fill_last_stage`), so a run evaluates its final model once."""
    recipe, model, t = job.recipe, job.model, job.timings
    before = dict(t)
    cfg = stage_slimming(recipe.slimming, target, model, dropped=job.original_layers - len(job.layer_map))
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
            row["distill"] = distil_stage(job, i, batches, teacher, reporter.span(.2, .9)).to_dict()
    if i < recipe.stages - 1 or recipe.quantize is not None:      # a quantized run's final model is another one
        with t("stage_evaluate"):
            light = EvaluateConfig(perplexity=True, speed=False, tokens=recipe.evaluate.tokens,
                                   seq_len=recipe.evaluate.seq_len)
            ev = evaluate(model, job.baseline, job.tokenizer, light, windows=job.windows,
                          reporter=reporter.span(.9, 1.0))
            row.update(stage_figures(ev))
    row["seconds"] = {k: v - before.get(k, 0.0) for k, v in t.items() if v - before.get(k, 0.0) > 0}
    return row


def stage_figures(report) -> dict:
    """A stage row's figures: the evaluation's headline without the peak-memory fields."""
    return {k: v for k, v in report.headline().items() if not k.startswith("peak")}


def fill_last_stage(stages: list[dict], final) -> None:
    """The last stage's figures are the final evaluation's (the exported weights), not a second evaluation."""
    if stages and "perplexity" not in stages[-1]:
        stages[-1].update(stage_figures(final), evaluated="final evaluation of the exported checkpoint")


def distil_stage(job: Job, i: int, batches: list[dict], teacher, reporter: Reporter) -> DistillReport:
    """Stage i's distillation: `distill_` in this process, or, with `execution.nproc` N > 1, `distill_sharded_`
    (the student sharded over N processes by FSDP2; the same loop and loss, the same result up to float order)."""
    d, nproc = job.recipe.distill, job.recipe.execution.nproc
    kw = dict(teacher=teacher, batches=batches, config=d, steps=len(batches) // d.grad_accum, reporter=reporter,
              layer_map=job.layer_map, seed=job.recipe.seed + i)
    report = (distill_(job.model, **kw) if nproc == 1 else
              distill_sharded_(job.model, nproc=nproc, workdir=job.staging / "fsdp", **kw))
    job.distill_execution.update(engine=report.engine, nproc=report.nproc)
    return report


def stage_slimming(final: SlimmingConfig, target: StageTarget, model, *, dropped: int) -> SlimmingConfig:
    """The recipe's slimming restated relative to the current model (which has lost `dropped` layers so far), so
    that applying it reaches `target`: keep ratio = target width / current width, and so on."""
    blk = resolve_adapter(model).moe_blocks(model)[0]
    width, experts = blk.intermediate_size, blk.num_experts
    return final.model_copy(update=dict(
        expert_keep_ratio=target.width / width if target.width is not None and target.width < width else 1.0,
        experts_keep=target.experts if target.experts is not None and target.experts < experts else None,
        layers_drop=max(0, target.layers_dropped - dropped),
        sparsity=target.sparsity))          # every other field (scores, merge, sparsity settings) as the recipe's
