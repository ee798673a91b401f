"""Runs as an experiment table, without Gradio: one `RunRow` per run (status, model, keep ratio, perplexity, size,
time, tags, ...), filtered and sorted on the raw values, written as CSV; Pareto points grouped by base model and
evaluation set; the wall time a recipe should take from earlier runs of the same model.

    rows = run_rows(services.list_runs(), labels=catalog.labels_by_source())
    shown = filter_sort(rows, status=["succeeded"], sort="perplexity")
    groups = pareto_groups(runs, labels)          # {"demo · eval 512 x 256": (points, original)}
    seconds, basis = expected_seconds(recipe, earlier_runs)
"""
from __future__ import annotations

import csv
import io
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from compressor.result import HELDOUT_TEXT, RunResult, Speed
from ui.result_text import merge_label

PPL = ("perplexity",)
ACTIVE = ("params_active",)
SIZE = ("checkpoint_bytes",)
_HASHED = re.compile(r"^[0-9a-f]{64}(\.(zip|tar\.gz|tgz|tar))?$")


# -- metrics ---------------------------------------------------------------------------------------------------------
def flat(d, prefix: str = "") -> dict:
    """{"a.b": leaf} of a nested dict."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _field(part, name: str):
    if name not in type(part).model_fields:
        raise KeyError(f"{name!r} is not a field of the result contract's {type(part).__name__} "
                       f"(compressor/result.py): {', '.join(type(part).model_fields)}")
    v = getattr(part, name)
    return float(v) if _number(v) else None


def _result(metrics: dict | RunResult | None) -> RunResult:
    """A run's metrics read once: callers reading several figures of one run pass its RunResult."""
    return metrics if isinstance(metrics, RunResult) else RunResult.read(metrics)


def metric(metrics: dict | RunResult | None, *names: str):
    """The compressed model's figure `name` (a field of `compressor.result.Figures`, or of `Speed` for speed
    figures), read through the result contract: the first of `names` the run measured, else None."""
    r = _result(metrics)
    for name in names:
        v = _field(r.speed or Speed(), name) if name in Speed.model_fields else _field(r.final, name)
        if v is not None:
            return v
    return None


def baseline_metric(metrics: dict | RunResult | None, *names: str):
    """The same figure of the original model, as the run's evaluation stored it (`RunResult.baseline`; speed as
    Speed.baseline_*)."""
    r = _result(metrics)
    for name in names:
        if name in Speed.model_fields:
            v = _field(r.speed or Speed(), f"baseline_{name}") if f"baseline_{name}" in Speed.model_fields else None
        else:
            v = _field(r.baseline, name)
        if v is not None:
            return v
    return None


def lm_eval_pairs(metrics: dict | RunResult | None) -> list[tuple[str, float | None, float | None]]:
    """(task, this model's acc, the original's acc) of every lm-eval task the run measured."""
    r = _result(metrics)
    return [(t, acc, r.baseline.lm_eval.get(t)) for t, acc in r.final.lm_eval.items()]


# -- one row per run -------------------------------------------------------------------------------------------------
def model_label(source: str, labels: dict[str, str] | None = None) -> str:
    """What people call a model source: its catalogue label (an upload's file name), "demo", a hub id, a folder's
    name; a staged upload without a label shows as "upload <first 8 hex>", never as a 64-character hash."""
    source = str(source or "?")
    if labels and labels.get(source):
        return labels[source]
    name = Path(source).name if "/" in source and Path(source).is_absolute() else source
    if _HASHED.match(name):
        return f"upload {name[:8]}"
    return name


