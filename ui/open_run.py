"""Runs' "Open #N in Compress": the run's model in tab 1 and the run's recipe in the Compress form.

A recipe is made for one model (its slider ranges, its refusals, its estimate), so the form never takes a run's
recipe onto another model. When the run's model is the one open, the recipe goes into the form at once. Otherwise
the run's model is opened (as tab 1's Open model does, under the name the run lists it by) and the recipe waits in
`CompressTab.pending`; `compress.on_model`, which fits the sliders to every newly opened model, then puts it in.
"""
from __future__ import annotations

import gradio as gr

from compressor.recipe import Recipe
from storage import catalog
from ui import compress, services
from ui.common import box, guard, run_id_of
from ui.model import model_state_of, opened_text, summary_card

N = compress.N_CONTROLS


def _open_source(source: str) -> dict:
    """The model state of `source` (a run's recipe.model), named as Runs names it (an upload's file name)."""
    opened = services.open_model(source)
    opened.label = catalog.labels_by_source().get(opened.source) or opened.label
    return model_state_of(opened)


@guard(outputs=N + 7, status=N)
def open_run(run_id, model: dict | None):
    """(the controls, status, parent, lineage, tab 1's status and summary, model state, pending)."""
    rid = run_id_of(run_id)
    recipe = Recipe.parse(services.get_run(rid).recipe)
    what = f"the recipe of run #{rid}"
    lineage = box(f"Editing the recipe of run #{rid}: Enqueue records #{rid} as the new run's parent.", "info")
    if model and model["source"] == recipe.model:
        return (*compress.loaded(model, recipe, what), rid, lineage, gr.skip(), gr.skip(), gr.skip(), None)
    state = _open_source(recipe.model)
    pending = {"source": state["source"], "recipe": recipe.to_dict(), "what": what}
    return (*[gr.skip()] * N, box(f"Opening {state['label']}, the model of run #{rid}…", "info"), rid, lineage,
            box(f"{opened_text(state)} (the model of run #{rid}, opened by Open in Compress)", "ok"),
            summary_card(state), state, pending)


def wire(runs_tab, compress_tab, model_tab, *, model_state: gr.State, tabs: gr.Tabs) -> None:
    c = compress_tab
    outputs = [*c.controls, c.status, c.parent, c.lineage, model_tab.status, model_tab.summary, model_state,
               c.pending]
    runs_tab.open_btn.click(open_run, [runs_tab.run, model_state], outputs, api_name="open_in_compress").then(
        lambda: gr.Tabs(selected="compress"), None, tabs, api_name="show_compress", show_progress="hidden")
