"""Evaluation: quality against a baseline, size, speed, and the expert kernel used.

    from compressor.evaluate import evaluate, render_table
    report = evaluate(model, baseline, tokenizer, recipe.evaluate)
"""
from compressor.evaluate.kernels import KernelChoice, apply_kernel_, choose_experts_kernel, safe_default_kernel_
from compressor.evaluate.quality import BaselineReference, QualityStats, baseline_reference, compare_quality
from compressor.evaluate.report import EvalReport, evaluate, render_table
from compressor.evaluate.size import SizeStats, size_metrics
from compressor.evaluate.speed import SpeedStats, measure_speed

__all__ = ["KernelChoice", "apply_kernel_", "choose_experts_kernel", "safe_default_kernel_", "BaselineReference",
           "QualityStats", "baseline_reference", "compare_quality", "EvalReport", "evaluate", "render_table",
           "SizeStats", "size_metrics", "SpeedStats", "measure_speed"]
