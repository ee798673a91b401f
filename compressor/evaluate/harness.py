"""lm-evaluation-harness on a model in memory (`HFLM(pretrained=model, tokenizer=...)`) or, where vLLM and a CUDA
GPU are present, through lm-eval's `vllm` backend on the saved checkpoint.

Task names are the shipped local tasks (`compressor.evaluate.local_tasks`: YAML over JSONL built from the held-out
text, offline) or any task lm-eval registers (`lm-eval ls tasks`), whose data set lm-eval fetches from the hub: those
fail offline with a message saying so. Unknown names are refused before any work (`check_lm_eval`).

    check_lm_eval(cfg)                                   # LmEvalConfig: raises LmEvalError naming what cannot run
    res = run_lm_eval(model, tokenizer, cfg, backend=resolve_backend(cfg.backend))
    res["tasks"]["sotu_cloze"]["acc"], res["backend"]    # "hf" or "vllm"

Backends: `hf` = the model in memory (what was just slimmed, no reload); `vllm` = the checkpoint folder, loaded by
vLLM's engine (its fused MoE kernels); `auto` = vllm when `vllm` imports and CUDA is available, else hf.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import yaml
from torch import nn

from compressor.evaluate.local_tasks import LOCAL_TASKS, TASK_DIR, TASK_PRESETS, preset_tasks
from compressor.recipe import LmEvalConfig

LM_EVAL_HINT = "pip install 'lm-eval[hf]==0.4.13'"
METRICS = ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "exact_match", "exact_match_stderr")
PREFERRED_FILTER = "strict-match"      # gsm8k reports exact_match under strict-match and flexible-extract


class LmEvalError(ValueError):
    """An lm-eval request that cannot run here; the message says what to change."""


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def vllm_unavailable_reason() -> str | None:
    """None when lm-eval's vllm backend can run here, else why not."""
    if importlib.util.find_spec("vllm") is None:
        return "the `vllm` package is not installed"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA GPU is available (vLLM's engine and its fused MoE kernels need one)"
    return None


def resolve_backend(requested: str) -> str:
    """'hf' or 'vllm' for a requested 'auto' | 'hf' | 'vllm'; an explicit 'vllm' that cannot run raises."""
    if requested == "hf":
        return "hf"
    reason = vllm_unavailable_reason()
    if requested == "vllm" and reason:
        raise LmEvalError(f"lm-eval backend vllm is not available: {reason}; use backend hf (or auto)")
    return "vllm" if reason is None else "hf"


@lru_cache(maxsize=1)
def registered_tasks() -> frozenset[str]:
    """Every task, group and tag name lm-eval knows (indexing its YAML files takes a few seconds; cached)."""
    from lm_eval.tasks import TaskManager
    with _quiet():
        return frozenset(TaskManager().all_tasks)


def expand_presets(tasks: list[str]) -> list[str]:
    """The task list with preset names (`offline`, `papers`: `local_tasks.TASK_PRESETS`) replaced by their tasks, in
    order, each once; `papers` is refused in seconds when the hub is unreachable (`local_tasks.preset_tasks`).

        expand_presets(["offline", "sotu_cloze"])     # ['sotu_completion', 'sotu_cloze', 'sotu_presidents']
    """
    out: list[str] = []
    for t in tasks:
        try:
            names = preset_tasks(t) if t in TASK_PRESETS else [t]
        except ValueError as exc:
            raise LmEvalError(str(exc)) from None
        out += [n for n in names if n not in out]
    return out


def check_lm_eval(cfg: LmEvalConfig) -> None:
    """Raise LmEvalError when `cfg` cannot run here: lm-eval missing, an unknown task name, vllm asked for but
    unavailable, the `papers` preset without the hub. Hub tasks are only checked by name (their data is fetched
    when they run)."""
    if not cfg.tasks:
        return
    cfg = cfg.model_copy(update={"tasks": expand_presets(cfg.tasks)})
    if not lm_eval_available():
        raise LmEvalError(f"evaluate.lm_eval needs the `lm_eval` package: {LM_EVAL_HINT}")
    resolve_backend(cfg.backend)
    others = [t for t in cfg.tasks if t not in LOCAL_TASKS]
    unknown = [t for t in others if t not in registered_tasks()] if others else []
    if unknown:
        raise LmEvalError(f"unknown lm-eval task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: the shipped "
                          f"offline tasks are {', '.join(LOCAL_TASKS)}; `lm-eval ls tasks` lists the harness's own")


def local_task_config(name: str) -> dict:
    """The shipped YAML of task `name` with its JSONL's absolute path filled in (lm-eval resolves relative data
    files against the working directory)."""
    cfg = yaml.safe_load((TASK_DIR / f"{name}.yaml").read_text())
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {split: str(TASK_DIR / f) for split, f in files.items()}
    return cfg


def run_lm_eval(model: nn.Module | None, tokenizer, cfg: LmEvalConfig, *, backend: str,
                checkpoint_dir: Path | None = None) -> dict:
    """Run `cfg.tasks`: {"backend", "tasks": {task: {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n"}},
    "limit", "num_fewshot", "seconds"}. backend "hf" evaluates `model` in memory; "vllm" loads `checkpoint_dir`."""
    check_lm_eval(cfg)
    cfg = cfg.model_copy(update={"tasks": expand_presets(cfg.tasks)})
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    local = all(t in LOCAL_TASKS for t in cfg.tasks)
    specs = [local_task_config(t) if t in LOCAL_TASKS else t for t in cfg.tasks]
    with _quiet() as log:
        lm = _lm(model, tokenizer, cfg, backend, checkpoint_dir)
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=specs, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
                                              task_manager=TaskManager(include_defaults=not local),
                                              bootstrap_iters=0, log_samples=False)
        except (ConnectionError, OSError) as exc:
            hub = [t for t in cfg.tasks if t not in LOCAL_TASKS]
            raise LmEvalError(f"lm-eval task{'s' if len(hub) > 1 else ''} {', '.join(hub)} fetch their data set from "
                              f"the Hugging Face hub, which could not be reached ({str(exc).splitlines()[0][:200]}); "
                              "run once online to fill the datasets cache, or use the shipped offline tasks "
                              f"{', '.join(LOCAL_TASKS)}") from None
        except Exception as exc:
            tail = log.getvalue().strip().splitlines()[-3:]
            raise RuntimeError(f"lm-eval failed on {', '.join(cfg.tasks)}: {exc}" +
                               (f" (last output: {' | '.join(tail)})" if tail else "")) from exc
    return {"backend": backend, "tasks": _metrics(results or {}), "limit": cfg.limit,
            "num_fewshot": cfg.num_fewshot, "seconds": time.perf_counter() - t0}


