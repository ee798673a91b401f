"""Tab 2, Explore: which experts and layers matter.

Scores come from the on-disk cache when this model was analysed with these calibration settings; otherwise an
analysis job (workers.analysis) is queued, and a timer polls its progress until the figures can be drawn. The page
never waits on the calibration pass itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

import gradio as gr

from compressor import methods
from ui import figures, services
from ui.common import box, fit_slider, guard, progress_bar

EXPERT_SCORES = list(methods.EXPERT_SCORES)          # the registries (compressor/methods.py, torch-free)
NEURON_SCORES = list(methods.NEURON_SCORES)


@dataclass
class ExploreTab:
    status: gr.HTML
    analyze_btn: gr.Button
    tokens: gr.Number
    seq_len: gr.Number
    taylor: gr.Checkbox
    score: gr.Dropdown
    heatmap: gr.Plot
    drop: gr.Slider
    layers: gr.Plot
    balance: gr.Plot
    n_layer: gr.Dropdown
    n_expert: gr.Slider
    n_score: gr.Radio
    n_keep: gr.Slider
    neurons: gr.Plot
    timer: gr.Timer
    state: gr.State


def build() -> ExploreTab:
    gr.Markdown("### Which experts and layers matter\nScores come from one calibration pass over the shipped text; "
                "hover any cell or bar for its value.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            status = gr.HTML(box("Open a model first (tab 1).", "info"), elem_classes="status-box")
        with gr.Column(scale=1, min_width=200):
            analyze_btn = gr.Button("Analyze", variant="primary")
    with gr.Accordion("Calibration settings", open=False):
        with gr.Row():
            tokens = gr.Number(1024, label="calibration tokens", precision=0, minimum=64)
            seq_len = gr.Number(256, label="sequence length", precision=0, minimum=8)
            taylor = gr.Checkbox(True, label="Taylor scores (adds a backward pass)")
    with gr.Row(equal_height=False):
        score = gr.Dropdown(EXPERT_SCORES, value="reap", label="expert score", scale=1, min_width=160)
        gr.Markdown("**REAP**: router weight x expert output norm · **frequency**: share of tokens routed · "
                    "**MAN**: mean output norm · **EAN sum**: output norm summed over routed tokens · "
                    "**Taylor**: |w · dL/dw| summed over the expert, the gradient summed over all batches first "
                    "(per batch: |w · dL_b/dw| summed over batches)", padding=True)
    heatmap = gr.Plot(figures.message_figure("the layer x expert heatmap appears here"), label="experts",
                      show_label=False)
    with gr.Row(equal_height=False):
        with gr.Column():
            layers = gr.Plot(figures.message_figure("per-layer importance"), show_label=False)
            drop = gr.Slider(0, 8, value=0, step=1, label="highlight the layers a drop of N removes")
        with gr.Column():
            balance = gr.Plot(figures.message_figure("routing load balance"), show_label=False)
    gr.Markdown("#### Neurons of one expert")
    with gr.Row():
        n_layer = gr.Dropdown([], label="MoE layer", min_width=120)
        n_expert = gr.Slider(0, 7, value=0, step=1, label="expert")
        n_score = gr.Radio(NEURON_SCORES, value="taylor", label="neuron score")
        n_keep = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="keep ratio (the cut line)")
    neurons = gr.Plot(figures.message_figure("neuron-importance distribution"), show_label=False)
    timer = gr.Timer(1.0, active=False)
    state = gr.State({})
    return ExploreTab(status, analyze_btn, tokens, seq_len, taylor, score, heatmap, drop, layers, balance, n_layer,
                      n_expert, n_score, n_keep, neurons, timer, state)


def _settings(tokens, seq_len, taylor):
    from workers.analysis import AnalysisSettings
    return AnalysisSettings(tokens=int(tokens), seq_len=int(seq_len), taylor=bool(taylor))


def _heatmap(frames: dict, score: str):
    ex = frames.get("experts")
    return figures.expert_heatmap(ex, score) if ex is not None else figures.message_figure("no expert scores")


def _layers(frames: dict, drop) -> object:
    ly = frames.get("layers")
    return figures.layer_importance(ly, drop=int(drop or 0)) if ly is not None else \
        figures.message_figure("no layer scores")


def _neurons(frames: dict, n_layer, n_expert, n_score: str, n_keep) -> object:
    nr = frames.get("neurons")
    if nr is None:
        return figures.message_figure("no neuron scores")
    layer = int(n_layer) if n_layer not in (None, "") else int(nr["layer"].iloc[0])
    return figures.neuron_distribution(nr, layer=layer, expert=int(n_expert or 0), score=n_score,
                                       keep_ratio=float(n_keep))


def _draw(scores_dir: str, score: str, drop: int, n_layer, n_expert: int, n_score: str, n_keep: float):
    """Every figure, and the neuron controls fitted to this model (layer ids, expert count, score kinds)."""
    frames = services.score_frames(scores_dir)
    ex, ly, nr = frames.get("experts"), frames.get("layers"), frames.get("neurons")
    layer_ids = sorted(ex["layer"].unique().tolist()) if ex is not None else []
    n_layer = int(n_layer) if n_layer not in (None, "") and int(n_layer) in layer_ids else (layer_ids or [0])[0]
    n_exp = int(ex["expert"].nunique()) if ex is not None else 1
    n_expert = min(int(n_expert or 0), n_exp - 1)
    if n_score not in (nr.columns if nr is not None else []):
        n_score = "activation"
    return (
        _heatmap(frames, score), _layers(frames, drop),
        figures.load_balance(ex) if ex is not None else figures.message_figure("no routing counts"),
        _neurons(frames, n_layer, n_expert, n_score, n_keep),
        gr.update(choices=[str(i) for i in layer_ids], value=str(n_layer)),
        fit_slider(n_expert, maximum=max(n_exp - 1, 1)),
        fit_slider(int(drop or 0), maximum=max(len(ly) - 1, 1) if ly is not None else 1),
        n_score,
    )


_FIGS = 8   # outputs of _draw


def _cleared(text: str) -> tuple:
    """The figures replaced by `text` (controls left as they are): another model's scores never stay on show
    beside this model's status."""
    fig = figures.message_figure(text)
    return (fig, fig, fig, fig, *[gr.skip()] * 4)


