"""Tab 4, Runs: every run with its status and progress (a timer refreshes it), cancel / re-run / delete with
confirmation, a Pareto scatter of finished runs, and the selected run's loss curve, recipe, log and error.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import gradio as gr
import pandas as pd
import yaml

from ui import figures, services
from ui.common import box, fmt_bytes, fmt_count, fmt_duration, guard, progress_bar, run_id_of

COLUMNS = ["run", "name", "status", "progress", "stage", "settings", "perplexity", "active params", "created"]
DATATYPES = ["number", "str", "html", "html", "str", "str", "str", "str", "str"]
# live loss seen by polling, for runs without a stored curve (per web process; bounded by the runs it saw)
_LOSS_TRACE: dict[int, list[tuple[int, float]]] = {}
_LAST_STEP: dict[int, int] = {}
_OFFSET: dict[int, int] = {}


@dataclass
class RunsTab:
    table: gr.Dataframe
    timer: gr.Timer
    run: gr.Dropdown
    cancel_btn: gr.Button
    rerun_btn: gr.Button
    delete_btn: gr.Button
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    confirm_btn: gr.Button
    keep_btn: gr.Button
    status: gr.HTML
    head: gr.HTML
    loss: gr.Plot
    recipe: gr.Code
    log: gr.Code
    pareto: gr.Plot
    seen: gr.State


def build() -> RunsTab:
    gr.Markdown("### Runs\nRefreshed every 2 seconds. Click a row to see it below.")
    table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), datatype=DATATYPES, interactive=False, wrap=True,
                         max_height=360, column_widths=["6%", "12%", "10%", "12%", "10%", "24%", "9%", "9%", "8%"],
                         elem_id="runs-table")
    timer = gr.Timer(2.0)
    with gr.Row(equal_height=True):
        run = gr.Dropdown([], label="run", show_label=False, container=False, scale=2, min_width=180,
                          elem_id="run-select", allow_custom_value=True)
        cancel_btn = gr.Button("Cancel", scale=1)
        rerun_btn = gr.Button("Re-run (same recipe)", scale=1)
        delete_btn = gr.Button("Delete…", variant="stop", scale=1)
    with gr.Row(visible=False) as confirm_row:
        confirm_text = gr.Markdown("")
        confirm_btn = gr.Button("Yes, delete it", variant="stop", scale=0, min_width=160)
        keep_btn = gr.Button("Keep it", scale=0, min_width=120)
    status = gr.HTML("", elem_classes="status-box")
    head = gr.HTML("", elem_id="run-head")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            loss = gr.Plot(figures.message_figure("select a run"), show_label=False)
        with gr.Column(scale=2):
            recipe = gr.Code("", language="yaml", label="recipe", interactive=False, buttons=["copy"], max_lines=22)
    log = gr.Code("", label="log and error", interactive=False, lines=8, max_lines=18)
    pareto = gr.Plot(figures.message_figure("finished runs appear here"), show_label=False)
    return RunsTab(table, timer, run, cancel_btn, rerun_btn, delete_btn, confirm_row, confirm_text, confirm_btn,
                   keep_btn, status, head, loss, recipe, log, pareto, gr.State({}))


# -- reading runs ----------------------------------------------------------------------------------------------------
def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def metric(metrics: dict | None, *names: str):
    """The first numeric metric whose flattened key ends with one of `names` (model metrics before baseline)."""
    flat = _flat(metrics)
    for name in names:
        for key in sorted(flat, key=lambda k: ("baseline" in k or "original" in k or "before" in k, len(k))):
            v = flat[key]
            if (key == name or key.endswith("." + name)) and isinstance(v, (int, float)) and not isinstance(v, bool):
                if not ("baseline" in key or "original" in key or "before" in key):
                    return float(v)
    return None


def baseline_metric(metrics: dict | None, *names: str):
    """The same metric of the original model, when the evaluation stored it (keys under baseline/original)."""
    flat = _flat(metrics)
    for name in names:
        for key, v in flat.items():
            if any(w in key for w in ("baseline", "original", "before")) and key.split(".")[-1] in (
                    name, f"{name}_before", f"baseline_{name}") and isinstance(v, (int, float)):
                return float(v)
    return None


PPL = ("perplexity", "ppl")
ACTIVE = ("params_active", "active_params", "active")


def settings_text(recipe: dict) -> str:
    s, d = recipe.get("slimming", {}), recipe.get("distill", {})
    parts = [f"keep {s.get('expert_keep_ratio', 1.0):g}"]
    if s.get("experts_keep"):
        parts.append(f"{s['experts_keep']} experts")
    if s.get("layers_drop"):
        parts.append(f"drop {s['layers_drop']} layers")
    if s.get("sparsity"):
        parts.append(f"{s['sparsity']:.0%} sparse ({s.get('sparsity_allocation')})")
    parts.append(f"{recipe.get('stages', 1)} stage{'s' if recipe.get('stages', 1) != 1 else ''}")
    parts.append(f"{d.get('steps', 0)} steps")
    return " · ".join(parts) + f" · {recipe.get('model', '?')}"


def lm_eval_pairs(metrics: dict | None) -> list[tuple[str, float | None, float | None]]:
    """(task, this model's acc, the original's acc) of every lm-eval task the run measured."""
    tasks = ((metrics or {}).get("evaluation") or {}).get("lm_eval", {}).get("tasks", {})
    return [(t, r.get("model", {}).get("acc"), r.get("baseline", {}).get("acc")) for t, r in tasks.items()]


def extras_text(metrics: dict | None) -> str:
    """One line: lm-eval accuracy beside the original's, and the quantized checkpoint size."""
    parts = [f"lm-eval {t} {a:.3f}" + (f" (original {b:.3f})" if b is not None else "")
             for t, a, b in lm_eval_pairs(metrics) if a is not None]
    q = (metrics or {}).get("quantize")
    if q:
        parts.append(f"{q['scheme']} checkpoint {fmt_bytes(q['checkpoint_bytes_after'])} "
                     f"(from {fmt_bytes(q['checkpoint_bytes_before'])})")
    return " · ".join(parts)