def settings_text(recipe: dict) -> str:
    """One line: the cuts, stages and distillation steps of a recipe (the keep ratio and model have columns)."""
    s, d = recipe.get("slimming", {}), recipe.get("distill", {})
    parts = []
    if s.get("experts_keep"):
        merge = f" ({merge_label(s['expert_merge'])} merge)" if s.get("expert_merge") else ""
        parts.append(f"{s['experts_keep']} experts{merge}")
    if s.get("layers_drop"):
        parts.append(f"drop {s['layers_drop']} layers")
    if s.get("sparsity"):
        parts.append(f"{s['sparsity']:.0%} sparse ({s.get('sparsity_allocation')})")
    parts.append(f"{recipe.get('stages', 1)} stage{'s' if recipe.get('stages', 1) != 1 else ''}")
    parts.append(f"{d.get('steps', 0)} steps")
    if recipe.get("quantize"):
        parts.append(recipe["quantize"].get("scheme", "quantized"))
    return " · ".join(parts)


def summary_text(recipe: dict, labels: dict[str, str] | None = None) -> str:
    """keep ratio, `settings_text` and the model, for choice labels outside the table."""
    keep = (recipe.get("slimming") or {}).get("expert_keep_ratio", 1.0)
    return f"keep {keep:g} · {settings_text(recipe)} · {model_label(recipe.get('model'), labels)}"


def wall_seconds(run) -> float | None:
    """Seconds from start to end of a finished run, or so far of a running one (None before it starts)."""
    if not run.started_at:
        return None
    end = run.finished_at or (run.heartbeat_at if run.status == "running" else None)
    return (end - run.started_at).total_seconds() if end else None


@dataclass
class RunRow:
    """The table's raw values of one run (sorting and CSV use these, the page shows them formatted)."""

    run: int
    name: str
    status: str
    progress: float
    stage: str
    message: str
    model: str
    keep_ratio: float | None
    settings: str
    perplexity: float | None
    active_params: float | None
    size_bytes: float | None
    seconds: float | None
    eta_s: float | None
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    parent: int | None = None
    created: datetime | None = None

    def to_csv(self) -> dict:
        d = asdict(self)
        d["tags"] = ",".join(self.tags)
        d["created"] = self.created.isoformat() if self.created else ""
        return {k: csv_cell("" if v is None else v) for k, v in d.items()}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A CSV cell no spreadsheet runs as a formula (OWASP "CSV injection"): text starting with = + - @, a tab or a
    carriage return gets a single quote in front; numbers stay numbers (a negative loss is still -0.5).

        csv_cell('=HYPERLINK("http://x")')   # "'=HYPERLINK(\"http://x\")"
        csv_cell(-0.5)                        # -0.5
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def run_row(run, labels: dict[str, str] | None = None, *, whole_eta: float | None = None) -> RunRow:
    recipe, result = run.recipe or {}, RunResult.read(run.metrics)
    return RunRow(run=run.id, name=run.name or "", status=run.status, progress=float(run.progress or 0.0),
                  stage=run.stage or "", message=run.message or "", model=model_label(recipe.get("model"), labels),
                  keep_ratio=(recipe.get("slimming") or {}).get("expert_keep_ratio"),
                  settings=settings_text(recipe), perplexity=metric(result, *PPL),
                  active_params=metric(result, *ACTIVE), size_bytes=metric(result, *SIZE),
                  seconds=wall_seconds(run), eta_s=whole_eta, tags=list(getattr(run, "tags", None) or []),
                  notes=getattr(run, "notes", "") or "", parent=run.parent_run_id, created=run.created_at)


SORT_KEYS = {"run": "run", "name": "name", "status": "status", "model": "model", "keep ratio": "keep_ratio",
             "perplexity": "perplexity", "active params": "active_params", "size": "size_bytes",
             "time": "seconds", "created": "created"}


