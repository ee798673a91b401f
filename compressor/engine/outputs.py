"""What every run writes, whichever driver ran it: the metrics record and the three outputs.

    metrics = run_metrics(recipe, report, windows=windows, timings=t, plan=plan, fingerprint=fp, dtype="bfloat16")
    write_outputs(staging, recipe, metrics=metrics, stages=stages, card_model=model)
    # staging/checkpoint/README.md (model card), staging/recipe.yaml, staging/metrics.json (metrics + "stages")

`metrics` holds the headline figures at the top level (`EvalReport.headline`), plus `timings`, the full
`evaluation`, the `eval_set` it ran on, the `execution` plan (in memory or layer by layer, and why) and the `source`
(the model as the recipe names it, its weights' fingerprint, the dtype the export is written in and the input's
quantization, if any) and `notes` a user should read (a quantized input written unquantized).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from compressor.evaluate.card import pipeline_card
from compressor.result import HELDOUT_TEXT, RESULT_VERSION, EvalSet
from compressor.slimming.export import model_card

OUTPUTS = ("checkpoint", "recipe.yaml", "metrics.json")


@dataclass
class PipelineResult:
    metrics: dict                      # headline figures at the top level, plus timings and the full evaluation
    stages: list[dict]                 # one dict per stage (stage, target, params, quality, distil loss, seconds)
    checkpoint_dir: Path
    timings: dict = field(default_factory=dict)   # wall seconds per phase

    @property
    def result(self):
        """The typed result (`compressor.result.RunResult`): what metrics.json holds, by named fields."""
        from compressor.result import RunResult
        return RunResult.read({**self.metrics, "stages": self.stages})


def run_metrics(recipe, report, *, windows, timings: dict, plan, ckpt, fingerprint: str, dtype: str) -> dict:
    """The metrics record of one run (see the module docstring); `report` is the final `EvalReport`, `ckpt` the
    source `Checkpoint` (its input quantization and the notes about it), `fingerprint` its weights' fingerprint."""
    q = ckpt.quantization
    return {"result_version": RESULT_VERSION, **report.headline(), "timings": timings,
            "evaluation": report.to_dict(), "eval_set": EvalSet.of(windows, text=HELDOUT_TEXT).model_dump(),
            "execution": plan.to_dict(), "notes": ckpt.input_notes(),
            "source": {"model": recipe.model, "fingerprint": fingerprint, "dtype": dtype,
                       "quantization": q.to_dict() if q is not None else None}}


def write_outputs(staging: Path, recipe, *, metrics: dict, stages: list[dict], card_model,
                  card_dtype: str | None = None) -> None:
    """The model card (`card_model`, a real or meta-device model of the checkpoint, describes it), recipe.yaml and
    metrics.json (the metrics plus the stages)."""
    card = model_card(card_model, pipeline_card(recipe, metrics, stages), dtype=card_dtype)
    (staging / "checkpoint" / "README.md").write_text(card)
    (staging / "recipe.yaml").write_text(recipe.to_yaml())
    (staging / "metrics.json").write_text(json.dumps({**metrics, "stages": stages}, indent=2, default=str))