def _pill(status: str) -> str:
    return f'<span class="pill {html.escape(status)}">{html.escape(status)}</span>'


def table_frame(runs) -> pd.DataFrame:
    rows = []
    for r in runs:
        ppl = metric(r.metrics, *PPL)
        rows.append([r.id, r.name or "", _pill(r.status),
                     f"{progress_bar(r.progress, r.status)}<small>{r.progress:.0%}</small>",
                     r.stage or ("–" if r.status == "queued" else ""), settings_text(r.recipe or {}),
                     f"{ppl:.2f}" if ppl is not None else "", fmt_count(metric(r.metrics, *ACTIVE)),
                     r.created_at.astimezone().strftime("%m-%d %H:%M:%S") if r.created_at else ""])
    return pd.DataFrame(rows, columns=COLUMNS)


def _choices(runs) -> list[tuple[str, int]]:
    return [(f"#{r.id} · {r.status}" + (f" · {r.name}" if r.name else ""), r.id) for r in runs]


def loss_points(run) -> list[tuple[int, float]]:
    """Distillation loss against the step counted over all stages. In order of preference: a per-step curve stored
    in the stage rows (`losses` / `loss_curve`), the values the Runs timer saw while the run was going, or each
    stage's first and last loss (`distill.first_loss` / `last_loss`)."""
    stored, ends, offset = [], [], 0
    for stage in run.stages or []:
        flat = _flat(stage)
        curve = next((v for k, v in flat.items() if k.split(".")[-1] in ("losses", "loss_curve")
                      and isinstance(v, list)), None)
        steps = int(flat.get("distill.steps") or (len(curve) if curve else 0))
        if curve:
            stored += [(offset + i + 1, float(v)) for i, v in enumerate(curve)
                       if isinstance(v, (int, float)) and math.isfinite(v)]
        for step, key in ((offset + 1, "distill.first_loss"), (offset + steps, "distill.last_loss")):
            if steps and isinstance(flat.get(key), (int, float)):
                ends.append((step, float(flat[key])))
        offset += steps
    if stored:
        return stored
    return sorted(dict(ends + _LOSS_TRACE.get(run.id, [])).items())


