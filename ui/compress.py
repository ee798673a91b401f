"""Tab 3, Compress: a control for every recipe field, a live estimate (pure arithmetic, no job), the recipe as
YAML, and Enqueue, which stores a queued run and sends it to the worker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import gradio as gr

from compressor.recipe import Recipe
from ui import compress_controls, live_estimate, recipe_form, services
from ui.common import box, card, fit_slider, fmt_bytes, fmt_count, guard
from ui.recipe_form import form  # noqa: F401  (the form's recipe sections; ui.compress.form for callers)

DEFAULTS = Recipe()


@dataclass
class CompressTab:
    keep_ratio: gr.Slider
    neuron_score: gr.Radio
    experts_keep: gr.Slider
    expert_score: gr.Dropdown
    layers_drop: gr.Slider
    sparsity: gr.Slider
    allocation: gr.Radio
    stages: gr.Slider
    steps: gr.Slider
    final_share: gr.Slider
    temperature: gr.Slider
    loss: gr.Dropdown
    lr: gr.Number
    ce_weight: gr.Slider
    calib_tokens: gr.Number
    calib_seq: gr.Number
    eval_tokens: gr.Number
    perplexity: gr.Checkbox
    speed: gr.Checkbox
    seed: gr.Number
    lm_eval_tasks: gr.Dropdown
    quantize: gr.Dropdown
    expert_merge: gr.Radio
    merge_group_size: gr.Number
    streaming: gr.Radio
    blockwise_steps: gr.Number
    kept: gr.State
    merge_group: gr.Column
    blockwise: gr.Column
    residency_note: gr.HTML
    name: gr.Textbox
    estimate: gr.HTML
    yaml: gr.Code
    status: gr.HTML
    enqueue_btn: gr.Button
    cost: gr.HTML
    recipe_text: gr.Code
    recipe_file: gr.File
    load_btn: gr.Button
    parent: gr.State
    lineage: gr.HTML
    controls: list = field(default_factory=list)
    pending: gr.State | None = None       # a run's recipe waiting for its model to open (ui/open_run.py)
    shape: gr.JSON | None = None          # what the page's own estimate reads of the model (ui/live_estimate.py)


def build() -> CompressTab:
    """The tab's components: the recipe's controls on the left, the estimate, Enqueue, the recipe as YAML and its
    loader on the right."""
    gr.Markdown("### Slim the model\nMove a slider: the estimate on the right updates at once. Enqueue runs the recipe "
                "as a job; follow it in Runs.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=380):
            controls, groups = compress_controls.build_controls()
        with gr.Column(scale=2, min_width=340):
            outputs = _output_column()
    tab = CompressTab(**controls, **groups, **outputs, parent=gr.State(None))
    tab.controls = list(controls.values())          # in the order `form` takes them (compress_controls.ORDER)
    tab.pending = gr.State(None)
    tab.shape = gr.JSON(None, visible=False, elem_id="estimate-shape")
    return tab


def _output_column() -> dict:
    """The estimate, run name, Enqueue, its cost, lineage and status, the recipe YAML and the recipe loader."""
    estimate = gr.HTML(box("Open a model to see the estimate.", "info"), elem_id="estimate")
    name = gr.Textbox(label="run name (optional)", placeholder="e.g. half-width, 3 stages")
    enqueue_btn = gr.Button("Enqueue", variant="primary", size="lg")
    cost = gr.HTML("", elem_id="cost")
    lineage = gr.HTML("", elem_id="lineage")
    status = gr.HTML("", elem_classes="status-box")
    yaml = gr.Code("", language="yaml", label="recipe (YAML: copy it, or save it for the CLI)",
                   interactive=False, buttons=["copy", "download"], max_lines=30, elem_id="compress-yaml")
    with gr.Accordion("Load a recipe (paste or upload YAML)", open=False, elem_id="load-recipe"):
        recipe_text = gr.Code("", language="yaml", label="recipe YAML", interactive=True, lines=6,
                              max_lines=20, elem_id="recipe-paste")
        recipe_file = gr.File(label="or a .yaml file", file_types=[".yaml", ".yml"], height=90,
                              elem_id="recipe-upload")
        load_btn = gr.Button("Load into the form", elem_id="recipe-load")
    return dict(estimate=estimate, name=name, enqueue_btn=enqueue_btn, cost=cost, lineage=lineage, status=status,
                yaml=yaml, recipe_text=recipe_text, recipe_file=recipe_file, load_btn=load_btn)


def estimate_card(model: dict, slimming: dict, quantize: dict | None = None, *, stages: int = 1) -> str:
    est = services.estimate_slimming(model["summary"], slimming, stages=stages)
    t0, t1, a0, a1 = est.params_total_before, est.params_total_after, est.params_active_before, est.params_active_after
    cells = [
        ("params total", fmt_count(t1), f"from {fmt_count(t0)} ({t1 / t0:.0%})"),
        ("params active", fmt_count(a1), f"from {fmt_count(a0)} ({a1 / a0:.0%}) per token"),
        ("checkpoint", fmt_bytes(est.checkpoint_bytes_after), f"from {fmt_bytes(est.checkpoint_bytes_before)}"),
        ("speed-up", f"{est.speedup:.2f}x", "theoretical, active FLOPs before / after"),
        ("experts", f"{est.experts_after} x {est.expert_width_after}", "per layer x width"),
        ("layers", str(est.layers_after), f"{est.moe_layers_after} MoE"),
    ]
    if quantize:
        from compressor.recipe import QuantizeConfig
        label = QuantizeConfig.model_validate(quantize).label
        if quantize.get("format") == "torchao":
            label += " (torchao)"
        q = services.estimate_quantized_bytes(model["summary"], slimming, quantize)     # the whole section
        cells.append((f"{label} checkpoint", fmt_bytes(q), f"from {fmt_bytes(est.checkpoint_bytes_after)}"))
    if slimming.get("sparsity"):
        cells.append(("non-zero active", fmt_count(est.nonzero_active_after),
                      f"{est.speedup_sparse:.2f}x with sparse kernels"))
    notes = "".join(f"<div style='font-size:12px;color:#64748b'>· {escape(n)}</div>" for n in est.notes)
    return "<div style='font-weight:600;margin:2px 0'>Estimated result</div>" + card(cells) + notes


def _shown(values) -> tuple[dict, dict]:
    """Visibility of REAM's group size (REAM chosen) and of the layer-local recovery steps (unless in memory, or
    when a loaded recipe set some: the refusal then names them)."""
    v = dict(zip(compress_controls.ORDER, values))
    blockwise = v.get("streaming", "auto") != "off" or bool(v.get("blockwise_steps"))
    return gr.update(visible=v.get("expert_merge") == "ream"), gr.update(visible=blockwise)


def preview(model: dict, *values):
    """Estimate card, recipe YAML, what the residency choice means for this model (and what `auto` picks, from
    `compressor.engine.residency`), and which optional controls show, also when the recipe is refused (REAM's
    group size shows as soon as REAM is picked). No job, pure arithmetic."""
    return (*_drawn(model, *values), *_shown(values))


@guard(outputs=3, status=0, toast=False)
def _drawn(model: dict, *values):
    if not model:
        return box("Open a model to see the estimate.", "info"), "", ""
    f = form(model, *values)
    recipe = services.recipe_from(model["source"], f)
    card_html = estimate_card(model, f["slimming"], f["quantize"], stages=f["stages"])
    chosen, auto = services.residency(model["summary"], recipe)
    refusal = services.streamed_refusal(model["summary"], recipe)
    if refusal:
        card_html = box(refusal, "error") + card_html
    note = (f"<div style='font-size:13px;color:#475569' data-layered='{str(chosen[0]).lower()}'>"
            f"{escape(recipe_form.residency_text(recipe.execution.streaming, chosen, auto))}</div>")
    return card_html, recipe.to_yaml(), note


def fit_ranges(model: dict, *, experts_keep, layers_drop) -> tuple[dict, dict]:
    """The expert and layer sliders fitted to `model` (experts: top-k..E, layers dropped: 0..L-1), each with its
    value moved into its range in the same update."""
    s = model["summary"]
    n_exp = s["num_experts"] if isinstance(s["num_experts"], int) else max(s["num_experts"])
    return (fit_slider(experts_keep, minimum=s["top_k"], maximum=n_exp),
            fit_slider(layers_drop, minimum=0, maximum=max(s["num_layers"] - 1, 1)))


N_CONTROLS = len(compress_controls.ORDER)   # len(CompressTab.controls); experts_keep is control 2, layers_drop 4


@guard(outputs=N_CONTROLS + 4, status=N_CONTROLS, toast=False)
def on_model(model: dict, pending: dict | None, *values):
    """A newly opened model: fit the expert / layer sliders to it. A run's recipe that waited for this model
    (`pending`, from Open in Compress) goes into the form; otherwise what described the previous model (the status
    under Enqueue, the parent run) is cleared and the sliders show the whole model.
    Outputs: the controls, status, parent, lineage, pending."""
    if not model:
        return (gr.skip(),) * (N_CONTROLS + 4)
    if pending and pending.get("source") == model["source"]:
        *controls, status = loaded(model, Recipe.parse(pending["recipe"]), pending["what"])
        return (*controls, status, gr.skip(), gr.skip(), None)
    controls = [gr.skip()] * N_CONTROLS
    n_exp = model["summary"]["num_experts"]
    controls[2], controls[4] = fit_ranges(model, experts_keep=n_exp if isinstance(n_exp, int) else max(n_exp),
                                          layers_drop=0)
    return (*controls, "", None, "", None)


def enqueue(model: dict, name: str, parent, *values):
    """Store and queue the run; (status, run id). The run id is None when nothing was queued, so the app only
    switches to Runs after a success. `parent`: the run whose recipe was loaded into the form (Open in Compress),
    recorded as the new run's parent."""
    try:
        if not model:
            raise ValueError("open a model first (tab 1)")
        f = form(model, *values)
        recipe = services.recipe_from(model["source"], f)
        services.estimate_slimming(model["summary"], f["slimming"], stages=f["stages"])   # what the run would refuse
        refusal = services.streamed_refusal(model["summary"], recipe)
        if refusal:
            raise ValueError(refusal)                                # it would fail in the worker: say so now
        run_id = services.enqueue_edited(recipe, name=(name or "").strip()[:200], parent_run_id=parent)
    except Exception as exc:  # noqa: BLE001 - shown in the page; guard() logs unexpected ones
        return _failed(exc)
    return box(f"Run #{run_id} queued. It is listed in Runs.", "ok"), run_id


