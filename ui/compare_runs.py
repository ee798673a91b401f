"""Compare N finished runs of one base model (part of tab 5): their metrics side by side with the original's, a recipe
diff (only the fields that differ), and their loss curves overlaid with stage boundaries, smoothing and a log axis.
Everything comes from the runs table; no job, no weights.

    metrics_frame(runs)          # metric | original | #3 · name | #5 · name ...
    recipe_diff(runs)            # field | #3 | #5 ...   (fields whose values differ only)
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from storage import catalog
from ui import figures, services
from ui.common import box, fmt_bytes, fmt_count, fmt_duration, guard, run_id_of
from ui.result_text import merge_summary, overlap, speed_text
from compressor.result import RunResult
from ui.run_table import (ACTIVE, PPL, SIZE, baseline_metric, flat, lm_eval_pairs, metric, model_label, wall_seconds,
                          why_not_comparable)
from ui.run_view import loss_points

# (row name, metric names, how to show a value)
ROWS = [("perplexity", PPL, lambda v: f"{v:.3f}"),
        ("top-1 agreement with the original", ("top1_agreement",), lambda v: f"{v:.3f}"),
        ("KL to the original", ("kl_to_baseline",), lambda v: f"{v:.4f}"),
        ("active params", ACTIVE, fmt_count),
        ("total params", ("params_total",), fmt_count),
        ("checkpoint", SIZE, fmt_bytes),
        ("prefill tokens/s", ("prefill_tokens_per_s",), lambda v: f"{v:,.0f}"),
        ("decode tokens/s", ("decode_tokens_per_s",), lambda v: f"{v:.1f}")]


@dataclass
class CompareRunsTab:
    runs: gr.Dropdown
    go: gr.Button
    status: gr.HTML
    metrics: gr.Dataframe
    diff: gr.Dataframe
    smoothing: gr.Slider
    log_y: gr.Checkbox
    loss: gr.Plot


def build() -> CompareRunsTab:
    gr.Markdown("### Compare finished runs\nPick two or more finished runs of one base model: metrics beside the "
                "original's, the recipe fields that differ, the loss curves overlaid (dotted: a stage starts).")
    with gr.Row(equal_height=True):
        runs = gr.Dropdown([], value=[], multiselect=True, label="finished runs (one base model)", scale=4,
                           elem_id="cmp-runs", allow_custom_value=True)
        go = gr.Button("Compare runs", variant="primary", scale=1, min_width=140, elem_id="cmp-runs-go")
    status = gr.HTML("", elem_classes="status-box", elem_id="cmp-runs-status")
    # One table per row of the page, each laid out to its width (ui.common.CSS): side by side, and sized by their
    # content, four runs did not fit and runs 3 and 4 hid behind a horizontal scroll (issue 27, item 10).
    metrics = gr.Dataframe(pd.DataFrame(columns=["metric", "original"]), interactive=False, wrap=True,
                           label="metrics (original = the base model; speed-ups with the range of their rounds)",
                           max_height=1200, elem_id="cmp-runs-metrics")
    diff = gr.Dataframe(pd.DataFrame(columns=["field"]), interactive=False, wrap=True,
                        label="recipe: the fields that differ", elem_id="cmp-runs-diff")
    with gr.Row(equal_height=True):
        smoothing = gr.Slider(0.0, 0.95, value=0.0, step=0.05, label="smoothing (exponential moving average)",
                              scale=3)
        log_y = gr.Checkbox(False, label="log loss axis", scale=1)
    loss = gr.Plot(figures.message_figure("loss curves of the chosen runs"), show_label=False, elem_id="cmp-runs-loss")
    return CompareRunsTab(runs, go, status, metrics, diff, smoothing, log_y, loss)


# -- tables ----------------------------------------------------------------------------------------------------------
def _column(r) -> str:
    return f"#{r.id}" + (f" · {r.name}" if r.name else "")


def check_same_model(runs) -> None:
    """Refuse fewer than two runs, runs that have not succeeded, and runs of different base models."""
    if len(runs) < 2:
        raise ValueError("pick at least two finished runs to compare")
    not_done = [f"#{r.id} ({r.status})" for r in runs if r.status != "succeeded"]
    if not_done:
        raise ValueError(f"only finished runs can be compared; {', '.join(not_done)} did not succeed")
    models = {(r.recipe or {}).get("model") for r in runs}
    if len(models) > 1:
        labels = catalog.labels_by_source()
        names = ", ".join(f"#{r.id} {model_label((r.recipe or {}).get('model'), labels)}" for r in runs)
        raise ValueError(f"these runs are of different base models ({names}); compare runs of one model")
    for r in runs[1:]:
        why = why_not_comparable(runs[0], r)
        if why:
            raise ValueError(f"runs #{runs[0].id} and #{r.id} cannot be compared: {why}")


def metrics_frame(runs) -> pd.DataFrame:
    """metric | original | one column per run; the original's figures come from the first run that stored them."""
    rows = []
    results = [RunResult.read({**(r.metrics or {}), "stages": r.stages or []}) for r in runs]   # each read once
    for name, keys, show in ROWS:
        values = [metric(res, *keys) for res in results]
        base = next((b for b in (baseline_metric(res, *keys) for res in results) if b is not None), None)
        if all(v is None for v in values):
            continue
        rows.append([name, show(base) if base is not None else "–",
                     *[show(v) if v is not None else "–" for v in values]])
    for which in ("prefill", "decode"):                 # the ratio, its rounds' range, and whether that is noise
        texts = [speed_text(res.speed, which) for res in results]
        if any(texts):
            ranges = [getattr(res.speed, f"{which}_speedup_range", None) for res in results]
            same = len([r for r in ranges if r]) > 1 and all(overlap(a, b) is not False
                                                               for a in ranges for b in ranges)
            rows.append([f"{which} speed-up" + (" (ranges overlap: runs within noise of each other)"
                                                if same else ""), "1.00x", *[t or "–" for t in texts]])
    merges = [merge_summary(res) for res in results]
    if any(merges):
        rows.append(["expert merge", "", *[m or "pruned / none" for m in merges]])
    tasks = dict.fromkeys(t for res in results for t, _, _ in lm_eval_pairs(res))
    for task in tasks:
        pairs = [{t: (a, b) for t, a, b in lm_eval_pairs(res)}.get(task, (None, None)) for res in results]
        base = next((b for _, b in pairs if b is not None), None)
        rows.append([f"lm-eval {task}", f"{base:.3f}" if base is not None else "–",
                     *[f"{a:.3f}" if a is not None else "–" for a, _ in pairs]])
    rows.append(["wall time", "", *[fmt_duration(wall_seconds(r)) for r in runs]])
    return pd.DataFrame(rows, columns=["metric", "original", *[_column(r) for r in runs]])


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else "null" if v is None else str(v)


