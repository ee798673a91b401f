"""Tab 1, Model: choose the demo model, a local folder, an upload or a hub id, and see its summary card.

The chosen model lives in the session's `model_state` ({"source", "label", "summary", "model_id", ...}); the other
tabs listen to its change. Bad sources (not an MoE, a pickle file, a broken archive, too large) leave the previous
model in place and say what was wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui import services
from ui.common import box, card, fmt_bytes, fmt_count, guard

KINDS = {"Demo model (built in)": "demo", "Local folder": "folder", "Upload": "upload", "Hub id": "hub"}
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
    return ModelTab(kind, path, hub, files, open_btn, status, summary)


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
    title = f"<div style='font-size:15px;margin:4px 0 2px'><b>{opened['label']}</b> · <code>{opened['source']}" \
            f"</code></div>"
    return title + card(cells)


def _source_text(kind: str, path: str, hub: str, files) -> str:
    k = KINDS.get(kind, kind)
    if k == "demo":
        return "demo"
    if k == "folder":
        if not (path or "").strip():
            raise ValueError("type the path of a model folder (it holds config.json and *.safetensors)")
        return path.strip()
    if k == "hub":
        if not (hub or "").strip():
            raise ValueError("type a hub id such as Qwen/Qwen1.5-MoE-A2.7B (optionally @revision)")
        return hub.strip()
    if k == "upload":
        paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in files or []]
        return services.stage_upload(paths)
    raise ValueError(f"unknown model location {kind!r}")


@guard(outputs=3, status=0)
def open_model(kind: str, path: str, hub: str, files):
    """Open the chosen model: (status, summary card, model state)."""
    opened = services.open_model(_source_text(kind, path, hub, files))
    state = {"source": opened.source, "label": opened.label, "summary": opened.summary,
             "model_id": opened.model_id, "fingerprint": opened.fingerprint}
    s = opened.summary
    msg = (f"Opened {opened.label}: {s['family']}, {s['num_experts']} experts, top-{s['top_k']}. "
           "Next: Explore shows which experts and layers matter.")
    return box(msg, "ok"), summary_card(state), state


def _visibility(kind: str):
    k = KINDS.get(kind, kind)
    return gr.update(visible=k == "folder"), gr.update(visible=k == "hub"), gr.update(visible=k == "upload")


def wire(tab: ModelTab, *, model_state: gr.State) -> None:
    tab.kind.change(_visibility, tab.kind, [tab.path, tab.hub, tab.files], api_name="model_kind",
                    show_progress="hidden")
    inputs = [tab.kind, tab.path, tab.hub, tab.files]
    outputs = [tab.status, tab.summary, model_state]
    tab.open_btn.click(open_model, inputs, outputs, api_name="open_model")
    tab.files.upload(open_model, inputs, outputs, api_name="open_upload")
