"""Task accuracy: local JSONL multiple-choice files, and lm-evaluation-harness tasks when `lm_eval` is installed.

A task entry ending in `.jsonl` is a local file (format in `quality.load_mc_task`); any other entry names an
lm-eval task (e.g. `hellaswag`), which needs the `lm_eval` package and its data (a hub download, so a machine online
or a filled Hugging Face datasets cache).

    check_tasks(["my_quiz.jsonl", "arc_easy"])          # raises before any work when something cannot run
    results = run_tasks(model, baseline, tokenizer, ["my_quiz.jsonl"])
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

from compressor.evaluate.quality import load_mc_task, mc_accuracy

LM_EVAL_HINT = "pip install lm-eval (then `lm-eval ls tasks` lists the names)"


def is_local_task(entry: str) -> bool:
    return entry.lower().endswith(".jsonl")


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def check_tasks(tasks: list[str]) -> None:
    """Raise ValueError / FileNotFoundError naming the first task that cannot run here."""
    for entry in tasks:
        if is_local_task(entry):
            if not Path(entry).is_file():
                raise FileNotFoundError(f"evaluate.tasks: local task file not found: {entry}")
        elif not lm_eval_available():
            raise ValueError(f"evaluate.tasks: '{entry}' is an lm-evaluation-harness task, but `lm_eval` is not "
                             f"installed; {LM_EVAL_HINT}, or give a local multiple-choice .jsonl file")


def run_tasks(model: nn.Module, baseline: nn.Module | None, tokenizer, tasks: list[str]) -> dict:
    """{task: {"model": {...}, "baseline": {...}}}; local files give n / accuracy / accuracy_norm."""
    check_tasks(tasks)
    out = {}
    local = [t for t in tasks if is_local_task(t)]
    for entry in local:
        items = load_mc_task(entry)
        res = {"model": mc_accuracy(model, tokenizer, items)}
        if baseline is not None:
            res["baseline"] = mc_accuracy(baseline, tokenizer, items)
        out[Path(entry).stem] = res
    remote = [t for t in tasks if not is_local_task(t)]
    if remote:
        for who, m in (("model", model), ("baseline", baseline)):
            if m is None:
                continue
            for name, metrics in lm_eval_tasks(m, tokenizer, remote).items():
                out.setdefault(name, {})[who] = metrics
    return out


def lm_eval_tasks(model: nn.Module, tokenizer, names: list[str], *, batch_size: int = 8) -> dict:
    """Run lm-eval `names` on an in-memory model: {task: {"accuracy": acc, "accuracy_norm": acc_norm, ...}}."""
    if not lm_eval_available():
        raise ValueError(f"lm-evaluation-harness tasks need the `lm_eval` package: {LM_EVAL_HINT}")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=names)
    except Exception as exc:     # lm-eval raises many kinds (missing data offline, unknown task names)
        raise RuntimeError(f"lm-eval could not run {names}: {exc}; offline machines need the datasets cached") from exc
    out = {}
    for name, metrics in (results or {}).get("results", {}).items():
        row = {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float))}
        out[name] = {"accuracy": row.get("acc"), "accuracy_norm": row.get("acc_norm"), **row}
    return out
