"""Tab 5, Compare: the original or any finished run against another, one prompt and one set of decoding settings.

Shows both generations side by side, the per-token top-1 agreement (on the prompt plus A's continuation), the top-5
next tokens of both at a chosen position, and their metrics side by side. The models are served by run id.

The web process loads no weights: Compare queues a short job on the workers (workers.compare_job), a timer polls it
("waiting for the worker" while a run holds the worker, then its progress), and the result is drawn when it is done.
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from html import escape

import gradio as gr
import pandas as pd

from compressor.result import RunResult
from ui import figures, services
from ui.common import box, fmt_bytes, fmt_count, guard, progress_bar
from ui.result_text import ratio_text, speed_text
from ui.run_table import ACTIVE, PPL, baseline_metric, lm_eval_pairs, metric, why_not_comparable

DEFAULT_PROMPT = "The state of our union is"
POLL_S = 0.5            # a comparison of small models takes seconds: poll often


@dataclass
class CompareTab:
    a: gr.Dropdown
    b: gr.Dropdown
    prompt: gr.Textbox
    max_new: gr.Slider
    sample: gr.Checkbox
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Number
    seed: gr.Number
    go: gr.Button
    status: gr.HTML
    out_a: gr.Textbox
    out_b: gr.Textbox
    agreement: gr.HighlightedText
    position: gr.Slider
    top: gr.Plot
    metrics: gr.Dataframe
    steps: gr.State
    job: gr.State
    timer: gr.Timer


def build() -> CompareTab:
    gr.Markdown("### Compare two models\nSame prompt, same decoding settings, same seed.")
    with gr.Row():
        a = gr.Dropdown([("original (the model of tab 1)", services.ORIGINAL)], value=services.ORIGINAL,
                        label="model A", elem_id="cmp-a", allow_custom_value=True)
        b = gr.Dropdown([("original (the model of tab 1)", services.ORIGINAL)], value=services.ORIGINAL,
                        label="model B", elem_id="cmp-b", allow_custom_value=True)
    prompt = gr.Textbox(DEFAULT_PROMPT, label="prompt", lines=2)
    with gr.Row():
        max_new = gr.Slider(1, 200, value=40, step=1, label="new tokens")
        sample = gr.Checkbox(False, label="sample (off = greedy)")
        temperature = gr.Slider(0.1, 2.0, value=0.8, step=0.1, label="temperature")
        top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p")
        top_k = gr.Number(0, label="top-k (0 = off)", precision=0, minimum=0)
        seed = gr.Number(0, label="seed", precision=0)
    go = gr.Button("Compare", variant="primary")
    status = gr.HTML("", elem_classes="status-box")
    with gr.Row(equal_height=True):
        out_a = gr.Textbox(label="A", lines=6, interactive=False, elem_classes="gen-box", elem_id="gen-a")
        out_b = gr.Textbox(label="B", lines=6, interactive=False, elem_classes="gen-box", elem_id="gen-b")
    agreement = gr.HighlightedText(label="per-token top-1 agreement on A's text (green = both models' most likely "
                                   "next token agree)", color_map={"agree": "#10b981", "differ": "#ef4444"},
                                   combine_adjacent=False, show_legend=True)
    position = gr.Slider(0, 39, value=0, step=1, label="position in the continuation (top-5 below)")
    top = gr.Plot(figures.message_figure("top-5 next tokens of both models"), show_label=False)
    metrics = gr.Dataframe(pd.DataFrame(columns=["metric", "A", "B", "B / A"]), interactive=False,
                           label="metrics side by side")
    return CompareTab(a, b, prompt, max_new, sample, temperature, top_p, top_k, seed, go, status, out_a, out_b,
                      agreement, position, top, metrics, gr.State(None), gr.State({}), gr.Timer(POLL_S, active=False))


def choices(model: dict | None) -> list[tuple[str, str]]:
    label = f"original · {model['label']}" if model else "original (open a model in tab 1)"
    out = [(label, services.ORIGINAL)]
    for r in services.finished_runs():
        out.append((f"run #{r.id}" + (f" · {r.name}" if r.name else ""), f"run:{r.id}"))
    return out


@guard(outputs=2, status=None, toast=False)
def refresh_choices(model: dict | None, a: str, b: str):
    """Choices for A and B; B defaults to the newest finished run."""
    opts = choices(model)
    values = [v for _, v in opts]
    b_value = b if b in values and b != services.ORIGINAL else (values[1] if len(values) > 1 else services.ORIGINAL)
    return (gr.update(choices=opts, value=a if a in values else services.ORIGINAL),
            gr.update(choices=opts, value=b_value))


def _metrics_of(choice: str, model: dict | None, other: RunResult | None = None) -> dict:
    """The figures of one side. The original's come from a finished run of this model whose evaluation set matches
    the other side's run (`RunResult.comparable_with`), so both columns are measured on the same text."""
    if choice == services.ORIGINAL:
        out = {"params_active": (model or {}).get("summary", {}).get("params_active"),
               "params_total": (model or {}).get("summary", {}).get("params_total")}
        for r in services.finished_runs():          # the original's evaluation, as stored by a run
            ppl = baseline_metric(r.metrics, *PPL)
            mine = RunResult.read(r.metrics)
            if other is not None and other.eval_set and mine.eval_set and mine.comparable_with(other) is not None:
                continue                            # measured on another evaluation set than the other side
            if ppl is not None and (r.recipe or {}).get("model") == (model or {}).get("source"):
                out["perplexity"] = ppl
                out.update({f"lm-eval {t}": base for t, _, base in lm_eval_pairs(r.metrics) if base is not None})
                break
        return out
    run = services.get_run(int(choice.split(":")[1]))
    return {"perplexity": metric(run.metrics, *PPL), "params_active": metric(run.metrics, *ACTIVE),
            "params_total": metric(run.metrics, "params_total"),
            "top1_agreement": metric(run.metrics, "top1_agreement"),
            "kl_to_baseline": metric(run.metrics, "kl_to_baseline"),      # read by name: no longer filtered out
            "checkpoint_bytes": metric(run.metrics, "checkpoint_bytes"),
            **{f"lm-eval {t}": acc for t, acc, _ in lm_eval_pairs(run.metrics)}}


