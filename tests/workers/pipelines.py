"""A small real pipeline for the worker tests, with the contract of `compressor.pipeline.run_recipe`.

The worker is pointed at it with MOE_STUDIO_PIPELINE=tests.workers.pipelines:run_tiny. Its knobs ride in the
recipe's `model` field, so one worker process serves every test:

    model = "test:steps=20,step_s=0.05,fail_at=3"

Each step does real work: it extends a sha256 hash chain, h_{i+1} = sha256(h_i || i), and appends h_{i+1} to
`out_dir/checkpoint/weights.bin`; the reported loss is 1 / (i + 1). It reports progress through a
`compressor.progress.Reporter` (which checks `should_cancel` first), raises `ValueError` at step `fail_at`, and on
`Cancelled` removes its partial files, as the real pipeline does. When MOE_STUDIO_TEST_EXECUTIONS names a file, every
execution appends "<run folder name> <pid>" to it, so a test can count how often each run really ran.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from compressor.progress import Cancelled, Reporter


@dataclass
class TinyResult:
    metrics: dict
    stages: list[dict] = field(default_factory=list)
    checkpoint_dir: Path = Path()


def knobs(model: str) -> dict[str, float]:
    """"test:steps=3,step_s=0.1" -> {"steps": 3.0, "step_s": 0.1}; defaults for the rest."""
    out = {"steps": 5.0, "step_s": 0.02, "fail_at": -1.0}
    _, _, spec = model.partition(":")
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key not in out:
            raise ValueError(f"unknown test pipeline knob {key!r} in model {model!r}")
        out[key] = float(value)
    return out


def run_tiny(recipe, out_dir: Path, *, on_progress=None, should_cancel=None) -> TinyResult:
    k = knobs(recipe.model)
    steps, out_dir = int(k["steps"]), Path(out_dir)
    if path := os.environ.get("MOE_STUDIO_TEST_EXECUTIONS"):
        with open(path, "a") as fh:
            fh.write(f"{out_dir.name} {os.getpid()}\n")
    reporter = Reporter(on_progress, should_cancel)
    ckpt = out_dir / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(recipe.seed).encode()).digest()
    try:
        for i in range(steps):
            if i == int(k["fail_at"]):
                raise ValueError(f"tiny pipeline: planned failure at step {i}")
            digest = hashlib.sha256(digest + i.to_bytes(8, "little")).digest()
            with open(ckpt / "weights.bin", "ab") as fh:
                fh.write(digest)
            reporter.report("work", step=i + 1, total=steps, message=f"step {i + 1}/{steps} t={time.time():.6f}",
                            loss=1.0 / (i + 1))
            time.sleep(k["step_s"])
        (ckpt / "config.json").write_text(json.dumps({"steps": steps, "seed": recipe.seed}))
        (out_dir / "recipe.yaml").write_text(recipe.to_yaml())
        metrics = {"final_loss": 1.0 / steps if steps else 0.0, "digest": digest.hex(), "steps": steps}
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
    except Cancelled:
        shutil.rmtree(ckpt, ignore_errors=True)
        raise
    stages = [{"stage": "work", "steps": steps, "loss": metrics["final_loss"]},
              {"stage": "export", "bytes": (ckpt / "weights.bin").stat().st_size if steps else 0,
               "eval": {"agreement": 1.0}}]
    return TinyResult(metrics=metrics, stages=stages, checkpoint_dir=ckpt)