def _trace(runs) -> None:
    """Remember the (step, loss) a running run reports during distillation; steps restart in every stage, so they
    are offset to keep counting."""
    for r in runs:
        if r.status != "running" or r.loss is None or r.stage != "distill" or not r.step:
            continue
        trace = _LOSS_TRACE.setdefault(r.id, [])
        last_raw = _LAST_STEP.get(r.id, 0)
        if r.step < last_raw:                      # a new stage started
            _OFFSET[r.id] = _OFFSET.get(r.id, 0) + last_raw
        _LAST_STEP[r.id] = r.step
        point = (_OFFSET.get(r.id, 0) + r.step, float(r.loss))
        if not trace or trace[-1][0] < point[0]:
            trace.append(point)


def detail(run_id) -> tuple[str, object, str, str]:
    """(head html, loss figure, recipe yaml, log text) of one run."""
    if run_id in (None, ""):
        return "", figures.message_figure("select a run"), "", ""
    r = services.get_run(run_id_of(run_id))
    eta = f" · ETA {fmt_duration(r.eta_s)}" if r.status == "running" and r.eta_s else ""
    speed = f" · {r.tokens_per_s:.0f} tok/s" if r.status == "running" and r.tokens_per_s else ""
    where = f"{r.stage or ''} {r.message or ''}"
    if r.finished_at and r.started_at:
        where = (f"{r.status} at {r.finished_at.astimezone():%H:%M:%S} after "
                 f"{fmt_duration((r.finished_at - r.started_at).total_seconds())}"
                 + (f": {r.error[:300]}" if r.status == "failed" and r.error else ""))
    elif r.status == "queued":
        where = "waiting for the worker (it runs one job at a time)"
    name = f" · {html.escape(r.name)}" if r.name else ""
    head = (f"<div style='display:flex;gap:12px;align-items:center;margin:6px 0'><b>Run #{r.id}{name}</b>"
            f"{_pill(r.status)}<div style='flex:1'>{progress_bar(r.progress, r.status)}</div>"
            f"<span>{r.progress:.0%}</span></div><div style='font-size:13px;color:#475569'>"
            f"{html.escape(where)}{eta}{speed}</div>")
    if extras_text(r.metrics):
        head += f"<div style='font-size:13px;color:#475569'>{html.escape(extras_text(r.metrics))}</div>"
    lines = [f"{log.at.astimezone():%H:%M:%S} {log.level:7s} {log.message}" for log in services.run_logs(r.id)]
    if r.error:
        lines += ["", f"ERROR: {r.error}"]
    if r.traceback:
        lines += ["", r.traceback.rstrip()]
    if r.metrics:
        lines += ["", "metrics:", yaml.safe_dump(r.metrics, sort_keys=False).rstrip()]
    fig = figures.loss_curve(loss_points(r), title=f"Run #{r.id}: distillation loss")
    return head, fig, yaml.safe_dump(r.recipe, sort_keys=False), "\n".join(lines)


def pareto_points(runs) -> tuple[list[dict], dict | None]:
    points, original = [], None
    for r in runs:
        if r.status != "succeeded":
            continue
        points.append({"run_id": r.id, "params_active": metric(r.metrics, *ACTIVE),
                       "perplexity": metric(r.metrics, *PPL), "label": settings_text(r.recipe or {})})
        if original is None:
            base = {"params_active": baseline_metric(r.metrics, *ACTIVE),
                    "perplexity": baseline_metric(r.metrics, *PPL)}
            if base["params_active"] and base["perplexity"] is not None:
                original = base
    return points, original


# -- events ----------------------------------------------------------------------------------------------------------
def _detail_signature(run_id, runs) -> str:
    r = next((r for r in runs if r.id == run_id), None)
    if r is None:
        return ""
    return f"{r.id}:{r.status}:{r.progress:.4f}:{r.step}:{r.loss}:{r.message}:{r.stage}"


