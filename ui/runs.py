"""Tab 4, Runs: an experiment table (sort, filter, tags and notes, CSV), the selected run's actions, details and
loss curve, and one Pareto front per base model and evaluation set.

The selection rule: what the user picked stays picked. The 2-second refresh rewrites the table and the selector's
choices, never the selector's value; only the user (a click in the table or the list) and the actions that make or
remove a run (Enqueue, Re-run, Delete) set it. Every action button carries the id of the run it acts on ("Cancel #7"),
the confirmation of a delete names the run and deletes that one even if another is picked meanwhile, and every
message names the run. The refresh and the selection events share one queue of length one (`VIEW`), so their
outputs arrive in the order they were triggered and a refresh started before a pick never draws over it.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage import catalog
from ui import figures, services, tempfiles
from ui.common import box, guard, run_id_of
from ui.run_table import SORT_KEYS, csv_text, filter_sort, pareto_groups, run_row
from ui.run_view import COLUMNS, DATATYPES, WIDTHS, detail, display_frame, run_estimates, trace, waiting_text

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
VIEW = {"concurrency_limit": 1, "concurrency_id": "runs-view"}


@dataclass
class RunsTab:
    status_filter: gr.Dropdown
    model_filter: gr.Dropdown
    tag_filter: gr.Textbox
    text_filter: gr.Textbox
    sort: gr.Dropdown
    descending: gr.Checkbox
    csv_btn: gr.Button
    csv_file: gr.File
    table: gr.Dataframe
    timer: gr.Timer
    run: gr.Dropdown
    cancel_btn: gr.Button
    rerun_btn: gr.Button
    open_btn: gr.Button
    delete_btn: gr.Button
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    confirm_btn: gr.Button
    keep_btn: gr.Button
    pending_delete: gr.State
    status: gr.HTML
    head: gr.HTML
    tags: gr.Textbox
    notes: gr.Textbox
    save_btn: gr.Button
    loss: gr.Plot
    recipe: gr.Code
    log: gr.Code
    pareto_group: gr.Dropdown
    pareto: gr.Plot
    seen: gr.State

    @property
    def filters(self) -> list:
        return [self.status_filter, self.model_filter, self.tag_filter, self.text_filter, self.sort,
                self.descending]


def build() -> RunsTab:
    gr.Markdown("### Runs\nRefreshed every 2 seconds; what you pick stays picked. Sort and filter with the controls, "
                "click a row (or use the list) to act on a run.")
    with gr.Row(equal_height=False, elem_id="runs-filters"):
        status_filter = gr.Dropdown(STATUSES, value=[], multiselect=True, label="status (none = all)", scale=2,
                                    min_width=170, elem_id="runs-status-filter")
        model_filter = gr.Dropdown([], value=[], multiselect=True, label="model", scale=2, min_width=150,
                                   elem_id="runs-model-filter", allow_custom_value=True)
        tag_filter = gr.Textbox("", label="tags (all of; a, b)", scale=2, min_width=130, elem_id="runs-tag-filter")
        text_filter = gr.Textbox("", label="search name, notes", scale=2, min_width=130, elem_id="runs-text-filter")
        sort = gr.Dropdown(list(SORT_KEYS), value="run", label="sort by", scale=1, min_width=120,
                           elem_id="runs-sort")
        with gr.Column(scale=1, min_width=120):
            descending = gr.Checkbox(True, label="descending", elem_id="runs-desc")
            csv_btn = gr.Button("Export CSV", size="sm", elem_id="runs-csv-btn")
    csv_file = gr.File(label="runs.csv", visible=False, height=60, elem_id="runs-csv")
    table = gr.Dataframe(None, headers=COLUMNS, datatype=DATATYPES, interactive=False, wrap=True, max_height=380,
                         column_widths=WIDTHS, elem_id="runs-table")
    timer = gr.Timer(2.0)
    with gr.Row(equal_height=True):
        run = gr.Dropdown([], label="run", show_label=False, container=False, scale=2, min_width=180,
                          elem_id="run-select", allow_custom_value=True)
        cancel_btn = gr.Button("Cancel", scale=1, elem_id="run-cancel", min_width=110)
        rerun_btn = gr.Button("Re-run", scale=1, elem_id="run-rerun", min_width=110)
        open_btn = gr.Button("Open in Compress", scale=1, elem_id="run-open", min_width=150)
        delete_btn = gr.Button("Delete…", variant="stop", scale=1, elem_id="run-delete", min_width=110)
    with gr.Row(visible=False) as confirm_row:
        confirm_text = gr.Markdown("")
        confirm_btn = gr.Button("Yes, delete it", variant="stop", scale=0, min_width=160)
        keep_btn = gr.Button("Keep it", scale=0, min_width=120)
    status = gr.HTML("", elem_classes="status-box", elem_id="runs-status")
    head = gr.HTML("", elem_id="run-head")
    with gr.Row(equal_height=False):
        tags = gr.Textbox("", label="tags (comma-separated)", scale=2, elem_id="run-tags")
        notes = gr.Textbox("", label="notes", scale=5, lines=1, max_lines=4, elem_id="run-notes")
        save_btn = gr.Button("Save tags and notes", scale=1, min_width=150, elem_id="run-save", size="sm")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            loss = gr.Plot(figures.message_figure("pick a run"), show_label=False)
        with gr.Column(scale=2, min_width=300):
            recipe = gr.Code("", language="yaml", label="recipe", interactive=False, buttons=["copy"], max_lines=22)
    log = gr.Code("", label="log and error", interactive=False, lines=8, max_lines=18)
    pareto_group = gr.Dropdown([], value="", label="Pareto front of (base model · evaluation set; empty = the "
                               "newest)", elem_id="pareto-group", allow_custom_value=True)
    pareto = gr.Plot(figures.message_figure("finished runs appear here"), show_label=False, elem_id="pareto")
    return RunsTab(status_filter, model_filter, tag_filter, text_filter, sort, descending, csv_btn, csv_file, table,
                   timer, run, cancel_btn, rerun_btn, open_btn, delete_btn, confirm_row, confirm_text, confirm_btn,
                   keep_btn, gr.State(None), status, head, tags, notes, save_btn, loss, recipe, log, pareto_group,
                   pareto, gr.State({}))


# -- reading runs ----------------------------------------------------------------------------------------------------
def _choices(runs) -> list[tuple[str, int]]:
    return [(f"#{r.id} · {r.status}" + (f" · {r.name}" if r.name else ""), r.id) for r in runs]


def _selected(value) -> int | None:
    try:
        return run_id_of(value)
    except ValueError:
        return None


def table_rows(runs, labels, *filters):
    status, model, tag, text, sort, descending = filters
    etas = run_estimates(runs)
    rows = [run_row(r, labels, whole_eta=etas.get(r.id)) for r in runs]
    return rows, filter_sort(rows, status=status or (), model=model or (), tag=tag or "", text=text or "",
                             sort=sort or "run", descending=bool(descending))


def _detail_signature(run_id, runs) -> str:
    """Everything the selected run's details show, its wait included ("queued behind #k" changes when #k ends)."""
    r = next((r for r in runs if r.id == run_id), None)
    if r is None:
        return ""
    return (f"{r.id}:{r.status}:{r.progress:.4f}:{r.step}:{r.loss}:{r.message}:{r.stage}:{r.parent_run_id}:"
            f"{waiting_text(r, runs)}")


