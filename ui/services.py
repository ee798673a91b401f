"""The thin calls the UI makes: open models, estimate, build recipes, enqueue / cancel / re-run / delete runs, read
runs, find or start importance analyses, compare two models, build downloads.

No torch math and no weights here: models are described from their headers in a child process, analysed and
compared by jobs on the workers (`workers.analysis`, `workers.compare_job`); runs live in `storage` and run in
`workers`. Modules that pull in torch are imported inside the functions that need them, so the page is up before
torch is.

    opened = open_model("demo")               # OpenedModel(source="demo", summary={...})
    est = estimate_slimming(opened.summary, {"expert_keep_ratio": 0.5})
    run_id = enqueue(recipe_from(opened.source, form))

Models come only from the model roots (`allowed_model_roots`: `--model-root` / MOE_STUDIO_MODEL_ROOTS, default the
data folder and the working directory, plus the cache's uploads and extractions), hub ids from the hub box only
(`allowed_source`). Uploads are staged into the studio cache under its quota by `ui.uploads`.
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from compressor.estimate import Estimate, ModelShape, SlimSettings, estimate, quantized_checkpoint_bytes
from compressor.recipe import Recipe
from compressor.studio_cache import discard_staged   # open_model removes a refused upload's files
from storage import artifacts, catalog, repo
from storage.models import RunStatus

ORIGINAL = "original"


# -- where models may come from: workers.roots (the worker applies the same rule again before it loads) ------------
from workers.roots import ROOTS_ENV, ROOTS_HINT, allowed_model_roots, allowed_source  # noqa: E402,F401


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


_FRAMES = _LRU(4)
_CATALOG_LOCK = threading.Lock()


@dataclass
class OpenedModel:
    source: str          # what a recipe names: "demo", an absolute folder / archive path, or "org/name@rev"
    label: str           # short name for people
    summary: dict        # compressor.inspect.inspect_model + tie_word_embeddings
    fingerprint: str
    model_id: int | None  # row in storage.catalog


def open_memory_bytes() -> int:
    """Address-space ceiling of the process that opens models for the studio: `MOE_STUDIO_OPEN_MEMORY` (e.g. 4gb)."""
    from compressor.studio_cache import parse_size
    return parse_size(os.environ.get("MOE_STUDIO_OPEN_MEMORY") or "4gb", name="MOE_STUDIO_OPEN_MEMORY")


def open_model(text: str, *, discard_on_failure: bool = False) -> OpenedModel:
    """Parse and describe a model source from its config.json and weight headers (no weights are read), in a
    memory-capped child process (`compressor.isolate`), never in the web process; record it in the catalogue.
    With `discard_on_failure` (an upload this request staged) a refused upload's files are deleted from the cache;
    a local folder that fails is never deleted, even one inside the cache (another session's extraction).
    Raises readable errors (SourceError, ArchiveError, CheckpointError, UnsupportedModelError, IsolatedFailure)."""
    from compressor.describe import describe_source
    from compressor.isolate import run_isolated
    from compressor.sources import parse_source

    src = parse_source(text)
    try:
        if src.kind == "archive":
            # Extracted here, before the isolated open: the child opens one model at a time behind one lock and a
            # timeout, which a 1 GiB extraction would hold for everyone (the child then finds it in the cache).
            # Extraction is bounded by compressor.archive's caps, so it needs no memory ceiling.
            from compressor.sources import extract_cached
            extract_cached(Path(src.location))
        opened = run_isolated(describe_source, str(src), memory_bytes=open_memory_bytes())
    except Exception:
        if discard_on_failure:
            discard_staged(str(src))   # only the cache's uploads/ and archives/, never an entry a run has pinned
        raise
    source, summary = opened["source"], opened["summary"]
    fingerprint = summary.pop("fingerprint")
    with _CATALOG_LOCK:     # catalog.upsert_model is select-then-insert: two opens of one model must not race
        model_id = catalog.upsert_model(source=source, fingerprint=fingerprint, summary=summary)
    label = src.location if src.kind == "demo" else (Path(source).name if src.kind != "hub" else source)
    return OpenedModel(source=source, label=label, summary=summary, fingerprint=fingerprint, model_id=model_id)


# -- compress -------------------------------------------------------------------------------------------------------
def estimate_slimming(summary: dict, slimming: dict, *, stages: int = 1) -> Estimate:
    """What `slimming` leaves of the model, after the feasibility rules the pipeline applies before any work
    (`compressor.estimate.check_settings` -> `compressor.feasibility`: FeasibilityError naming each problem)."""
    return estimate(ModelShape.from_summary(summary), SlimSettings.from_recipe(slimming), stages=stages)


def estimate_quantized_bytes(summary: dict, slimming: dict, scheme: str) -> int:
    shape = ModelShape.from_summary(summary)
    return quantized_checkpoint_bytes(shape, estimate(shape, SlimSettings.from_recipe(slimming)), scheme)


def streamed_refusal(summary: dict, recipe: Recipe) -> str | None:
    """What a layer-by-layer run of `recipe` would refuse, when this machine would run it layer by layer
    (`compressor.engine.residency`, the pipeline's own rule); None when it runs in memory or has nothing to refuse."""
    from compressor.engine.residency import layered_problems, residency_of_recipe
    streams, reason = residency_of_recipe(recipe, params=float(summary["params_total"]))
    problems = layered_problems(recipe) if streams else []
    if not problems:
        return None
    return (f"This run would go layer by layer ({reason}), which refuses: " + "; ".join(problems)
            + ". Change those fields, or set execution.streaming: off on a machine where the model fits.")


def residency(summary: dict, recipe: Recipe) -> tuple[tuple[bool, str], tuple[bool, str]]:
    """((layer by layer?, why) of the recipe as chosen, the same for `execution.streaming: auto`), by the pipeline's
    own rule (`compressor.engine.residency`: the model's size and this machine's total memory); raises ValueError
    for a choice the rule refuses (block-wise recovery in memory)."""
    from compressor.engine.residency import residency_of_recipe
    params = float(summary["params_total"])
    auto = recipe.model_copy(update={"execution": recipe.execution.model_copy(update={"streaming": "auto"})})
    return residency_of_recipe(recipe, params=params), residency_of_recipe(auto, params=params)


def recipe_from(model_source: str, form: dict) -> Recipe:
    """A validated Recipe from the Compress form: {"slimming": {...}, "distill": {...}, "calibration": {...},
    "evaluate": {...}, "stages": n, "seed": s}. Raises RecipeError naming the bad fields, SourceError for a model
    source outside the roots (`allowed_source`)."""
    allowed_source(model_source)
    return Recipe.parse({"model": model_source, **form})


def enqueue(recipe: Recipe, *, name: str = "") -> int:
    """Queue a run of `recipe`, whose model must be one the studio may open (`allowed_source`)."""
    allowed_source(recipe.model)
    from workers.service import enqueue_run
    return enqueue_run(recipe, name=name)


def cancel(run_id: int) -> str:
    from workers.service import cancel_run
    return cancel_run(run_id)


def rerun(run_id: int) -> int:
    """Queue the recipe of run `run_id` again, if its model is still one the studio may open."""
    allowed_source(str((repo.get_run(int(run_id)).recipe or {}).get("model", "")))
    from workers.service import rerun as _rerun
    return _rerun(run_id)


def delete(run_id: int) -> None:
    """Delete the run (row, log, files) and every copy of its zip that Gradio keeps to serve."""
    from workers.service import delete_run
    from ui.tempfiles import forget_download
    delete_run(run_id)
    forget_download(run_id)


# -- runs ------------------------------------------------------------------------------------------------------------
def list_runs(limit: int = 200):
    return repo.list_runs(limit=limit)


def get_run(run_id: int):
    return repo.get_run(run_id)


def run_logs(run_id: int) -> list:
    return repo.get_logs(run_id)


def set_run_notes(run_id: int, *, tags, notes: str):
    """Replace a run's tags (comma-separated text or a list) and notes; the updated row."""
    return repo.set_run_notes(int(run_id), tags=tags, notes=notes)


def name_model(model_id: int | None, source: str, label: str) -> str:
    """Record the name people know an opened source by (an upload's file name), so runs of it are listed under that
    name instead of the cache's sha256 path; return the name the source has: the first one given to it (another
    session uploading the same file under another name does not rename earlier runs; `catalog.label_source`)."""
    if not label:
        return label
    return catalog.label_source(source, label[:200])


def enqueue_edited(recipe: Recipe, *, name: str = "", parent_run_id: int | None = None) -> int:
    """`enqueue`, recording the run whose recipe was loaded into the form (`parent_run_id`) as the new run's parent
    (re-run lineage of an edited recipe)."""
    allowed_source(recipe.model)
    if parent_run_id is not None:
        repo.get_run(int(parent_run_id))            # raises RunNotFound for a parent deleted since
    from workers.service import enqueue_run
    return enqueue_run(recipe, name=name, parent_run_id=parent_run_id)


def model_runs(source: str) -> list:
    """Every run of the model source `source`, newest first (the cost estimate's history)."""
    return [r for r in repo.list_runs(limit=500) if (r.recipe or {}).get("model") == source]


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
    return scores_dir_if_cached(source, settings)


_ANALYSES: dict[tuple, str] = {}          # (model id, settings) -> task id of an analysis this process sent
_ANALYSES_LOCK = threading.Lock()
_LIVE = ("PENDING", "STARTED", "PROGRESS")


def active_analysis(model_id: int, settings) -> str | None:
    """The task id of an analysis of this model with these settings that is queued or running, else None."""
    task = _ANALYSES.get((int(model_id), repr(settings)))
    return task if task is not None and analysis_state(task)["state"] in _LIVE else None


def start_analysis(model_id: int, settings) -> str:
    """Queue an analysis, or return the one already queued or running for the same model and settings (two tabs,
    or the tab and a model change racing, share one job)."""
    from workers.analysis import send_analysis
    with _ANALYSES_LOCK:
        task = active_analysis(model_id, settings)
        if task is None:
            task = _ANALYSES[(int(model_id), repr(settings))] = send_analysis(model_id, settings)
        return task


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


def start_compare(choice_a: str, choice_b: str, *, original: str, prompt: str, settings) -> str:
    """Queue the side-by-side generation of two Compare choices (`compare_source`) as a worker job
    (workers.compare_job); returns the task id for `compare_state`. No model is loaded here."""
    from workers.compare_job import send_compare
    return send_compare(compare_source(choice_a, original), compare_source(choice_b, original), prompt, settings)


def compare_state(task_id: str) -> dict:
    """The comparison job's state (workers.compare_job.compare_state), with "result" as a
    `compressor.compare.Comparison` once the job succeeded."""
    from workers.compare_job import compare_state as _state
    st = _state(task_id)
    if st["result"] is not None:
        from compressor.compare import Comparison
        st["result"] = Comparison.from_dict(st["result"])
    return st