@guard(outputs=2, status=0)
def _failed(exc: Exception):
    raise exc


def loaded(model: dict | None, recipe, source: str) -> list:
    """Control values for `recipe` (the expert and layer sliders fitted to the open model; the fields no control
    holds kept in the `kept` state), and a status naming what was kept that way, what the form could not hold and a
    model mismatch."""
    values = recipe_form.form_values(recipe, (model or {}).get("summary"))
    notes = [f"Loaded {source} into the form."]
    if model:
        rebuilt = services.recipe_from(model["source"], form(model, *values))
        dropped = recipe_form.not_in_form(recipe, rebuilt)
        plain = services.recipe_from(model["source"], form(model, *values[:-1]))       # without what was kept
        kept = [line for line in recipe_form.not_in_form(recipe, plain) if line not in dropped]
        if kept:
            notes.append("Kept as loaded (no control for them; see the recipe YAML): " + "; ".join(kept[:8]) + ".")
        if dropped:
            notes.append("Not in the form, so reset to the defaults: " + "; ".join(dropped[:8]) + ".")
        if recipe.model != model["source"]:
            notes.append(f"It was made for {recipe.model[:120]}; Enqueue runs it on the model open in tab 1 "
                         f"({model.get('label')}).")
        values[2], values[4] = fit_ranges(model, experts_keep=values[2], layers_drop=values[4])
    return [*values, box(" ".join(notes), "info")]