CANCELLABLE = ("queued", "running")


def pareto_figure(groups: dict, choice):
    if not groups:
        return figures.pareto([], original=None)
    key = choice if choice in groups else next(iter(groups))
    points, original = groups[key]
    return figures.pareto(points, original=original, title=f"Size against quality · {key}")


# -- events ----------------------------------------------------------------------------------------------------------
@guard(outputs=11, status=None, toast=False)
def refresh(selected, seen: dict, pareto_choice, *filters):
    """Timer tick (and any filter change): the table, the selector's and filters' choices (never their values),
    the selected run's details when they changed, the Pareto plot when the finished runs or the chosen front
    changed (unchanged parts are skipped, so plots do not flicker)."""
    runs = services.list_runs()
    trace(runs)
    labels = catalog.labels_by_source()
    selected = _selected(selected)
    all_rows, rows = table_rows(runs, labels, *filters)
    seen = dict(seen or {})
    details, cancel_btn = [gr.skip()] * 4, gr.skip()
    sig = _detail_signature(selected, runs)
    if sig != seen.get("detail"):
        details = list(show(selected, runs))      # guarded: a broken detail never stops the table refresh
        seen["detail"] = sig
        status = next((r.status for r in runs if r.id == selected), None)
        cancel_btn = gr.update(interactive=status in CANCELLABLE)
    groups = pareto_groups(runs, labels)
    signature = ",".join(f"{r.id}:{r.status}" for r in runs if r.status == "succeeded") + f"|{pareto_choice}"
    pareto = gr.skip()
    if signature != seen.get("pareto"):
        pareto = pareto_figure(groups, pareto_choice)
        seen["pareto"] = signature
    models = sorted({r.model for r in all_rows})
    return (display_frame(rows, {r.id: r for r in runs}, selected), gr.update(choices=_choices(runs)),
            gr.update(choices=models), gr.update(choices=list(groups)), *details, pareto, seen, cancel_btn)


@guard(outputs=4, status=0)
def show(run_id, runs=None):
    """Details of the chosen run: (head, loss curve, recipe, log)."""
    return detail(run_id, runs)


def action_labels(run_id, status: str | None = None) -> tuple:
    """The action buttons, each naming the run it acts on; Cancel only for a queued or running run."""
    rid = _selected(run_id)
    tag = f" #{rid}" if rid is not None else ""
    return (gr.update(value=f"Cancel{tag}", interactive=rid is not None and status in CANCELLABLE),
            gr.update(value=f"Re-run{tag}", interactive=rid is not None),
            gr.update(value=f"Open{tag} in Compress", interactive=rid is not None),
            gr.update(value=f"Delete{tag}…", interactive=rid is not None))