# metric key -> (what the page calls it, how a value reads); lm-eval rows keep their task name
LABELS = {"perplexity": ("perplexity", lambda v: f"{v:.2f}"),
          "params_active": ("active params", fmt_count), "params_total": ("total params", fmt_count),
          "top1_agreement": ("top-1 agreement with the original", lambda v: f"{v:.1%}"),
          "kl_to_baseline": ("KL to the original", lambda v: f"{v:.4f}"),
          "checkpoint_bytes": ("checkpoint size", fmt_bytes)}


def _name(key: str) -> str:
    return LABELS.get(key, (key,))[0]


def _fmt(name: str, v) -> str:
    if v is None:
        return ""
    show = LABELS.get(name, (name, lambda x: f"{x:.3f}" if abs(x) < 1000 else fmt_count(x)))[1]
    return show(v)


def _speed_rows(ra: RunResult | None, rb: RunResult | None) -> list[list[str]]:
    """Each side's speed-up over its original with the spread of its rounds, and B / A with its range, marked
    'within noise' where the ranges overlap (the original's speed-up is 1 by definition: no row of its own)."""
    sa, sb = (r.speed if r is not None else None for r in (ra, rb))
    rows = []
    for which in ("prefill", "decode"):
        a, b = speed_text(sa, which), speed_text(sb, which)
        if a or b:
            rows.append([f"{which} speed-up over the original (range of rounds)", a or "", b or "",
                         ratio_text(sa, sb, which)])
    return rows


def _run_of(choice: str):
    """The run a choice names, None for the original; any other text is refused as `services.compare_source`
    refuses it."""
    if choice == services.ORIGINAL:
        return None
    m = re.fullmatch(r"run:(\d+)", choice or "")
    if not m:
        raise ValueError(f"choose the original or a finished run, not {choice!r}")
    return services.get_run(int(m.group(1)))


