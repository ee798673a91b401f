"""The thin calls the UI makes: open models, stage uploads, estimate, build recipes, enqueue / cancel / re-run /
delete runs, read runs, find or start importance analyses, compare two models, build downloads.

No torch math here: models are loaded and compared by `compressor`, runs live in `storage` and run in `workers`.
Modules that pull in torch are imported inside the functions that need them, so the page is up before torch is.
Loaded models are kept in a small in-process LRU (`MOE_STUDIO_MODEL_CACHE`, default 3) so that Compare and Explore
do not reload them on every click.

    opened = open_model("demo")               # OpenedModel(source="demo", summary={...})
    est = estimate_slimming(opened.summary, {"expert_keep_ratio": 0.5})
    run_id = enqueue(recipe_from(opened.source, form))
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from compressor.archive import archive_kind
from compressor.estimate import Estimate, ModelShape, SlimSettings, estimate
from compressor.recipe import Recipe
from storage import artifacts, catalog, repo
from storage.models import RunStatus

ORIGINAL = "original"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FOLDER_FILES = re.compile(r"^(config\.json|generation_config\.json|.*\.safetensors|model\.safetensors\.index\.json|"
                           r"tokenizer(_config)?\.json|special_tokens_map\.json|tokenizer\.model|vocab\.(json|txt)|"
                           r"merges\.txt|added_tokens\.json|chat_template\.(jinja|json)|README\.md)$")
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UploadError(ValueError):
    """An upload the studio will not use; the message says what to upload instead."""


def max_upload_bytes() -> int:
    """`MOE_STUDIO_MAX_UPLOAD` (e.g. "20gb", "500mb", or bytes), default 20 GB."""
    raw = (os.environ.get("MOE_STUDIO_MAX_UPLOAD") or "20gb").strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?", raw)
    if not m:
        raise ValueError(f"MOE_STUDIO_MAX_UPLOAD={raw!r}: give a size such as 500mb or 20gb")
    scale = {"b": 1, None: 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)


# -- models ----------------------------------------------------------------------------------------------------------
class _LRU:
    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()
        self.loading: dict[str, threading.Lock] = {}

    def get(self, key: str, load):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            key_lock = self.loading.setdefault(key, threading.Lock())
        with key_lock:                      # one load per key at a time; others wait for it
            with self.lock:
                if key in self.items:
                    return self.items[key]
            value = load()
            with self.lock:
                self.items[key] = value
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
            return value


_MODELS = _LRU(int(os.environ.get("MOE_STUDIO_MODEL_CACHE", "3")))
_FRAMES = _LRU(4)
_CATALOG_LOCK = threading.Lock()


@dataclass
class OpenedModel:
    source: str          # what a recipe names: "demo", an absolute folder / archive path, or "org/name@rev"
    label: str           # short name for people
    summary: dict        # compressor.inspect.inspect_model + tie_word_embeddings
    fingerprint: str
    model_id: int | None  # row in storage.catalog


def loaded_model(source: str):
    """The `compressor.sources.LoadedModel` for a source string, loaded once and kept in the LRU."""
    from compressor.sources import load_model
    return _MODELS.get(f"src:{source}", lambda: load_model(source))


def open_model(text: str) -> OpenedModel:
    """Parse, load and inspect a model source; record it in the catalogue. Raises readable errors (SourceError,
    ArchiveError, UnsupportedModelError) for sources that cannot be used."""
    from compressor.inspect import inspect_model
    from compressor.sources import parse_source

    src = parse_source(text)
    source = str(src)
    loaded = loaded_model(source)
    summary = inspect_model(loaded.model)
    summary["tie_word_embeddings"] = bool(getattr(loaded.model.config, "tie_word_embeddings", False))
    with _CATALOG_LOCK:     # catalog.upsert_model is select-then-insert: two opens of one model must not race
        model_id = catalog.upsert_model(source=source, fingerprint=loaded.fingerprint, summary=summary)
    label = "demo" if src.kind == "demo" else (Path(source).name if src.kind != "hub" else source)
    return OpenedModel(source=source, label=label, summary=summary, fingerprint=loaded.fingerprint,
                       model_id=model_id)


def stage_upload(paths: list[str]) -> str:
    """Copy uploaded files into the studio cache (named by content hash, never by the uploaded name) and return a
    model source: one archive (.zip/.tar.gz/.tgz/.tar), or the files of one model folder (config.json +
    *.safetensors + tokenizer files)."""
    files = [Path(p) for p in paths or [] if p]
    if not files:
        raise UploadError("nothing was uploaded; choose a .zip / .tar.gz of a model folder, or the folder's files")
    total, cap = sum(f.stat().st_size for f in files), max_upload_bytes()
    if total > cap:
        raise UploadError(f"the upload is {total / 2**30:.2f} GB, above the {cap / 2**30:.2f} GB limit "
                          "(MOE_STUDIO_MAX_UPLOAD); pass a local folder path instead")
    pickles = [f.name for f in files if f.name.lower().endswith(_PICKLES)]
    if pickles:
        raise UploadError(f"{', '.join(pickles[:3])}: pickle checkpoints can run code when loaded, so uploads of them "
                          "are refused. Convert the weights to safetensors (model.save_pretrained(dir)) and upload "
                          "the folder's files or a zip of it.")
    from compressor.sources import studio_cache_dir  # lazy: importing ui.services must not import torch
    uploads = studio_cache_dir() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    if len(files) == 1 and archive_kind(files[0]) is not None:
        kind = files[0].name.lower()
        suffix = next(s for s in (".tar.gz", ".tgz", ".tar", ".zip") if kind.endswith(s))
        target = uploads / f"{_sha256(files[0])}{suffix}"
        if not target.exists():
            shutil.copyfile(files[0], target)
        return str(target)
    if any(archive_kind(f) for f in files):
        raise UploadError("upload one archive on its own, or the loose files of one model folder, not both")
    names = [f.name for f in files]
    bad = [n for n in names if not _SAFE_NAME.match(n) or not _FOLDER_FILES.match(n)]
    if bad:
        raise UploadError(f"unexpected file(s) {', '.join(sorted(bad)[:4])}: upload a .zip / .tar.gz of the model "
                          "folder, or only its config.json, *.safetensors and tokenizer files")
    if "config.json" not in names:
        what = "a single safetensors file is not a model by itself" if len(files) == 1 else "config.json is missing"
        raise UploadError(f"{what}: upload config.json together with the *.safetensors and tokenizer files (select "
                          "them all at once), or a zip of the whole folder")
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f.name.encode() + b"\0" + _sha256(f).encode())
    folder = uploads / digest.hexdigest()
    if not folder.is_dir():
        tmp = uploads / f".{folder.name}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        os.replace(tmp, folder)
    return str(folder)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# -- compress -------------------------------------------------------------------------------------------------------
def estimate_slimming(summary: dict, slimming: dict) -> Estimate:
    return estimate(ModelShape.from_summary(summary), SlimSettings.from_recipe(slimming))


def recipe_from(model_source: str, form: dict) -> Recipe:
    """A validated Recipe from the Compress form: {"slimming": {...}, "distill": {...}, "calibration": {...},
    "evaluate": {...}, "stages": n, "seed": s}. Raises RecipeError naming the bad fields."""
    return Recipe.parse({"model": model_source, **form})


def enqueue(recipe: Recipe, *, name: str = "") -> int:
    from workers.service import enqueue_run
    return enqueue_run(recipe, name=name)


def cancel(run_id: int) -> str:
    from workers.service import cancel_run
    return cancel_run(run_id)


def rerun(run_id: int) -> int:
    from workers.service import rerun as _rerun
    return _rerun(run_id)


def delete(run_id: int) -> None:
    from workers.service import delete_run
    delete_run(run_id)


# -- runs ------------------------------------------------------------------------------------------------------------
def list_runs(limit: int = 200):
    return repo.list_runs(limit=limit)


def get_run(run_id: int):
    return repo.get_run(run_id)


def run_logs(run_id: int) -> list:
    return repo.get_logs(run_id)


def finished_runs() -> list:
    """Succeeded runs that still have a checkpoint, newest first."""
    return [r for r in repo.list_runs(status=RunStatus.succeeded.value)
            if (artifacts.run_dir(r.id) / "checkpoint").is_dir()]


def checkpoint_artifact(run_id: int):
    """The run's checkpoint artifact row (bytes, sha256), or None."""
    return next((a for a in repo.get_artifacts(int(run_id)) if a.kind == "checkpoint"), None)


