"""What the Runs tab draws from runs: the table's cells (progress with "starting worker" while a job has not
reported yet, whole-run ETA), the selected run's head (status, lineage, ETA), its loss curve with stage boundaries,
its log. Reads runs through ui.services; no Gradio components are built here.
"""
from __future__ import annotations

import html
import math

import pandas as pd
import yaml

from ui import figures, services
from ui.common import fmt_bytes, fmt_count, fmt_duration, progress_bar, run_id_of
from compressor.result import RunResult
from ui.result_text import merge_lines, speed_text
from ui.run_table import RunRow, expected_seconds, lm_eval_pairs, whole_run_eta

COLUMNS = ["", "run", "name", "status", "progress", "model", "keep", "settings", "perplexity", "active", "size",
           "time", "tags"]
DATATYPES = ["str", "number", "str", "html", "html", "str", "str", "str", "str", "str", "str", "str", "str"]
WIDTHS = ["3%", "4%", "10%", "9%", "11%", "8%", "5%", "12%", "9%", "6%", "7%", "8%", "8%"]
STARTING = "starting worker"
# live loss seen by polling, for runs without a stored curve (per web process; bounded by the runs it saw)
_LOSS_TRACE: dict[int, list[tuple[int, float]]] = {}
_LAST_STEP: dict[int, int] = {}
_OFFSET: dict[int, int] = {}
_STAGE_STARTS: dict[int, list[int]] = {}


def pill(status: str) -> str:
    return f'<span class="pill {html.escape(status)}">{html.escape(status)}</span>'


def waiting_text(run, runs) -> str | None:
    """What a run that has reported no progress yet is waiting for: another job ("queued behind #k") or a job
    process being started ("starting worker"); None once the job reports."""
    if run.status == "queued":
        ahead = [r.id for r in runs if r.status == "running"]
        return f"queued behind #{ahead[0]}" if ahead else STARTING
    if run.status == "running" and not run.stage and not run.progress:
        return STARTING
    return None


def progress_cell(row: RunRow, waiting: str | None) -> str:
    text = waiting or (f"{row.progress:.0%}" + (f" · {html.escape(row.stage)}" if row.stage and
                                                row.status == "running" else ""))
    return f"{progress_bar(row.progress, row.status)}<small>{text}</small>"


def time_cell(row: RunRow) -> str:
    if row.status == "running" and row.eta_s is not None:
        return f"{fmt_duration(row.seconds)} · ETA {fmt_duration(row.eta_s)}"
    if row.status == "queued" and row.eta_s is not None:
        return f"~{fmt_duration(row.eta_s)}"
    return fmt_duration(row.seconds) if row.seconds is not None else ""


def display_frame(rows: list[RunRow], runs_by_id: dict, selected: int | None) -> pd.DataFrame:
    """The table as the page shows it; the selected run's row is marked ▶ (the mark follows the run, not a row
    position, so it stays right after a delete, a sort or a filter)."""
    runs = list(runs_by_id.values())
    data = [["▶" if r.run == selected else "", r.run, r.name + (f" ← #{r.parent}" if r.parent else ""),
             pill(r.status),
             progress_cell(r, waiting_text(runs_by_id[r.run], runs)), r.model,
             f"{r.keep_ratio:g}" if r.keep_ratio is not None else "", r.settings,
             f"{r.perplexity:.2f}" if r.perplexity is not None else "", fmt_count(r.active_params),
             fmt_bytes(r.size_bytes) if r.size_bytes else "", time_cell(r), ", ".join(r.tags)] for r in rows]
    return pd.DataFrame(data, columns=COLUMNS)


def run_estimates(runs) -> dict[int, float | None]:
    """Whole-run ETA of every queued or running run (`run_table.whole_run_eta`, the expected seconds fitted on the
    succeeded runs of its model)."""
    done = [r for r in runs if r.status == "succeeded"]
    out = {}
    for r in runs:
        if r.status in ("queued", "running"):
            out[r.id] = whole_run_eta(r, expected_seconds(r.recipe or {}, done)[0])
    return out


# -- loss --------------------------------------------------------------------------------------------------------
def loss_points(run) -> tuple[list[tuple[int, float]], list[int]]:
    """(points, stage starts): distillation loss against the step counted over all stages (1-based), and the global
    step at which each stage after the first starts, read through the result contract (`RunResult.stages`). In
    order of preference: every step's loss (results of version 1 on), the values the Runs timer saw while the run
    was going, or each stage's first and last loss (older results)."""
    stored, ends, starts, offset = [], [], [], 0
    for stage in RunResult.read({"stages": run.stages or []}).stages:
        steps = stage.distill_steps or len(stage.losses)
        if offset and steps:
            starts.append(offset + 1)
        if stage.losses and len(stage.losses) == steps:
            stored += [(offset + i + 1, v) for i, v in enumerate(stage.losses) if math.isfinite(v)]
        elif len(stage.losses) == 2:                      # an older result: first and last loss of the stage
            ends += [(offset + 1, stage.losses[0]), (offset + steps, stage.losses[1])]
        offset += steps
    if stored:
        return stored, starts
    points = sorted(dict(ends + _LOSS_TRACE.get(run.id, [])).items())
    return points, starts or list(_STAGE_STARTS.get(run.id, []))


