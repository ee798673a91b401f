"""Tab 6, Download: a finished run's checkpoint as a zip (an HF folder stock transformers loads) with its recipe and
metrics. The file is chosen by run id only; the zip is built by `storage.artifacts.build_download`.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr
import yaml

from compressor.result import RunResult
from ui import services
from ui.common import box, card, fmt_bytes, fmt_count, guard, run_id_of
from ui.result_text import speed_text
from ui.run_table import ACTIVE, PPL, baseline_metric, lm_eval_pairs, metric, summary_text
from ui.run_view import merge_html


@dataclass
class DownloadTab:
    run: gr.Dropdown
    info: gr.HTML
    prepare: gr.Button
    file: gr.DownloadButton
    status: gr.HTML
    howto: gr.Code


LOAD_SNIPPET = """from transformers import AutoModelForCausalLM, AutoTokenizer

path = "run-{id}/checkpoint"          # after unzipping run-{id}.zip
{note}model = AutoModelForCausalLM.from_pretrained(path{kwargs})
tokenizer = AutoTokenizer.from_pretrained(path)
print(tokenizer.decode(model.generate(**tokenizer("The state of our union is", return_tensors="pt"),
                                      max_new_tokens=20)[0]))
"""


# What a quantized checkpoint needs beyond stock transformers, by the format `metrics["quantize"]` names.
_FORMAT_NOTES = {
    "torchao": ("# {scheme} torchao checkpoint: needs `pip install torchao==0.18.0`. Its experts run transformers'\n"
                "# eager kernel (torchao's int8 / fp8 tensors cannot run grouped_mm); config.json says so, and the\n"
                "# argument below keeps checkpoints from before that working.\n", ', experts_implementation="eager"'),
    "compressed-tensors": ("# {scheme} compressed-tensors checkpoint: needs `pip install compressed-tensors`; "
                           "vLLM serves it as is.\n", ""),
}


def load_snippet(run_id, metrics: dict | None = None) -> str:
    """The Download tab's Python that loads the run's unzipped checkpoint and generates, with what its
    quantization format needs (`_FORMAT_NOTES`)."""
    q = (metrics or {}).get("quantize") or {}
    note, kwargs = _FORMAT_NOTES.get(q.get("format") or "", ("", ""))
    return LOAD_SNIPPET.format(id=run_id, note=note.format(scheme=q.get("scheme", "")), kwargs=kwargs)


def build() -> DownloadTab:
    gr.Markdown("### Download a finished run\nA zip with `checkpoint/` (a Hugging Face folder that stock "
                "transformers loads, no custom code), `recipe.yaml` and `metrics.json`.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            run = gr.Dropdown([], label="finished run", elem_id="dl-run", allow_custom_value=True)
            prepare = gr.Button("Prepare zip", variant="primary")
            file = gr.DownloadButton("Download zip", visible=False, variant="primary", elem_id="dl-button")
            status = gr.HTML("", elem_classes="status-box")
        with gr.Column(scale=3):
            info = gr.HTML("")
    howto = gr.Code(load_snippet("N"), language="python", label="load it", interactive=False)
    return DownloadTab(run, info, prepare, file, status, howto)


@guard(outputs=1, status=None, toast=False)
def refresh(current):
    runs = services.finished_runs()
    opts = [(f"run #{r.id}" + (f" · {r.name}" if r.name else "") + f" · {summary_text(r.recipe or {})}", r.id)
            for r in runs]
    ids = [r.id for r in runs]
    return gr.update(choices=opts, value=current if current in ids else (ids[0] if ids else None))


@guard(outputs=4, status=0)
def describe(run_id):
    """(status, info html, hidden download button, load snippet) for the chosen run."""
    if run_id in (None, ""):
        return "", box("No finished run yet: enqueue one in Compress.", "info"), gr.update(visible=False), \
            load_snippet("N")
    r = services.get_run(run_id_of(run_id))
    art = services.checkpoint_artifact(r.id)
    size = f"{fmt_bytes(art.bytes)} · sha256 {art.sha256[:16]}…" if art else "no artifact recorded"
    metrics = yaml.safe_dump(r.metrics or {}, sort_keys=False).strip()
    info = (f"<div><b>Run #{r.id}</b> {html.escape(r.name or '')} · {html.escape(summary_text(r.recipe or {}))}"
            f"</div><div style='font-size:13px;color:#475569;margin:4px 0'>checkpoint: {size}</div>"
            + headline_card(r.metrics or {}) + merge_html(r) +
            f"<details><summary>all metrics</summary><pre style='font-size:12px'>{html.escape(metrics)}</pre>"
            "</details>")
    return "", info, gr.update(visible=False), load_snippet(r.id, r.metrics)


def headline_card(m: dict) -> str:
    """Perplexity against the original, agreement, active parameters and the speed-up, when the run measured them."""
    cells = []
    ppl, base = metric(m, *PPL), baseline_metric(m, *PPL)
    if ppl is not None:
        cells.append(("perplexity", f"{ppl:.2f}", f"original {base:.2f}" if base is not None else "held-out text"))
    agree = metric(m, "top1_agreement")
    if agree is not None:
        cells.append(("top-1 agreement", f"{agree:.1%}", "with the original"))
    active, base_active = metric(m, *ACTIVE), baseline_metric(m, *ACTIVE)
    if active is not None:
        cells.append(("params active", fmt_count(active),
                      f"{active / base_active:.0%} of the original" if base_active else "per token"))
    sp = RunResult.read(m).speed
    for which in ("prefill", "decode"):
        text = speed_text(sp, which)
        if text is not None:                        # the ratio, its rounds' range, the kernel, and the noise
            ratio, _, spread = text.partition(" ")
            note = f"both in {sp.kernel}" if sp.same_kernel else (sp.kernel or "kernels differ")
            cells.append((f"{which} speed-up", ratio, f"{spread} · {note}" if spread else note))
    q = m.get("quantize")
    if q:
        cells.append((f"{q['scheme']} checkpoint", fmt_bytes(q["checkpoint_bytes_after"]),
                      f"from {fmt_bytes(q['checkpoint_bytes_before'])} unquantized"))
    for task, acc, base in lm_eval_pairs(m):
        if acc is not None:
            cells.append((f"lm-eval {task}", f"{acc:.3f}", f"original {base:.3f}" if base is not None else "acc"))
    return card(cells) if cells else ""


@guard(outputs=2, status=0)
def prepare(run_id):
    """Zip the run (by id) and reveal the download button."""
    run_id = run_id_of(run_id)
    path = services.download_zip(run_id)
    return box(f"run-{run_id}.zip is ready ({fmt_bytes(path.stat().st_size)}).", "ok"), \
        gr.update(value=str(path), visible=True, label=f"Download run-{run_id}.zip")


def wire(tab: DownloadTab, *, tab_item: gr.Tab) -> None:
    tab_item.select(refresh, tab.run, tab.run, api_name="download_choices", show_progress="hidden").then(
        describe, tab.run, [tab.status, tab.info, tab.file, tab.howto], api_name="download_describe_first",
        show_progress="hidden")
    tab.run.input(describe, tab.run, [tab.status, tab.info, tab.file, tab.howto], api_name="download_describe",
                  show_progress="hidden")
    tab.prepare.click(prepare, tab.run, [tab.status, tab.file], api_name="download_zip")