def download_zip(run_id: int) -> Path:
    """The zip of a succeeded run's checkpoint, recipe and metrics (built on first request)."""
    run = repo.get_run(int(run_id))
    if run.status != RunStatus.succeeded.value:
        raise FileNotFoundError(f"run {run.id} is {run.status}; only succeeded runs have a checkpoint to download")
    return artifacts.build_download(run.id)


# -- explore ---------------------------------------------------------------------------------------------------------
def cached_scores_dir(source: str, settings) -> Path | None:
    from workers.analysis import scores_dir_if_cached
    return scores_dir_if_cached(loaded_model(source), settings)


def start_analysis(model_id: int, settings) -> str:
    from workers.analysis import send_analysis
    return send_analysis(model_id, settings)


def analysis_state(task_id: str) -> dict:
    from workers.analysis import analysis_state as _state
    return _state(task_id)


def score_frames(scores_dir: str) -> dict:
    """The pandas tables (experts, neurons, layers) of a stored importance report, kept in a small LRU."""
    from compressor.importance import ImportanceReport
    return _FRAMES.get(f"frames:{scores_dir}", lambda: ImportanceReport.load(scores_dir).to_frames())


# -- compare ---------------------------------------------------------------------------------------------------------
def compare_source(choice: str, original: str) -> str:
    """Model source of a Compare choice: "original" or "run:<id>" (served by run id, never by a typed path)."""
    if choice == ORIGINAL:
        return original
    m = re.fullmatch(r"run:(\d+)", choice or "")
    if not m:
        raise ValueError(f"choose the original or a finished run, not {choice!r}")
    run = repo.get_run(int(m.group(1)))
    path = artifacts.run_dir(run.id) / "checkpoint"
    if run.status != RunStatus.succeeded.value or not path.is_dir():
        raise FileNotFoundError(f"run {run.id} is {run.status} and has no checkpoint to compare")
    return str(path)


def compare(choice_a: str, choice_b: str, *, original: str, prompt: str, settings):
    """Generate with both models and score them (compressor.compare); returns the Comparison."""
    from compressor.compare import compare_models

    a = loaded_model(compare_source(choice_a, original))
    b = loaded_model(compare_source(choice_b, original))
    tokenizer = a.tokenizer or b.tokenizer
    if tokenizer is None:
        raise ValueError("neither model ships tokenizer files, so a prompt cannot be encoded")
    return compare_models(a.model, b.model, tokenizer, prompt, settings=settings)