def filter_sort(rows: list[RunRow], *, status=(), model=(), tag: str = "", text: str = "", sort: str = "run",
                descending: bool = True) -> list[RunRow]:
    """Rows whose status is in `status` and model in `model` (empty = any), carrying every comma-separated `tag`,
    and containing `text` in name, notes, settings or model (case-insensitive); sorted by the column `sort`
    (a key of SORT_KEYS) with empty values last in either direction, ties by run id."""
    wanted = [t.strip().lower() for t in (tag or "").split(",") if t.strip()]
    needle = (text or "").strip().lower()
    out = [r for r in rows if (not status or r.status in status) and (not model or r.model in model)
           and all(t in [x.lower() for x in r.tags] for t in wanted)
           and (not needle or needle in " ".join([r.name, r.notes, r.settings, r.model]).lower())]
    attr = SORT_KEYS.get(sort)
    if attr is None:
        raise ValueError(f"cannot sort by {sort!r}; choose one of {', '.join(SORT_KEYS)}")
    present = [r for r in out if getattr(r, attr) is not None]
    missing = [r for r in out if getattr(r, attr) is None]
    present.sort(key=lambda r: (getattr(r, attr), r.run), reverse=descending)
    return present + sorted(missing, key=lambda r: r.run, reverse=descending)


def csv_text(rows: list[RunRow]) -> str:
    """The rows as CSV with a header (raw numbers: bytes, seconds, ratios; tags comma-joined); text cells that a
    spreadsheet would run as a formula are quoted (`csv_cell`)."""
    buf = io.StringIO()
    names = list(RunRow.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=names)
    writer.writeheader()
    for r in rows:
        writer.writerow(r.to_csv())
    return buf.getvalue()


def why_not_comparable(a, b) -> str | None:
    """None when runs `a` and `b` (storage rows) may be compared, else why not: `RunResult.comparable_with` when both
    recorded their evaluation set; for results written before the contract recorded it, the recipes' model and
    evaluation settings (tokens x seq_len of the shipped held-out text) decide."""
    ra, rb = RunResult.read(a.metrics), RunResult.read(b.metrics)
    if ra.eval_set is not None and rb.eval_set is not None:
        return ra.comparable_with(rb)
    pa, pb = a.recipe or {}, b.recipe or {}
    if pa.get("model") != pb.get("model"):
        return f"different base models ({pa.get('model')} and {pb.get('model')})"
    ea, eb = pa.get("evaluate") or {}, pb.get("evaluate") or {}
    if (ea.get("tokens"), ea.get("seq_len")) != (eb.get("tokens"), eb.get("seq_len")):
        return (f"different evaluation sets ({ea.get('tokens')} tokens x {ea.get('seq_len')} and "
                f"{eb.get('tokens')} tokens x {eb.get('seq_len')})")
    return None


# -- Pareto: one front per base model and evaluation set -------------------------------------------------------------
def eval_key(recipe: dict, metrics: dict | RunResult | None = None) -> tuple[str, str]:
    """(label, identity) of a run's evaluation set: "eval <tokens> x <seq_len>" (plus the text when it is not the
    shipped held-out split), and the windows' fingerprint the result contract recorded (the label for results
    written before it)."""
    ev = _result(metrics).eval_set
    if ev is not None:
        label = f"eval {ev.tokens} x {ev.seq_len}" + ("" if ev.text == HELDOUT_TEXT else f" of {ev.text}")
        return label, ev.fingerprint
    e = recipe.get("evaluate") or {}
    label = f"eval {e.get('tokens', '?')} x {e.get('seq_len', '?')}"
    return label, label


def pareto_groups(runs, labels: dict[str, str] | None = None) -> dict[str, tuple[list[dict], dict | None]]:
    """{"<model> · eval <tokens> x <seq_len>": (points, original)} of the succeeded runs, newest group first. Runs of
    one base model evaluated on the same held-out windows (the result's evaluation-set fingerprint) share a group and
    its original (the baseline stored by the group's newest run); runs of another model, or evaluated on other
    windows, never share its front (two sets with one label are told apart by their fingerprint)."""
    done = [r for r in runs if r.status == "succeeded"]
    results = {r.id: RunResult.read(r.metrics) for r in done}                     # each run's metrics read once
    ident = {r.id: (model_label((r.recipe or {}).get("model"), labels), *eval_key(r.recipe or {}, results[r.id]))
             for r in done}
    prints: dict[tuple[str, str], set[str]] = {}
    for model, label, fp in ident.values():
        prints.setdefault((model, label), set()).add(fp)
    groups: dict[str, tuple[list[dict], dict | None]] = {}
    for r in done:
        model, label, fp = ident[r.id]
        key = f"{model} · {label}" + (f" · {fp[:8]}" if len(prints[(model, label)]) > 1 else "")
        recipe = r.recipe or {}
        points, original = groups.setdefault(key, ([], None))
        res = results[r.id]
        points.append({"run_id": r.id, "params_active": metric(res, *ACTIVE),
                       "perplexity": metric(res, *PPL), "label": settings_text(recipe)})
        if original is None:
            base = {"params_active": baseline_metric(res, *ACTIVE), "perplexity": baseline_metric(res, *PPL)}
            if base["params_active"] and base["perplexity"] is not None:
                groups[key] = (points, base)
    return groups