@guard(outputs=10, status=0)
def select_run(run_id):
    """A run was picked (or made or removed by an action): its details, its tags and notes, the buttons' names, and
    the delete question closed (it was about the run picked before)."""
    rid = _selected(run_id)
    tags = notes = ""
    status = None
    if rid is not None:
        r = services.get_run(rid)
        tags, notes, status = ", ".join(r.tags or []), r.notes or "", r.status
    return (*detail(rid), *action_labels(rid, status), tags, notes)


def pick_row(evt: gr.SelectData):
    """A click in the table picks that row's run (read from the clicked row's values, so it is right whatever the
    sort or filter)."""
    return int(evt.row_value[1])


@guard(outputs=1, status=0)
def cancel(run_id):
    run_id = run_id_of(run_id)
    status = services.cancel(run_id)
    return box(f"Run #{run_id}: {'cancelled' if status == 'cancelled' else 'stopping after the current step'}"
               if status in ("cancelled", "running") else f"Run #{run_id} is already {status}; nothing to cancel.",
               "ok")


@guard(outputs=2, status=0)
def rerun(run_id):
    run_id = run_id_of(run_id)
    new = services.rerun(run_id)
    return box(f"Run #{new} queued with the recipe of run #{run_id}.", "ok"), new


@guard(outputs=4, status=0)
def ask_delete(run_id):
    r = services.get_run(run_id_of(run_id))
    return "", gr.update(visible=True), (f"**Delete run #{r.id}** ({r.status}) with its checkpoint, metrics and "
                                         "log? This cannot be undone."), r.id


@guard(outputs=4, status=0)
def confirm_delete(pending):
    """Delete the run the question named (not whatever is picked now); the selection is cleared."""
    run_id = run_id_of(pending)
    services.delete(run_id)
    return box(f"Run #{run_id} deleted.", "ok"), gr.update(visible=False), None, None


@guard(outputs=1, status=0)
def save_notes(run_id, tags, notes):
    run_id = run_id_of(run_id)
    r = services.set_run_notes(run_id, tags=tags or "", notes=notes or "")
    return box(f"Run #{run_id}: tags {', '.join(r.tags) or '(none)'} and notes saved.", "ok")


@guard(outputs=1, status=None)
def export_csv(*filters):
    """The table as shown (filters and sort applied) as a CSV file, raw values."""
    runs = services.list_runs()
    _, rows = table_rows(runs, catalog.labels_by_source(), *filters)
    path = tempfiles.export_dir("runs-csv-") / "runs.csv"   # swept with Gradio's temporary folder
    path.write_text(csv_text(rows))
    return gr.update(value=str(path), visible=True)


def wire(tab: RunsTab) -> tuple[list, list]:
    """Wire the tab; returns (inputs, outputs) of `refresh` so other tabs can chain it."""
    outs = [tab.table, tab.run, tab.model_filter, tab.pareto_group, tab.head, tab.loss, tab.recipe, tab.log,
            tab.pareto, tab.seen, tab.cancel_btn]
    ins = [tab.run, tab.seen, tab.pareto_group, *tab.filters]
    tab.timer.tick(refresh, ins, outs, api_name="runs_refresh", show_progress="hidden", **VIEW)
    gr.on([f.change for f in tab.filters] + [tab.pareto_group.change], refresh, ins, outs, api_name="runs_filter",
          show_progress="hidden", trigger_mode="always_last", **VIEW)
    selected_outs = [tab.head, tab.loss, tab.recipe, tab.log, tab.cancel_btn, tab.rerun_btn, tab.open_btn,
                     tab.delete_btn, tab.tags, tab.notes]
    tab.run.change(select_run, tab.run, selected_outs, api_name="run_detail", show_progress="hidden", **VIEW).then(
        lambda: gr.update(visible=False), None, tab.confirm_row, api_name="run_close_question",
        show_progress="hidden").then(refresh, ins, outs, api_name="runs_after_select", show_progress="hidden", **VIEW)
    tab.table.select(pick_row, None, tab.run, api_name="runs_pick", show_progress="hidden", **VIEW)
    tab.cancel_btn.click(cancel, tab.run, tab.status, api_name="cancel_run")
    tab.rerun_btn.click(rerun, tab.run, [tab.status, tab.run], api_name="rerun")
    tab.delete_btn.click(ask_delete, tab.run, [tab.status, tab.confirm_row, tab.confirm_text, tab.pending_delete],
                         api_name="ask_delete")
    tab.keep_btn.click(lambda: (gr.update(visible=False), None), None, [tab.confirm_row, tab.pending_delete],
                       api_name="keep_run")
    tab.confirm_btn.click(confirm_delete, tab.pending_delete, [tab.status, tab.confirm_row, tab.pending_delete,
                                                               tab.run], api_name="delete_run")
    tab.save_btn.click(save_notes, [tab.run, tab.tags, tab.notes], tab.status, api_name="save_notes").then(
        refresh, ins, outs, api_name="runs_after_save", show_progress="hidden", **VIEW)
    tab.csv_btn.click(export_csv, tab.filters, tab.csv_file, api_name="runs_csv")
    return ins, outs
