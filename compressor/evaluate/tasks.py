"""Task accuracy on local JSONL multiple-choice files (format in `quality.load_mc_task`). lm-evaluation-harness
tasks are `evaluate.lm_eval` (`compressor.evaluate.harness`).

    check_tasks(["my_quiz.jsonl"])          # raises before any work when something cannot run
    results = run_tasks(model, baseline, tokenizer, ["my_quiz.jsonl"])
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from compressor.evaluate.quality import load_mc_task, mc_accuracy


def is_local_task(entry: str) -> bool:
    return entry.lower().endswith(".jsonl")


def check_tasks(tasks: list[str]) -> None:
    """Raise ValueError / FileNotFoundError naming the first task that cannot run here."""
    for entry in tasks:
        if not is_local_task(entry):
            raise ValueError(f"evaluate.tasks: '{entry}' is not a .jsonl file; lm-evaluation-harness tasks go in "
                             "evaluate.lm_eval.tasks (CLI: --lm-eval TASK[,TASK])")
        if not Path(entry).is_file():
            raise FileNotFoundError(f"evaluate.tasks: local task file not found: {entry}")


def run_tasks(model: nn.Module, baseline: nn.Module | None, tokenizer, tasks: list[str]) -> dict:
    """{task: {"model": {...}, "baseline": {...}}}; local files give n / accuracy / accuracy_norm."""
    check_tasks(tasks)
    out = {}
    for entry in tasks:
        items = load_mc_task(entry)
        res = {"model": mc_accuracy(model, tokenizer, items)}
        if baseline is not None:
            res["baseline"] = mc_accuracy(baseline, tokenizer, items)
        out[Path(entry).stem] = res
    return out