def metrics_frame(a: str, b: str, model: dict | None) -> pd.DataFrame:
    """metric | A | B | B / A. Two runs measured on different evaluation sets or base models get one row saying why
    instead of figures that look comparable and are not."""
    run_a, run_b = _run_of(a), _run_of(b)
    if run_a is not None and run_b is not None:
        why = why_not_comparable(run_a, run_b)
        if why:
            return pd.DataFrame([["not comparable", why, "", ""]], columns=["metric", "A", "B", "B / A"])
    ra, rb = (RunResult.read(r.metrics) if r is not None else None for r in (run_a, run_b))
    ma, mb = _metrics_of(a, model, rb), _metrics_of(b, model, ra)
    rows = []
    for k in dict.fromkeys([*ma, *mb]):
        va, vb = ma.get(k), mb.get(k)
        if va is None and vb is None:
            continue
        ratio = f"{vb / va:.3f}" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else ""
        rows.append([_name(k), _fmt(k, va), _fmt(k, vb), ratio])
    return pd.DataFrame(rows + _speed_rows(ra, rb), columns=["metric", "A", "B", "B / A"])


def _label(choice: str) -> str:
    return "original" if choice == services.ORIGINAL else f"run #{choice.split(':')[1]}"


def top_figure(steps: list[dict] | None, position: int, names: tuple[str, str]):
    if not steps:
        return figures.message_figure("no continuation to inspect")
    i = max(0, min(int(position), len(steps) - 1))
    st = steps[i]
    return figures.top_tokens([tuple(x) for x in st["top_a"]], [tuple(x) for x in st["top_b"]], names=names,
                              context=st["context"])


def _settings(max_new, sample, temperature, top_p, top_k, seed):
    from compressor.compare import DecodeSettings    # validates before anything is queued
    return DecodeSettings(max_new_tokens=int(max_new), do_sample=bool(sample), temperature=float(temperature),
                          top_p=float(top_p), top_k=int(top_k or 0), seed=int(seed or 0))


_OUTPUTS = 10   # status, A text, B text, agreement, position slider, top-5 figure, metrics, steps, job, timer


def base_of(choice: str, model: dict | None) -> tuple[str, str | None]:
    """(source, weights fingerprint or None) of the base model one side comes from: the opened model for the
    original, the base model a run's result recorded (its recipe's model for older results)."""
    run = _run_of(choice)
    if run is None:
        return (model or {}).get("source", ""), None
    ref = RunResult.read(run.metrics).base_model
    return (ref.source or (run.recipe or {}).get("model", "")), ref.fingerprint


def why_not_same_base(a: str, b: str, model: dict | None) -> str | None:
    """None when A and B come from one base model, else what differs. Two runs compare by the weights fingerprint
    their results recorded (by source when either has none); the original against a run, by the run's source."""
    (sa, fa), (sb, fb) = base_of(a, model), base_of(b, model)
    if fa and fb:
        return None if fa == fb else f"{_label(a)} was made from {sa}, {_label(b)} from {sb} (other weights)"
    return None if sa == sb else f"{_label(a)} comes from {sa}, {_label(b)} from {sb}"


@guard(outputs=_OUTPUTS, status=0)
def run_compare(model: dict | None, a: str, b: str, prompt: str, max_new, sample, temperature, top_p, top_k, seed):
    """Queue the comparison on the workers and switch the poll timer on; the metrics (from the runs table) show at
    once, the generations when `poll_compare` finds the job done. A and B of different base models are refused
    (agreement and B / A between two unrelated models read as findings). Outputs: see `_OUTPUTS`."""
    if not model:
        raise ValueError("open a model first (tab 1): it is the original")
    why = why_not_same_base(a, b, model)
    if why:
        raise ValueError(f"A and B are not the same base model: {why}. Compare a run with its own original (open "
                         "its model in tab 1) or two runs of one model")
    settings = _settings(max_new, sample, temperature, top_p, top_k, seed)
    task = services.start_compare(a, b, original=model["source"], prompt=prompt, settings=settings)
    job = {"task": task, "prompt": prompt, "names": (f"A · {_label(a)}", f"B · {_label(b)}")}
    return (_progress_box("waiting for the worker", 0.0), "", "", [], gr.skip(),
            figures.message_figure("the top-5 next tokens appear when the comparison is done"),
            metrics_frame(a, b, model), None, job, gr.Timer(active=True))


