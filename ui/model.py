"""Tab 1, Model: choose the demo model, a local folder, an upload or a hub id, and see its summary card.

The chosen model lives in the session's `model_state` ({"source", "label", "summary", "model_id", ...}); the other
tabs listen to its change. Bad sources (not an MoE, a pickle file, a broken archive, too large) leave the previous
model in place and say what was wrong. The folder box takes folders under the model roots only, the hub box hub ids
only (`services.allowed_source`). Uploaded files are copied into the studio cache and then deleted from Gradio's
upload folder; the session remembers where they were staged (`staged`), so Open model works again without them.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ui import services, uploads
from ui.common import box, card, fmt_bytes, fmt_count, guard

KINDS = {"Demo model (built in)": "demo", "Pretrained demo (SmolLM2 as MoE, fetched on first use)": "demo-smollm",
         "Local folder": "folder", "Upload": "upload", "Hub id": "hub"}
UPLOAD_TYPES = [".zip", ".gz", ".tgz", ".tar", ".safetensors", ".json", ".model", ".txt", ".jinja", ".bin", ".pt",
                ".pth", ".pkl"]


@dataclass
class ModelTab:
    kind: gr.Radio
    path: gr.Textbox
    hub: gr.Textbox
    files: gr.File
    open_btn: gr.Button
    status: gr.HTML
    summary: gr.HTML
    staged: gr.State     # {"<uploaded temp paths>": staged source} for this session


def build() -> ModelTab:
    gr.Markdown("### Pick a model\nThe demo model is a small Qwen3-MoE (8 experts, top-2) trained on State of the "
                "Union speeches; it loads in a second. Any Hugging Face MoE folder of a supported family works too.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            kind = gr.Radio(list(KINDS), value="Demo model (built in)", label="Where is the model?")
            path = gr.Textbox(label="Folder on this machine", placeholder="/path/to/model (config.json + "
                              "*.safetensors)", visible=False)
            hub = gr.Textbox(label="Hugging Face hub id", placeholder="org/name or org/name@revision",
                             visible=False)
            files = gr.File(label="A .zip / .tar.gz of the model folder, or its files (config.json, "
                            "*.safetensors, tokenizer)", file_count="multiple", file_types=UPLOAD_TYPES,
                            visible=False)
            open_btn = gr.Button("Open model", variant="primary")
        with gr.Column(scale=3, min_width=420):
            status = gr.HTML(box("Choose where the model is, then press Open model.", "info"),
                             elem_classes="status-box")
            summary = gr.HTML("")
    return ModelTab(kind, path, hub, files, open_btn, status, summary, gr.State({}))


def summary_card(opened: dict) -> str:
    s = opened["summary"]
    moe = s["moe_layers"] if isinstance(s["moe_layers"], list) else list(range(s["moe_layers"]))
    shared = s.get("shared_experts") or {}
    total, active = s["params_total"], s["params_active"]
    try:
        from compressor.estimate import bytes_per_param
        size = fmt_bytes(total * bytes_per_param(s.get("dtype", "float32")))
    except ValueError:
        size = "?"
    cells = [
        ("family", str(s.get("family")), str(s.get("model_type", ""))),
        ("layers", str(s["num_layers"]), f"{len(moe)} MoE layers"),
        ("experts", str(s["num_experts"]), f"top-{s['top_k']} routed per token"),
        ("expert width", str(s["expert_intermediate_size"]),
         f"shared: {shared.get('count', 0)} x {shared.get('width', 0)}" if shared.get("count") else "no shared expert"),
        ("params total", fmt_count(total), f"{size} as {s.get('dtype', '?')}"),
        ("params active", fmt_count(active), f"{active / total:.0%} of total, per token"),
        ("hidden", str(s.get("hidden_size", "?")), f"vocab {fmt_count(s.get('vocab_size'))}"),
        ("fingerprint", opened.get("fingerprint", "")[:12], "of the weights"),
    ]
    title = f"<div class='model-title' style='font-size:15px;margin:4px 0 2px'><b>{html.escape(str(opened['label']))}</b> · <code>" \
            f"{html.escape(str(opened['source']))}</code></div>"
    return title + card(cells)


def _source_text(kind: str, path: str, hub: str, files, staged: dict) -> str:
    """The source string to open: "demo", a folder / archive under the model roots, a hub id, or a staged upload."""
    k = KINDS.get(kind, kind)
    if k in ("demo", "demo-smollm"):
        return k
    if k == "folder":
        return services.allowed_source(path, kind="folder")
    if k == "hub":
        if not (hub or "").strip():
            raise ValueError("type a hub id such as Qwen/Qwen1.5-MoE-A2.7B (optionally @revision)")
        return services.allowed_source(hub, kind="hub")
    if k == "upload":
        return _staged_upload(files, staged)
    raise ValueError(f"unknown model location {str(kind)[:40]!r}")


def _staged_upload(files, staged: dict) -> str:
    """Stage the uploaded files (uploads.stage_upload), then delete Gradio's temporary copies; a second Open of
    the same upload in this session reuses what was staged."""
    paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in files or []]
    paths = [p for p in paths if p]
    key = "\n".join(sorted(paths))
    if key in staged and not all(os.path.exists(p) for p in paths):
        if Path(staged[key]).exists():
            return staged[key]
        raise ValueError("the uploaded files were moved into the studio cache and have since been removed from it "
                         "(refused, or evicted by MOE_STUDIO_CACHE_QUOTA); upload them again")
    if paths and not all(os.path.exists(p) for p in paths):
        raise ValueError("the uploaded files are no longer on the server (an upload is staged once, then deleted); "
                         "upload them again")
    try:
        staged[key] = uploads.stage_upload(paths)
    finally:
        _delete_gradio_uploads(paths)
    return staged[key]


def _delete_gradio_uploads(paths: list[str]) -> None:
    """Delete uploaded files that lie in Gradio's upload folder (and their per-file folders once empty); a path
    anywhere else is left alone."""
    from gradio.utils import get_upload_folder

    folder = Path(os.path.realpath(get_upload_folder()))
    for p in paths:
        real = Path(os.path.realpath(p))
        if real == folder or not real.is_relative_to(folder) or not real.is_file():
            continue
        real.unlink(missing_ok=True)
        parent = real.parent
        if parent != folder and parent.is_relative_to(folder) and not any(parent.iterdir()):
            parent.rmdir()


def upload_label(files, summary: dict) -> str:
    """The name of an upload for people: the archive's file name without its suffix ("mixtral-tiny.zip" ->
    "mixtral-tiny"), or, for a folder's loose files, "<family> upload"; never the cache's sha256 name."""
    names = [Path(f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") or "").name
             for f in files or []]
    names = [n for n in names if n]
    if len(names) == 1:
        lower = names[0].lower()
        suffix = next((s for s in (".tar.gz", ".tgz", ".tar", ".zip") if lower.endswith(s)), "")
        return names[0][:len(names[0]) - len(suffix)] or names[0]
    return f"{summary.get('family', 'model')} upload"


@guard(outputs=4, status=0)
def open_model(kind: str, path: str, hub: str, files, staged: dict | None = None):
    """Open the chosen model: (status, summary card, model state, staged uploads). An upload is recorded under its
    file name (`upload_label`), so Runs and Compare list it by that name."""
    staged = dict(staged or {})
    opened = services.open_model(_source_text(kind, path, hub, files, staged),
                                 discard_on_failure=KINDS.get(kind, kind) == "upload")
    if KINDS.get(kind, kind) == "upload":
        opened.label = upload_label(files, opened.summary)[:200]
        opened.label = services.name_model(opened.model_id, opened.source, opened.label)   # the source's first name
    state = model_state_of(opened)
    return box(opened_text(state) + " Next: Explore shows which experts and layers matter.", "ok"), \
        summary_card(state), state, staged


def model_state_of(opened) -> dict:
    """The session's `model_state` of a `services.OpenedModel`."""
    return {"source": opened.source, "label": opened.label, "summary": opened.summary,
            "model_id": opened.model_id, "fingerprint": opened.fingerprint}


def opened_text(state: dict) -> str:
    s = state["summary"]
    return f"Opened {state['label']}: {s['family']}, {s['num_experts']} experts, top-{s['top_k']}."


def _visibility(kind: str):
    k = KINDS.get(kind, kind)
    return gr.update(visible=k == "folder"), gr.update(visible=k == "hub"), gr.update(visible=k == "upload")


def wire(tab: ModelTab, *, model_state: gr.State) -> None:
    tab.kind.change(_visibility, tab.kind, [tab.path, tab.hub, tab.files], api_name="model_kind",
                    show_progress="hidden")
    inputs = [tab.kind, tab.path, tab.hub, tab.files, tab.staged]
    outputs = [tab.status, tab.summary, model_state, tab.staged]
    tab.open_btn.click(open_model, inputs, outputs, api_name="open_model")
    tab.files.upload(open_model, inputs, outputs, api_name="open_upload")