def trace(runs) -> None:
    """Remember the (step, loss) a running run reports during distillation; steps restart in every stage, so they
    are offset to keep counting, and each restart is a stage boundary."""
    for r in runs:
        if r.status != "running" or r.loss is None or r.stage != "distill" or not r.step:
            continue
        points = _LOSS_TRACE.setdefault(r.id, [])
        last_raw = _LAST_STEP.get(r.id, 0)
        if r.step < last_raw:                      # a new stage started
            _OFFSET[r.id] = _OFFSET.get(r.id, 0) + last_raw
            _STAGE_STARTS.setdefault(r.id, []).append(_OFFSET[r.id] + 1)
        _LAST_STEP[r.id] = r.step
        point = (_OFFSET.get(r.id, 0) + r.step, float(r.loss))
        if not points or points[-1][0] < point[0]:
            points.append(point)


# -- the selected run ----------------------------------------------------------------------------------------------
def extras_text(metrics: dict | None) -> str:
    """One line: the speed-ups with their spread (and whether they are within the machine's noise), lm-eval
    accuracy beside the original's, and the quantized checkpoint size."""
    speed = RunResult.read(metrics).speed
    parts = [f"{which} {text}" for which in ("prefill", "decode") if (text := speed_text(speed, which))]
    parts += [f"lm-eval {t} {a:.3f}" + (f" (original {b:.3f})" if b is not None else "")
              for t, a, b in lm_eval_pairs(metrics) if a is not None]
    q = (metrics or {}).get("quantize")
    if q:
        parts.append(f"{q['scheme']} checkpoint {fmt_bytes(q['checkpoint_bytes_after'])} "
                     f"(from {fmt_bytes(q['checkpoint_bytes_before'])})")
    return " · ".join(parts)


def _where(r, runs) -> str:
    if r.finished_at and r.started_at:
        return (f"{r.status} at {r.finished_at.astimezone():%H:%M:%S} after "
                f"{fmt_duration((r.finished_at - r.started_at).total_seconds())}"
                + (f": {r.error[:300]}" if r.status == "failed" and r.error else ""))
    waiting = waiting_text(r, runs)
    if waiting == STARTING:
        return f"{STARTING} (a job process is being started for this run)"
    if waiting:
        return f"{waiting} (the worker runs one job at a time)"
    return f"{r.stage or ''} {r.message or ''}"


def head_html(r, runs) -> str:
    eta = run_estimates(runs).get(r.id) if r.status in ("queued", "running") else None
    eta_text = f" · ETA {fmt_duration(eta)} for the whole run" if eta is not None else ""
    speed = f" · {r.tokens_per_s:.0f} tok/s" if r.status == "running" and r.tokens_per_s else ""
    name = f" · {html.escape(r.name)}" if r.name else ""
    lineage = (f"<span style='font-size:13px;color:#475569'>parent run #{r.parent_run_id}</span>"
               if r.parent_run_id else "")
    out = (f"<div data-run='{r.id}' style='display:flex;gap:12px;align-items:center;margin:6px 0;flex-wrap:wrap'>"
           f"<b>Run #{r.id}{name}</b>{pill(r.status)}{lineage}<div style='flex:1;min-width:120px'>"
           f"{progress_bar(r.progress, r.status)}</div><span>{r.progress:.0%}</span></div>"
           f"<div style='font-size:13px;color:#475569'>{html.escape(_where(r, runs))}{eta_text}{speed}</div>")
    if extras_text(r.metrics):
        out += f"<div style='font-size:13px;color:#475569'>{html.escape(extras_text(r.metrics))}</div>"
    return out + merge_html(r)


def merge_html(r) -> str:
    """Which experts an expert merge folded into which (`RunResult.merges`), under a summary line; '' otherwise."""
    lines = merge_lines(RunResult.read({**(r.metrics or {}), "stages": r.stages or []}))
    if not lines:
        return ""
    rows = "".join(f"<div>{html.escape(line)}</div>" for line in lines[1:])
    return (f"<details class='merge-groups' style='font-size:13px;color:#475569;margin:4px 0'><summary>"
            f"merged experts: {html.escape(lines[0])}</summary><div style='font-family:monospace;font-size:12px'>"
            f"{rows}</div></details>")


def log_text(r) -> str:
    lines = [f"{log.at.astimezone():%H:%M:%S} {log.level:7s} {log.message}" for log in services.run_logs(r.id)]
    if r.error:
        lines += ["", f"ERROR: {r.error}"]
    if r.traceback:
        lines += ["", r.traceback.rstrip()]
    if r.metrics:
        lines += ["", "metrics:", yaml.safe_dump(r.metrics, sort_keys=False).rstrip()]
    return "\n".join(lines)


def detail(run_id, runs=None) -> tuple[str, object, str, str]:
    """(head html, loss figure, recipe yaml, log text) of one run."""
    if run_id in (None, ""):
        return "", figures.message_figure("pick a run in the table or the list"), "", ""
    r = services.get_run(run_id_of(run_id))
    points, starts = loss_points(r)
    fig = figures.loss_curve(points, stages=starts, title=f"Run #{r.id}: distillation loss")
    return head_html(r, runs if runs is not None else [r]), fig, yaml.safe_dump(r.recipe, sort_keys=False), \
        log_text(r)