def _progress_box(message: str, fraction: float) -> str:
    return (f'<div class="msg msg-info">Comparing on the worker: {escape(message)} · {fraction:.0%}'
            f'<div style="margin-top:6px">{progress_bar(fraction)}</div></div>')


def _result(job: dict, cmp) -> tuple:
    """The outputs for a finished comparison `cmp` (a compressor.compare.Comparison)."""
    prompt, names = job["prompt"], tuple(job["names"])
    steps, text = [], prompt
    for s in cmp.steps:
        steps.append({"top_a": s.top_a, "top_b": s.top_b, "context": text[-40:], "token": s.token})
        text += s.token
    highlighted = [(prompt, None)] + [(s.token, "agree" if s.agree else "differ") for s in cmp.steps]
    msg = (f"Top-1 agreement {cmp.agreement_rate:.0%} over {len(cmp.steps)} tokens; the two generations are "
           f"identical for the first {cmp.same_prefix} tokens.")
    return (box(msg, "ok"), cmp.a.text, cmp.b.text, highlighted,
            gr.update(maximum=max(len(steps) - 1, 1), value=0), top_figure(steps, 0, names), gr.skip(),
            {"steps": steps, "names": names}, {}, gr.Timer(active=False))


@guard(outputs=_OUTPUTS, status=0, toast=False)
def poll_compare(job: dict | None):
    """Timer tick: the comparison job's progress; draws the result and stops the timer when it has ended."""
    task = (job or {}).get("task")
    if not task:
        return (*[gr.skip()] * (_OUTPUTS - 1), gr.Timer(active=False))
    st = services.compare_state(task)
    if st["state"] == "SUCCESS" and st["result"] is not None:
        return _result(job, st["result"])
    if st["state"] == "FAILURE":
        return (box(f"The comparison failed: {st['error']}", "error"), *[gr.skip()] * (_OUTPUTS - 3), {},
                gr.Timer(active=False))
    return (_progress_box(st["message"] or st["state"].lower(), st["fraction"]), *[gr.skip()] * (_OUTPUTS - 1))


@guard(outputs=1, status=None)
def at_position(state: dict | None, position):
    """The top-5 figure at another position of the last comparison (no model call)."""
    state = state or {}
    return top_figure(state.get("steps"), position, tuple(state.get("names") or ("A", "B")))


def wire(tab: CompareTab, *, model_state: gr.State, tab_item: gr.Tab) -> None:
    tab_item.select(refresh_choices, [model_state, tab.a, tab.b], [tab.a, tab.b], api_name="compare_choices",
                    show_progress="hidden")
    model_state.change(refresh_choices, [model_state, tab.a, tab.b], [tab.a, tab.b],
                       api_name="compare_model", show_progress="hidden")
    outputs = [tab.status, tab.out_a, tab.out_b, tab.agreement, tab.position, tab.top, tab.metrics, tab.steps,
               tab.job, tab.timer]
    tab.go.click(run_compare, [model_state, tab.a, tab.b, tab.prompt, tab.max_new, tab.sample, tab.temperature,
                               tab.top_p, tab.top_k, tab.seed], outputs, api_name="compare")
    tab.timer.tick(poll_compare, [tab.job], outputs, api_name="compare_poll", show_progress="hidden")
    tab.position.input(at_position, [tab.steps, tab.position], tab.top, api_name="compare_position",
                       show_progress="hidden")
