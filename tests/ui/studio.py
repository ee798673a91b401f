"""Calling the studio's endpoints from tests (gradio_client): argument lists in the order of the tabs' controls,
the demo model, waiting for runs. Constants shared by the UI tests live here too."""
from __future__ import annotations

import time

MAX_UPLOAD = "40mb"                             # the studio under test refuses bigger uploads
CALIB_TOKENS, CALIB_SEQ = 1024, 256               # the Explore tab's default calibration (ui/explore.py)
# A tiny recipe: one stage, a few distillation steps, a short evaluation
TINY = dict(keep_ratio=0.5, steps=2, stages=1, calib_tokens=512, calib_seq=64, eval_tokens=512)


# -- calling the studio's endpoints ----------------------------------------------------------------------------------
DEMO = ("Demo model (built in)", "", "", [])


def open_demo(client) -> str:
    status, card = client.predict(*DEMO, api_name="/open_model")
    assert "msg-ok" in status, status
    return card


def compress_args(*, keep_ratio=1.0, neuron_score="taylor", experts_keep=8, expert_score="reap", layers_drop=0,
                  sparsity=0.0, allocation="dlp", stages=3, steps=300, final_share=0.8, temperature=2.0,
                  loss="forward_kl", lr=3e-4, ce_weight=0.0, calib_tokens=32768, calib_seq=256, eval_tokens=16384, perplexity=True, speed=False,
                  seed=0, lm_eval_tasks=(), quantize="none", expert_merge="prune", merge_group_size=16,
                  streaming="auto", blockwise_steps=0) -> list:
    """The Compress tab's controls in their order (ui.compress_controls.ORDER; the last, a State holding what a
    loaded recipe sets that no control holds, is not an API argument)."""
    return [keep_ratio, neuron_score, experts_keep, expert_score, layers_drop, sparsity, allocation, stages, steps,
            final_share, temperature, loss, lr, ce_weight, calib_tokens, calib_seq, eval_tokens, perplexity, speed,
            seed, list(lm_eval_tasks), quantize, expert_merge, merge_group_size, streaming, blockwise_steps]


N_FORM = len(compress_args())        # the controls an API caller passes and gets back (Open in Compress, Load)


def explore_args(*, tokens=CALIB_TOKENS, seq_len=CALIB_SEQ, taylor=True, score="reap", drop=0, n_layer=None,
                 n_expert=0, n_score="taylor", n_keep=0.5) -> list:
    return [tokens, seq_len, taylor, score, drop, n_layer, n_expert, n_score, n_keep]


def wait_run(client, run_id: int, *, timeout: float = 240) -> dict:
    """Poll the Runs table until `run_id` is finished; return its row."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        table = client.predict(None, api_name="/runs_refresh")[0]
        rows = {int(r[table["headers"].index("run")]): dict(zip(table["headers"], r)) for r in table["data"]}
        row = rows.get(run_id)
        if row and any(s in row["status"] for s in ("succeeded", "failed", "cancelled")):
            return row
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s")


def figure(plot: dict) -> dict:
    """The plotly figure a gr.Plot sent, as a dict with its arrays decoded (plotly 6 sends numeric arrays as base64
    `{"dtype", "bdata", "shape"}` blocks, which `plotly.io.from_json` leaves as they are)."""
    import base64
    import json

    import numpy as np

    assert plot["type"] == "plotly", plot
    def decode(obj):
        if isinstance(obj, dict):
            if "bdata" in obj and "dtype" in obj:
                arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
                shape = [int(n) for n in str(obj.get("shape", len(arr))).split(",")]
                return arr.reshape(shape).tolist()
            return {k: decode(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        return obj
    return decode(json.loads(plot["plot"]))
