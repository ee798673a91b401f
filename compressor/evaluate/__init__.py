"""Evaluation: quality against a baseline, size, speed, and the expert kernel used.

    from compressor.evaluate import evaluate, render_table
    report = evaluate(model, baseline, tokenizer, recipe.evaluate)

The names load on first use (PEP 562), so torch-free submodules such as `compressor.evaluate.local_tasks` can be
imported by the web page without importing torch.
"""
from compressor.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "KernelChoice": "kernels", "apply_kernel_": "kernels", "choose_experts_kernel": "kernels",
    "safe_default_kernel_": "kernels", "BaselineReference": "quality", "QualityStats": "quality",
    "baseline_reference": "quality", "compare_quality": "quality", "EvalReport": "report", "evaluate": "report",
    "render_table": "report", "SizeStats": "size", "size_metrics": "size", "SpeedStats": "speed",
    "measure_speed": "speed",
})