def _lm(model, tokenizer, cfg: LmEvalConfig, backend: str, checkpoint_dir: Path | None):
    if backend == "vllm":
        if checkpoint_dir is None:
            raise LmEvalError("the vllm backend loads a saved checkpoint folder; none was given")
        from lm_eval.models.vllm_causallms import VLLM
        return VLLM(pretrained=str(checkpoint_dir), tokenizer=str(checkpoint_dir), batch_size="auto", dtype="auto")
    from lm_eval.models.huggingface import HFLM
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)


def _metrics(results: dict) -> dict:
    """lm-eval's {"results": {task: {"acc,none": x, ...}}, "n-samples": {...}} -> {task: {"acc": x, ..., "n": n}}.
    A metric reported under several filters (gsm8k's exact_match) is taken under `PREFERRED_FILTER`."""
    counts = results.get("n-samples", {})
    out = {}
    for task, row in results.get("results", {}).items():
        flat: dict = {}
        for key, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                name, _, filt = key.partition(",")
                if name not in flat or filt.startswith(PREFERRED_FILTER):
                    flat[name] = v
        out[task] = {k: flat.get(k) for k in METRICS if k in flat}
        n = (counts.get(task) or {}).get("effective", row.get("sample_len"))
        if n is not None:
            out[task]["n"] = int(n)
    return out


@contextlib.contextmanager
def _quiet():
    """lm-eval, datasets and transformers draw progress bars and log freely; the library never prints, so their
    output is captured (and quoted in errors) and their loggers lowered to errors."""
    buf = io.StringIO()
    names = ("lm-eval", "lm_eval", "datasets", "transformers", "accelerate")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        import datasets
        bars = datasets.utils.logging.is_progress_bar_enabled()
        datasets.disable_progress_bars()
    except ImportError:
        datasets, bars = None, False
    sys.stderr.flush()
    saved = os.dup(2)                                    # lm-eval's git look-up writes to file descriptor 2
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            os.dup2(null.fileno(), 2)
            yield buf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        if datasets is not None and bars:
            datasets.enable_progress_bars()