@guard(outputs=8, status=None, toast=False)
def refresh(selected, seen: dict):
    """Timer tick: table and run choices; the selected run's details when it changed; the Pareto plot when the
    finished runs changed (unchanged parts are skipped, so plots do not flicker)."""
    runs = services.list_runs()
    _trace(runs)
    ids = [r.id for r in runs]
    if selected not in ids:
        selected = ids[0] if ids else None
    seen = dict(seen or {})
    details = [gr.skip()] * 4
    sig = _detail_signature(selected, runs)
    if sig != seen.get("detail") or not sig:
        details = list(show(selected))      # guarded: a broken detail never stops the table refresh
        seen["detail"] = sig
    signature = ",".join(f"{r.id}:{r.status}" for r in runs if r.status == "succeeded")
    pareto = gr.skip()
    if signature != seen.get("pareto"):
        points, original = pareto_points(runs)
        pareto = figures.pareto(points, original=original)
        seen["pareto"] = signature
    return (table_frame(runs), gr.update(choices=_choices(runs), value=selected), *details, pareto, seen)


@guard(outputs=4, status=0)
def show(run_id):
    """Details of the chosen run: (head, loss curve, recipe, log)."""
    return detail(run_id)


def pick_row(evt: gr.SelectData, frame: pd.DataFrame):
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return int(frame.iloc[row]["run"])


@guard(outputs=1, status=0)
def cancel(run_id):
    run_id = run_id_of(run_id)
    status = services.cancel(run_id)
    return box(f"Run #{run_id}: {'cancelled' if status == 'cancelled' else 'stopping after the current step'}"
               if status in ("cancelled", "running") else f"Run #{run_id} is already {status}.", "ok")


@guard(outputs=2, status=0)
def rerun(run_id):
    run_id = run_id_of(run_id)
    new = services.rerun(run_id)
    return box(f"Run #{new} queued with the recipe of run #{run_id}.", "ok"), new


@guard(outputs=3, status=0)
def ask_delete(run_id):
    r = services.get_run(run_id_of(run_id))
    return "", gr.update(visible=True), (f"**Delete run #{r.id}** ({r.status}) with its checkpoint, metrics and "
                                         "log? This cannot be undone.")


@guard(outputs=2, status=0)
def confirm_delete(run_id):
    run_id = run_id_of(run_id)
    services.delete(run_id)
    return box(f"Run #{run_id} deleted.", "ok"), gr.update(visible=False)


def wire(tab: RunsTab) -> tuple[list, list]:
    """Wire the tab; returns (inputs, outputs) of `refresh` so other tabs can chain it."""
    outs = [tab.table, tab.run, tab.head, tab.loss, tab.recipe, tab.log, tab.pareto, tab.seen]
    ins = [tab.run, tab.seen]
    tab.timer.tick(refresh, ins, outs, api_name="runs_refresh", show_progress="hidden")
    details = [tab.head, tab.loss, tab.recipe, tab.log]
    tab.table.select(pick_row, tab.table, tab.run, api_name="runs_pick", show_progress="hidden").then(
        show, tab.run, details, api_name="runs_pick_detail", show_progress="hidden")
    tab.run.input(show, tab.run, details, api_name="run_detail", show_progress="hidden")
    tab.cancel_btn.click(cancel, tab.run, tab.status, api_name="cancel_run")
    tab.rerun_btn.click(rerun, tab.run, [tab.status, tab.run], api_name="rerun").then(
        refresh, ins, outs, api_name="runs_after_rerun", show_progress="hidden")
    tab.delete_btn.click(ask_delete, tab.run, [tab.status, tab.confirm_row, tab.confirm_text], api_name="ask_delete")
    tab.keep_btn.click(lambda: gr.update(visible=False), None, tab.confirm_row, api_name="keep_run")
    tab.confirm_btn.click(confirm_delete, tab.run, [tab.status, tab.confirm_row], api_name="delete_run").then(
        refresh, ins, outs, api_name="runs_after_delete", show_progress="hidden")
    return ins, outs