@guard(outputs=3 + _FIGS, status=0)
def load_or_start(model: dict, tokens, seq_len, taylor, score, drop, n_layer, n_expert, n_score, n_keep,
                  start: bool = True):
    """Show cached scores, or queue an analysis job (when `start`) and switch the poll timer on.
    Outputs: status, state, timer, then the figures and controls of `_draw`."""
    if not model:
        return (box("Open a model first (tab 1).", "info"), {}, gr.Timer(active=False), *[gr.skip()] * _FIGS)
    settings = _settings(tokens, seq_len, taylor)
    found = services.cached_scores_dir(model["source"], settings)
    if found is not None:
        state = {"source": model["source"], "dir": str(found)}
        return (box(f"Scores of {model['label']} ({settings.tokens} calibration tokens), from the cache.", "ok"),
                state, gr.Timer(active=False), *_draw(str(found), score, drop, n_layer, n_expert, n_score, n_keep))
    task_id = (services.start_analysis(model["model_id"], settings) if start
               else services.active_analysis(model["model_id"], settings))    # whichever event comes last agrees
    if task_id is None:
        return (box(f"{model['label']} has no scores for these settings yet: press Analyze (it runs as a job).",
                    "info"), {"source": model["source"]}, gr.Timer(active=False),
                *_cleared(f"no scores of {model['label']} yet"))
    state = {"source": model["source"], "task": task_id}
    return (box(f"Analysis of {model['label']} queued ({settings.tokens} tokens)…", "info"), state,
            gr.Timer(active=True), *_cleared(f"analysing {model['label']}…"))


def on_model(model, *args):
    return load_or_start(model, *args, start=False)