def recipe_diff(runs) -> pd.DataFrame:
    """field | one column per run, for the recipe fields (flattened, "distill.steps") whose values differ; a field
    one recipe lacks shows as "(absent)"."""
    recipes = [flat(r.recipe or {}) for r in runs]
    fields = list(dict.fromkeys(k for d in recipes for k in d))
    missing = object()
    rows = [[f, *[_show(d.get(f)) if f in d else "(absent)" for d in recipes]] for f in fields
            if len({json.dumps(d.get(f, missing), sort_keys=True, default=str) for d in recipes}) > 1]
    return pd.DataFrame(rows, columns=["field", *[_column(r) for r in runs]])


def loss_figure(runs, *, smoothing: float = 0.0, log_y: bool = False):
    curves = {}
    for r in runs:
        points, starts = loss_points(r)
        curves[_column(r)] = (points, starts)
    return figures.loss_curves(curves, smoothing=float(smoothing or 0.0), log_y=bool(log_y))


# -- events ----------------------------------------------------------------------------------------------------------
def choices() -> list[tuple[str, int]]:
    labels = catalog.labels_by_source()
    return [(_column(r) + f" · {model_label((r.recipe or {}).get('model'), labels)}", r.id)
            for r in services.list_runs() if r.status == "succeeded"]


@guard(outputs=1, status=None, toast=False)
def refresh_choices():
    return gr.update(choices=choices())


@guard(outputs=4, status=0)
def compare_runs(run_ids, smoothing=0.0, log_y=False):
    """(status, metrics table, recipe diff, loss figure) of the chosen runs, in the order they were picked."""
    runs = [services.get_run(run_id_of(i)) for i in run_ids or []]
    check_same_model(runs)
    label = model_label((runs[0].recipe or {}).get("model"), catalog.labels_by_source())
    diff = recipe_diff(runs)
    note = f"{len(diff)} recipe field{'s' if len(diff) != 1 else ''} differ" if len(diff) else "same recipe"
    return (box(f"{len(runs)} runs of {label}: {note}.", "ok"), metrics_frame(runs), diff,
            loss_figure(runs, smoothing=smoothing, log_y=log_y))


@guard(outputs=1, status=None)
def redraw_loss(run_ids, smoothing, log_y):
    runs = [services.get_run(run_id_of(i)) for i in run_ids or []]
    if len(runs) < 2:
        return gr.skip()
    return loss_figure(runs, smoothing=smoothing, log_y=log_y)


def wire(tab: CompareRunsTab, *, tab_items: list[gr.Tab]) -> None:
    gr.on([t.select for t in tab_items], refresh_choices, None, tab.runs, api_name="compare_runs_choices",
          show_progress="hidden")
    tab.go.click(compare_runs, [tab.runs, tab.smoothing, tab.log_y], [tab.status, tab.metrics, tab.diff, tab.loss],
                 api_name="compare_runs")
    gr.on([tab.smoothing.release, tab.log_y.input], redraw_loss, [tab.runs, tab.smoothing, tab.log_y], tab.loss,
          api_name="compare_runs_loss", show_progress="hidden")