# -- cost before you click -------------------------------------------------------------------------------------------
def work_tokens(recipe: dict) -> float:
    """Tokens a run pushes through the model, the unit its wall time is fitted in: calibration once per stage,
    every distillation step's batch three times (teacher forward, student forward and backward), evaluation of
    the original, of every stage and of the result."""
    c, d, e = recipe.get("calibration") or {}, recipe.get("distill") or {}, recipe.get("evaluate") or {}
    stages = int(recipe.get("stages") or 1)
    distill = int(d.get("steps", 0)) * int(d.get("batch_size", 4)) * int(d.get("seq_len", 256)) \
        * int(d.get("grad_accum", 1))
    return float(int(c.get("tokens", 0)) * stages + 3 * distill + int(e.get("tokens", 0)) * (stages + 2))


def fit_time(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed seconds, seconds per work token) from (work tokens, seconds) of earlier runs: the least-squares line
    when the work differs between runs and its slope and intercept are not negative, else the median seconds per
    token with no fixed part."""
    xs, ys = [x for x, _ in samples], [y for _, y in samples]
    if len(set(xs)) >= 2:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in samples) / sum((x - mx) ** 2 for x in xs)
        fixed = my - slope * mx
        if slope >= 0 and fixed >= 0:
            return fixed, slope
    return 0.0, statistics.median(y / x for x, y in samples if x > 0) if any(x > 0 for x in xs) else 0.0


def expected_seconds(recipe: dict, earlier_runs) -> tuple[float | None, str]:
    """The wall time `recipe` should take on this machine, from the succeeded runs of the same model source
    (`fit_time` over their work tokens and measured start-to-end seconds), with a line saying what it rests on;
    (None, why not) without such runs."""
    model = (recipe or {}).get("model")
    samples = [(work_tokens(r.recipe or {}), wall_seconds(r)) for r in earlier_runs
               if r.status == "succeeded" and (r.recipe or {}).get("model") == model and wall_seconds(r)]
    samples = [(x, y) for x, y in samples if x > 0 and y and y > 0]
    if not samples:
        return None, "no earlier run of this model to estimate from"
    fixed, per_token = fit_time(samples)
    work = work_tokens(recipe)
    n = len(samples)
    rate = f"{1.0 / per_token:,.0f} tokens/s" if per_token > 0 else "no measurable per-token time"
    basis = (f"from {n} earlier run{'s' if n != 1 else ''} of this model: {fixed:.0f} s fixed + {work:,.0f} work "
             f"tokens at {rate}")
    return fixed + per_token * work, basis


def whole_run_eta(run, estimate: float | None) -> float | None:
    """Seconds left of a queued or running run: from its progress (elapsed / progress x (1 - progress)) once past
    5%, else the expected seconds minus the elapsed ones; None when neither is known or the run has ended."""
    if run.status not in ("queued", "running"):
        return None
    elapsed = wall_seconds(run) or 0.0
    p = float(run.progress or 0.0)
    if run.status == "running" and p >= 0.05 and elapsed > 0:
        return elapsed / p * (1.0 - p)
    return max(estimate - elapsed, 0.0) if estimate is not None else None
