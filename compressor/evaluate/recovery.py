"""Recovery %: how much of the original model's score a compressed model keeps, per task, with its spread over seeds.

As papers report it (SlimMoE, Minitron, LLM-Pruner, REAP): recovery = 100 * metric(compressed) / metric(original)
for a metric where higher is better (accuracy); for one where lower is better (perplexity) the ratio is inverted,
100 * metric(original) / metric(compressed), so 100% always means "as good as the original" and less is worse.
Over seeds the mean and the sample standard deviation (n - 1; 0 for one seed) of the per-seed recoveries are given.
Multiple-choice (log-likelihood) tasks and generative ones are kept apart (`kind`), as papers table them apart.
Torch-free.

    r = task_recovery("sotu_cloze", original=0.50, compressed=[0.45, 0.40])   # mean 85.0, sd 7.07, n 2
    rows = recovery_table({"sotu_cloze": 0.5}, [{"sotu_cloze": 0.45}, {"sotu_cloze": 0.40}])
    print(render_recovery(rows))
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

KINDS = ("multiple_choice", "generative", "perplexity")
LOWER_IS_BETTER = frozenset({"perplexity", "ppl", "nll", "kl", "kl_to_baseline", "word_perplexity"})
# lm-eval's names: log-likelihood multiple choice vs generated answers (exact match)
GENERATIVE_TASKS = frozenset({"gsm8k", "gsm8k_cot", "triviaqa", "nq_open", "drop", "coqa", "squadv2"})


@dataclass(frozen=True)
class Recovery:
    task: str
    kind: str                       # one of KINDS
    metric: str
    original: float
    compressed: tuple[float, ...]   # one per seed
    per_seed: tuple[float, ...]     # recovery % per seed
    mean: float                     # recovery %, mean over seeds
    sd: float                       # sample standard deviation over seeds (0 for one seed)

    @property
    def n(self) -> int:
        return len(self.per_seed)

    def to_dict(self) -> dict:
        return {**asdict(self), "n": self.n}


def recovery_pct(original: float, compressed: float, *, higher_is_better: bool = True) -> float:
    """100 * compressed / original (higher is better) or 100 * original / compressed (lower is better)."""
    num, den = (compressed, original) if higher_is_better else (original, compressed)
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0 or num < 0:
        raise ValueError(f"recovery needs finite, non-negative scores and a positive reference; got original "
                         f"{original!r}, compressed {compressed!r}")
    return 100.0 * num / den


def task_kind(task: str, metric: str = "acc") -> str:
    if metric.lower() in LOWER_IS_BETTER:
        return "perplexity"
    return "generative" if task in GENERATIVE_TASKS else "multiple_choice"


def task_recovery(task: str, *, original: float, compressed: float | Sequence[float], metric: str = "acc",
                  kind: str | None = None) -> Recovery:
    """Recovery of one task over seeds (module doc). `compressed` is one score or one per seed."""
    scores = (float(compressed),) if isinstance(compressed, (int, float)) else tuple(float(c) for c in compressed)
    if not scores:
        raise ValueError(f"{task}: no compressed scores given")
    kind = kind or task_kind(task, metric)
    if kind not in KINDS:
        raise ValueError(f"{task}: kind {kind!r} is not one of {KINDS}")
    higher = metric.lower() not in LOWER_IS_BETTER
    per = tuple(recovery_pct(original, c, higher_is_better=higher) for c in scores)
    mean = sum(per) / len(per)
    sd = math.sqrt(sum((p - mean) ** 2 for p in per) / (len(per) - 1)) if len(per) > 1 else 0.0
    return Recovery(task=task, kind=kind, metric=metric, original=float(original), compressed=scores,
                    per_seed=per, mean=mean, sd=sd)


def recovery_table(original: Mapping[str, float], seeds: Sequence[Mapping[str, float]], *,
                   metrics: Mapping[str, str] | None = None) -> list[Recovery]:
    """One `Recovery` per task of `original` ({task: score}), from `seeds` ([{task: score}] one dict per seed);
    `metrics` names a task's metric when it is not "acc" (e.g. {"perplexity": "perplexity"}). A task missing from a
    seed is an error (a mean over fewer seeds would hide a failed run). Ordered: kind, then task name."""
    metrics = dict(metrics or {})
    if not seeds:
        raise ValueError("no compressed runs given")
    missing = sorted({t for s in seeds for t in original if t not in s})
    if missing:
        raise ValueError(f"tasks {', '.join(missing)} are missing from some seeds' results; rerun or drop them")
    rows = [task_recovery(t, original=v, compressed=[s[t] for s in seeds], metric=metrics.get(t, "acc"))
            for t, v in original.items()]
    return sorted(rows, key=lambda r: (KINDS.index(r.kind), r.task))


def render_recovery(rows: Sequence[Recovery]) -> str:
    """Markdown table: task, kind, metric, original, compressed per seed, recovery % mean ± sd (n)."""
    lines = ["| task | kind | metric | original | compressed (per seed) | recovery % |", "|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r.sd:.1f}" if r.n > 1 else ""
        lines.append(f"| {r.task} | {r.kind} | {r.metric} | {r.original:.4g} | "
                     f"{', '.join(f'{c:.4g}' for c in r.compressed)} | {r.mean:.1f}{spread} (n={r.n}) |")
    return "\n".join(lines)