def on_tab(model, state, *args):
    """Opening the tab starts the analysis once when there are no scores and no job for this model."""
    if model and state.get("source") == model["source"] and (state.get("dir") or state.get("task")):
        return (gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * _FIGS)
    return load_or_start(model, *args, start=True)


@guard(outputs=3 + _FIGS, status=0, toast=False)
def poll(state: dict, score, drop, n_layer, n_expert, n_score, n_keep):
    """Timer tick: progress of the analysis job; draws the figures and stops the timer when it is done."""
    task = (state or {}).get("task")
    if not task:
        return (gr.skip(), gr.skip(), gr.Timer(active=False), *[gr.skip()] * _FIGS)
    st = services.analysis_state(task)
    if st["state"] == "SUCCESS" and st["dir"]:
        new = {"source": state["source"], "dir": st["dir"]}
        return (box("Analysis finished; scores are cached for the next time.", "ok"), new, gr.Timer(active=False),
                *_draw(st["dir"], score, drop, n_layer, n_expert, n_score, n_keep))
    if st["state"] == "FAILURE":
        return (box(f"The analysis failed: {st['error']}", "error"), {"source": state["source"]},
                gr.Timer(active=False), *[gr.skip()] * _FIGS)
    waiting = {"PENDING": "waiting for the worker (it runs one job at a time)", "STARTED": "loading the model"}
    msg = waiting.get(st["state"], st["message"] or st["state"].lower())
    page = (f'<div class="msg msg-info">Analysing: {escape(str(msg))} · {st["fraction"]:.0%}'
            f'<div style="margin-top:6px">{progress_bar(st["fraction"])}</div></div>')
    return (page, gr.skip(), gr.skip(), *[gr.skip()] * _FIGS)


def _redraw(which: str):
    """One figure again after a control moved (the others are left as they are)."""
    @guard(outputs=1, status=None, toast=True)
    def redraw(state, score, drop, n_layer, n_expert, n_score, n_keep):
        if not (state or {}).get("dir"):
            return gr.skip()
        frames = services.score_frames(state["dir"])
        if which == "heatmap":
            return _heatmap(frames, score)
        if which == "layers":
            return _layers(frames, drop)
        return _neurons(frames, n_layer, n_expert, n_score, n_keep)
    redraw.__name__ = f"redraw_{which}"
    return redraw


def wire(tab: ExploreTab, *, model_state: gr.State, tab_item: gr.Tab) -> None:
    controls = [tab.score, tab.drop, tab.n_layer, tab.n_expert, tab.n_score, tab.n_keep]
    figs = [tab.heatmap, tab.layers, tab.balance, tab.neurons, tab.n_layer, tab.n_expert, tab.drop, tab.n_score]
    settings = [tab.tokens, tab.seq_len, tab.taylor]
    head = [tab.status, tab.state, tab.timer]
    # "A model was opened" and "the tab was opened" race when the tab is opened right after a model: they share one
    # queue, and the later one finds the job the earlier one started (services.active_analysis), so neither's
    # "press Analyze" can overwrite a started job.
    model_state.change(on_model, [model_state, *settings, *controls], head + figs, api_name="explore_model",
                       concurrency_id="explore-open", concurrency_limit=1)
    tab_item.select(on_tab, [model_state, tab.state, *settings, *controls], head + figs, api_name="explore_tab",
                    concurrency_id="explore-open", concurrency_limit=1)
    tab.analyze_btn.click(load_or_start, [model_state, *settings, *controls], head + figs, api_name="analyze")
    tab.timer.tick(poll, [tab.state, *controls], head + figs, api_name="explore_poll", show_progress="hidden")
    inputs = [tab.state, *controls]
    tab.score.input(_redraw("heatmap"), inputs, tab.heatmap, api_name="explore_heatmap")
    tab.drop.input(_redraw("layers"), inputs, tab.layers, api_name="explore_layers", show_progress="hidden")
    gr.on([tab.n_layer.input, tab.n_expert.input, tab.n_score.input, tab.n_keep.input], _redraw("neurons"), inputs,
          tab.neurons, api_name="explore_neurons", show_progress="hidden")
