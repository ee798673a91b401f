"""Importance scores of a model named by its source, for the jobs and views that start from a source string:
look them up in the score cache without reading any weight, or compute them in memory or layer by layer
(`compressor.engine.plan` decides, by the one residency rule), under the same cache key either way.

    inputs = scoring_inputs("demo", tokens=4096, seq_len=256, batch_size=8, taylor=True)
    cached_scores_dir(inputs)                       # Path of a finished report, or None (no weights read)
    report = analyze_source(inputs, reporter=Reporter(print))
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from compressor.importance import AnalyzeConfig


@dataclass
class ScoringInputs:
    found: object                # compressor.sources.LocalModel
    tokenizer: object
    batches: list[dict]
    config: AnalyzeConfig
    settings_model: object       # meta-device model: what the cache key reads of the config and dtype
    weights_fp: str


@functools.lru_cache(maxsize=64)
def _fingerprint(root: str, stamp: tuple) -> str:
    from compressor.fingerprint import weights_fingerprint
    return weights_fingerprint(Path(root))


def stable_weights_fingerprint(root: Path) -> str:
    """`weights_fingerprint(root)`, hashed once per process while no weight file's size or mtime changes (a 60 GB
    model is hashed once, not on every look-up)."""
    files = sorted(p for p in Path(root).iterdir() if p.suffix == ".safetensors" and p.is_file())
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint(os.path.realpath(root), stamp)


def scoring_inputs(source: str, *, tokens: int, seq_len: int, batch_size: int, taylor: bool,
                   seed: int = 0) -> ScoringInputs:
    """Calibration batches (the recipe's sampling for these settings), analysis config and cache-key parts of
    `source`, without loading weights. Safetensors only (what the studio opens)."""
    from compressor.data import calibration_for
    from compressor.recipe import CalibrationConfig
    from compressor.sources import load_tokenizer, resolve_local
    from compressor.stream.skeleton import Skeleton

    found = resolve_local(source)
    tokenizer = load_tokenizer(found.local_dir)
    if tokenizer is None:
        raise ValueError(f"{found.source}: the model folder has no tokenizer files, so calibration text cannot be "
                         "encoded; add tokenizer.json / tokenizer_config.json next to config.json")
    batches = calibration_for(tokenizer, CalibrationConfig(tokens=tokens, seq_len=seq_len, batch_size=batch_size),
                              seed=seed)
    return ScoringInputs(found=found, tokenizer=tokenizer, batches=batches, config=AnalyzeConfig(taylor=taylor),
                         settings_model=Skeleton.open(found.local_dir).model,
                         weights_fp=stable_weights_fingerprint(found.local_dir))


def cached_scores_dir(inputs: ScoringInputs) -> Path | None:
    """The cache folder of a finished report for these inputs, else None."""
    from compressor.importance import cache_key, data_fingerprint, scores_cache_dir
    from compressor.importance.cache import find_entry, model_settings

    import torch
    data_fp = data_fingerprint(inputs.batches)
    for dtype in (torch.float32, None):          # in memory (float32, see analyze_source), or layer by layer
        key = cache_key(weights_fp=inputs.weights_fp, data_fp=data_fp, config=inputs.config,
                        settings=model_settings(inputs.settings_model, dtype=dtype))
        found = find_entry(scores_cache_dir() / key, inputs.config)
        if found is not None:
            return found
    return None


def analyze_source(inputs: ScoringInputs, *, streaming: str = "auto", reporter=None):
    """The ImportanceReport of these inputs: from the cache, or computed in memory or layer by layer."""
    from compressor.engine.checkpoint import Checkpoint
    from compressor.engine.plan import plan_execution
    from compressor.engine.scores import score_checkpoint
    from compressor.sources import load_model

    import torch
    ckpt = Checkpoint(str(inputs.found.source), inputs.found)
    plan = plan_execution(ckpt.local_dir, streaming, tokens=sum(int(b["input_ids"].numel()) for b in inputs.batches),
                          taylor=inputs.config.taylor, dtype=torch.float32)
    # in memory in float32, as the in-memory pipeline scores (it trains in float32): equal settings, equal cache key,
    # so a run reuses what Explore computed and Explore shows the scores the run cuts by
    model = None if plan.streaming else load_model(str(ckpt.local_dir), dtype=torch.float32).model
    return score_checkpoint(ckpt, inputs.batches, inputs.config, model=model, layered=plan.streaming,
                            weights_fp=inputs.weights_fp, reporter=reporter)
