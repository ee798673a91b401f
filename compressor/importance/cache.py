"""On-disk score cache: a report is stored under <studio cache>/scores/<key>/<what>/, key = fingerprint(weights,
data, settings) (what the scores are computed from) and <what> = the kinds computed and whether with Taylor. A request
is served by any entry under its key that computed at least what it asks for, so slicing the same model again at
another ratio, a run after Explore's analysis, or `slim` after `analyze` reuses the scores without a calibration pass.

    report = load_or_analyze(model, batches, config=AnalyzeConfig(), weights_fp=loaded.fingerprint)
    report.meta["cache"]       # {"key": ..., "hit": True | False, "dir": ...}
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from compressor.fingerprint import fingerprint, weights_fingerprint
from compressor.importance.analyze import AnalyzeConfig, _unpack, analyze
from compressor.importance.scores import SCORES_VERSION, SUMMARY_FILE, ImportanceReport
from compressor.progress import Reporter
from compressor.sources import studio_cache_dir

# config fields that change nothing a score depends on (paths, versions, output switches)
_RUNTIME_CONFIG_KEYS = {"transformers_version", "use_cache", "output_attentions", "output_hidden_states",
                        "output_router_logits", "return_dict", "dtype", "torch_dtype"}


def scores_cache_dir() -> Path:
    """`$MOE_STUDIO_CACHE/scores`, else `~/.cache/moe-studio/scores`."""
    return studio_cache_dir() / "scores"


def data_fingerprint(batches: Iterable) -> str:
    """sha256 over every batch's ids and mask (shape, dtype, bytes), in order: the same tokens give the same key."""
    h = hashlib.sha256(b"moe-studio/calibration-batches/v1\0")
    for batch in batches:
        ids, mask = _unpack(batch, "cpu")
        for t in (ids, torch.ones_like(ids) if mask is None else mask):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def model_settings(model: nn.Module, *, dtype: torch.dtype | None = None) -> dict:
    """What a score depends on besides the weights: the config (minus private and runtime fields, and its stored
    dtype) and the dtype the scores are computed in (the model's, or `dtype`: what a model loaded in that dtype
    would have, for a caller holding only the meta-device skeleton)."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in _RUNTIME_CONFIG_KEYS}
    return {"config": config, "dtype": str(dtype or next(model.parameters()).dtype)}


def cache_key(*, weights_fp: str, data_fp: str, config: AnalyzeConfig, settings: dict) -> str:
    """key = fingerprint(weights_fp, data_fp, {scores version, the analyze settings the scores depend on (OWL's M,
    the config version; not which kinds were asked for), model settings})."""
    inputs = {"version": config.version, "outlier_m": config.outlier_m}
    return fingerprint(weights_fp, data_fp, {"scores_version": SCORES_VERSION, "analyze": inputs, "model": settings})


def entry_name(config: AnalyzeConfig) -> str:
    """The folder of what `config` computes: its kinds, '+taylor' with gradient scores."""
    return "-".join(config.want) + ("+taylor" if config.taylor else "")


def covers(computed: AnalyzeConfig, asked: AnalyzeConfig) -> bool:
    """True when a report computed by `computed` holds everything `asked` needs."""
    return set(asked.want) <= set(computed.want) and (computed.taylor or not asked.taylor)


def find_entry(folder: Path, asked: AnalyzeConfig) -> Path | None:
    """An entry under a key's folder whose scores cover `asked` (the exact one first), else None."""
    if not folder.is_dir():
        return None
    exact = folder / entry_name(asked)
    for d in [exact, *sorted(p for p in folder.iterdir() if p.is_dir() and p != exact)]:
        try:
            computed = AnalyzeConfig.from_dict(json.loads((d / SUMMARY_FILE).read_text())["meta"]["config"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if covers(computed, asked):
            return d
    return None


def load_or_analyze(model: nn.Module, batches: Iterable, *, config: AnalyzeConfig = AnalyzeConfig(),
                    weights_fp: str | None = None, data_fp: str | None = None, cache_dir: str | Path | None = None,
                    use_cache: bool = True, reporter: Reporter | None = None, analyzer=None) -> ImportanceReport:
    """The cached report for (weights, data, settings) when there is one, else `analyze(...)` and store it.

    weights_fp defaults to `weights_fingerprint(model)` (hashes every tensor; pass `LoadedModel.fingerprint` to
    skip that), data_fp to `data_fingerprint(batches)`. use_cache=False analyses without reading or writing.
    `meta["cache"]` says whether it was a hit and where the scores live. `analyzer(batches, config=...,
    reporter=...)` replaces `analyze(model, ...)` (the layer-by-layer engine passes its own,
    with the meta-device skeleton as `model` for the settings: both paths give the same scores, so they share keys).
    """
    batches = list(batches)
    if analyzer is None:
        def analyzer(b, **kw):
            return analyze(model, b, **kw)
    if not use_cache:
        return analyzer(batches, config=config, reporter=reporter)
    key = cache_key(weights_fp=weights_fp or weights_fingerprint(model), data_fp=data_fp or data_fingerprint(batches),
                    config=config, settings=model_settings(model))
    root = Path(cache_dir) if cache_dir is not None else scores_cache_dir()
    found = find_entry(root / key, config)
    if found is not None:
        try:
            report = ImportanceReport.load(found)
        except (ValueError, OSError, KeyError):
            shutil.rmtree(found, ignore_errors=True)        # unreadable (older version, partial copy): redo
        else:
            report.meta["cache"] = {"key": key, "hit": True, "dir": str(found)}
            return report
    report = analyzer(batches, config=config, reporter=reporter)
    _store(report, root / key, entry_name(config))
    report.meta["cache"] = {"key": key, "hit": False, "dir": str(root / key / entry_name(config))}
    return report


def _store(report: ImportanceReport, root: Path, key: str) -> None:
    """Write into a temporary sibling folder, then rename: readers never see a half-written entry."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=root))
    try:
        report.save(tmp)
        if (root / key).is_dir() and not (root / key / SUMMARY_FILE).is_file():
            shutil.rmtree(root / key, ignore_errors=True)   # a broken entry left by a crash
        try:
            os.replace(tmp, root / key)
        except OSError:                       # another process stored the same key first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
