"""The in-memory driver: load the model in float32, run every stage (`compressor.engine.stages`), then export in
the source checkpoint's dtype, quantize when asked, and evaluate exactly the exported weights once.

The model is trained in float32; the export casts it back to the checkpoint's dtype (`Checkpoint.export_dtype`, the
rule both drivers share), and the final evaluation runs on those rounded weights.

    result = run(recipe, ckpt, plan, staging, reporter)
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch

from compressor.data import calibration_batches, calibration_for, eval_windows
from compressor.device import resolve_device
from compressor.distill import TeacherCache
from compressor.distill.sharded import check_sharded
from compressor.distill.teacher import teacher_cache_dir
from compressor.engine.outputs import PipelineResult, run_metrics, write_outputs
from compressor.engine.stages import LOAD_SPAN, STAGES_END, Job, Timings, fill_last_stage, run_stages
from compressor.evaluate import (BaselineReference, apply_kernel_, baseline_reference, choose_experts_kernel,
                                 evaluate, measure_speed, safe_default_kernel_, size_metrics)
from compressor.evaluate.harness import resolve_backend, run_lm_eval
from compressor.families import resolve_adapter
from compressor.fingerprint import fingerprint
from compressor.importance.cache import model_settings
from compressor.progress import Reporter
from compressor.recipe import EvaluateConfig, Recipe
from compressor.slimming.export import save_checkpoint, verify_reload
from compressor.sources import load_model


def run(recipe: Recipe, ckpt, plan, staging: Path, reporter: Reporter) -> PipelineResult:
    """prepare (load, data, baseline, the original's teacher) -> every stage with its teacher -> finish."""
    job = prepare(recipe, ckpt, staging, reporter)
    stages = run_stages(job, staging, reporter)
    return finish(job, plan, staging, stages, reporter.span(STAGES_END, 1.0))


def prepare(recipe: Recipe, ckpt, staging: Path, reporter: Reporter) -> Job:
    """Load the model in float32, build the data, the baseline and, for `teacher: original` with a top-k cache, the
    cache of the original's logits over every distillation batch."""
    t, d = Timings(), recipe.distill
    if recipe.execution.nproc > 1 and d.steps > 0:          # refused before the model is read
        check_sharded(d, nproc=recipe.execution.nproc, device=resolve_device(recipe.execution.device))
    torch.manual_seed(recipe.seed)
    with t("load"):
        reporter.report("load", message=f"loading {recipe.model}")
        loaded = load_model(str(ckpt.local_dir), dtype=torch.float32, device=recipe.execution.device,
                            allow_pickle=not ckpt.safetensors)        # resolved and checked once, by the handle
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
    original_teacher, execution = None, _distill_execution(recipe)
    if cached and d.teacher == "original":
        with t("teacher_cache"):
            original_teacher, hit = TeacherCache.open_or_build(
                model, distil_batches, root=teacher_cache_dir(), k=d.cache_teacher_topk, temperature=d.temperature,
                teacher_fp=fingerprint(loaded.fingerprint, model_settings(model)), reporter=reporter.span(0, LOAD_SPAN))
        execution["teacher_cache"] = {"k": original_teacher.k, "hit": hit, "key": original_teacher.directory.name,
                                      "bytes": original_teacher.nbytes()}
    layers = len(adapter.decoder_layers(model))
    return Job(recipe, model, tokenizer, calib, distil_batches, windows, baseline, original_teacher, cached,
               layers, list(range(layers)), t, ckpt, loaded.fingerprint, staging, execution)


def _distill_execution(recipe: Recipe) -> dict:
    """How global distillation runs (metrics.execution.distill): engine and processes, and what teaches (the
    live model, or its top-k log-probs from disk: a lower bound of the full-vocabulary divergence)."""
    d = recipe.distill
    if d.steps == 0:
        return {}
    teacher = f"top-{d.cache_teacher_topk} cache" if d.cache_teacher_topk else "live"
    return {"engine": "fsdp2" if recipe.execution.nproc > 1 else "single", "nproc": recipe.execution.nproc,
            "teacher": teacher}


def finish(job: Job, plan, staging: Path, stages: list[dict], fin: Reporter) -> PipelineResult:
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
    fill_last_stage(stages, final)
    timings = {**t, "total": sum(t.values())}
    dtype = str(job.source_dtype).removeprefix("torch.")
    metrics = run_metrics(recipe, final, windows=job.windows, timings=timings, plan=plan, ckpt=job.checkpoint,
                          fingerprint=job.fingerprint, dtype=dtype)
    if quant is not None:
        metrics.update(quantize=quant.to_dict(), unquantized_checkpoint_bytes=quant.checkpoint_bytes_before)
    if job.distill_execution:
        metrics["execution"]["distill"] = job.distill_execution
    card_dtype = f"{dtype}, weight-only {recipe.quantize.label}" if quant is not None else dtype
    write_outputs(staging, recipe, metrics=metrics, stages=stages, card_model=model, card_dtype=card_dtype)
    shutil.rmtree(staging / "teacher-cache", ignore_errors=True)
    fin.report("done", step=1, total=1, message="finished")
    return PipelineResult(metrics=metrics, stages=stages, checkpoint_dir=ckpt, timings=timings)


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


def _quantize(ckpt: Path, staging: Path, cfg, windows: torch.Tensor):
    """Replace the saved checkpoint by its quantized form (`compressor.quantize`); returns the reloaded quantized
    model, on which the final evaluation runs, and the QuantizeReport."""
    from compressor.quantize import load_quantized, quantize_checkpoint
    tmp = staging / "quantized"
    report = quantize_checkpoint(ckpt, tmp, cfg, check_ids=windows[:1, :32])
    shutil.rmtree(ckpt)
    os.replace(tmp, ckpt)
    return load_quantized(ckpt), report


def _quantize_compressed(job: Job, ckpt: Path, staging: Path, reporter: Reporter):
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