@guard(outputs=N_CONTROLS + 3, status=N_CONTROLS)
def load_recipe(model: dict | None, text: str, file):
    """A pasted or uploaded recipe YAML into the sliders (no parent run)."""
    path = file if isinstance(file, str) or file is None else getattr(file, "name", None)
    recipe = recipe_form.parse_yaml(text, path)
    return (*loaded(model, recipe, "the recipe YAML"), None, "")


@guard(outputs=1, status=None, toast=False)
def cost(model: dict | None, *values):
    """The expected wall time of the form's recipe on this machine, from earlier runs of the open model."""
    if not model:
        return ""
    recipe = services.recipe_from(model["source"], form(model, *values)).to_dict()
    return (f"<div style='font-size:13px;color:#475569'>"
            f"{escape(recipe_form.cost_text(recipe, services.model_runs(model['source'])))}</div>")


def wire(tab: CompressTab, *, model_state: gr.State) -> tuple[gr.events.Dependency, gr.State]:
    """Wire the tab; returns the Enqueue event and the queued run id (None after a failure) for the app to chain."""
    inputs = [model_state, *tab.controls]
    drawn = [tab.estimate, tab.yaml, tab.residency_note, tab.merge_group, tab.blockwise]
    # The card is drawn in the page at once (ui/live_estimate.js); the server's preview follows with the same card,
    # the YAML, the residency note and any refusal.
    model_state.change(live_estimate.payload, model_state, tab.shape, api_name="estimate_shape", queue=False,
                       show_progress="hidden")
    gr.on([c.change for c in tab.controls], None, [tab.shape, tab.estimate, tab.residency_note, *tab.controls[:-1]],
          tab.estimate, js=live_estimate.JS, queue=False, show_progress="hidden")
    gr.on([c.change for c in tab.controls], preview, inputs, drawn, api_name="estimate",
          show_progress="hidden", trigger_mode="always_last")
    # Everything that reads the sliders after a model change runs after on_model has fitted them (tests/ui/
    # test_slider_ranges.py): an event started beside it would send the old value against the new range.
    model_state.change(on_model, [model_state, tab.pending, *tab.controls],
                       [*tab.controls, tab.status, tab.parent, tab.lineage, tab.pending], api_name="compress_model",
                       show_progress="hidden").then(preview, inputs, drawn,
                                                    api_name="compress_preview", show_progress="hidden").then(
        cost, inputs, tab.cost, api_name="compress_model_cost", show_progress="hidden")
    gr.on([c.change for c in tab.controls], cost, inputs, tab.cost, api_name="cost", show_progress="hidden",
          trigger_mode="always_last")
    loaded = [*tab.controls, tab.status, tab.parent, tab.lineage]
    tab.load_btn.click(load_recipe, [model_state, tab.recipe_text, tab.recipe_file], loaded, api_name="load_recipe")
    run_id = gr.State(None)
    event = tab.enqueue_btn.click(enqueue, [model_state, tab.name, tab.parent, *tab.controls], [tab.status, run_id],
                                  api_name="enqueue")
    return event, run_id
