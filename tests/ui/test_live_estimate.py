"""The page's estimate (ui/live_estimate.js, run by node, the V8 engine Chromium runs it with) gives the very HTML of
the server's (ui.compress.estimate_card over compressor.estimate) on several models and settings, and leaves the card
to the server where it cannot decide (refused, staged or layer-by-layer cuts, a refusal on show)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.ui.studio import compress_args
from ui import compress, live_estimate

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is missing (the browser tests run the same JS)")

DEMO = {"family": "qwen3_moe", "num_layers": 4, "moe_layers": [0, 1, 2, 3], "num_experts": 8, "top_k": 2,
        "expert_intermediate_size": 384, "hidden_size": 256, "vocab_size": 4096, "params_total": 11283200,
        "params_active": 4205312, "dtype": "bfloat16", "expert_groups": 1, "topk_group": 1, "refusals": {},
        "tie_word_embeddings": True}
H, E, I, V, LAYERS = 4096, 8, 14336, 32000, 32        # Mixtral-8x7B-shaped, untied, float32, 2 of 32 layers dense
_EXPERT, _REST = 3 * H * I, 4 * H * H + 2 * H
MIXTRAL = {**DEMO, "family": "mixtral", "num_layers": LAYERS, "moe_layers": 30, "num_experts": E,
           "expert_intermediate_size": I, "hidden_size": H, "vocab_size": V, "dtype": "float32",
           "tie_word_embeddings": False,
           "params_total": 2 * V * H + H + 30 * (E * _EXPERT + E * H) + LAYERS * _REST + 2 * _EXPERT,
           "params_active": 2 * V * H + H + 30 * (2 * _EXPERT + E * H) + LAYERS * _REST + 2 * _EXPERT}
GPT_OSS = {**DEMO, "family": "gpt_oss", "num_layers": 3, "moe_layers": 3, "num_experts": 32, "top_k": 4,
           "expert_intermediate_size": 90, "hidden_size": 90, "vocab_size": 1000, "dtype": "bfloat16",
           "tie_word_embeddings": False, "params_total": 2 * 1000 * 90 + 90 + 3 * (32 * (3 * 90 * 90 + 2 * 90 + 90)
                                                                                  + 32 * 90 + 1000),
           "params_active": 2 * 1000 * 90 + 90 + 3 * (4 * (3 * 90 * 90 + 2 * 90 + 90) + 32 * 90 + 1000)}
GROUPED = {**DEMO, "family": "deepseek_v3", "num_experts": 16, "expert_groups": 4, "topk_group": 2}
REFUSING = {**DEMO, "family": "hunyuan_v1_moe", "refusals": {"layer_dropping": "shared layers"}}

CASES = [  # (summary, compress_args overrides)
    (DEMO, {}), (DEMO, {"keep_ratio": 0.3}), (DEMO, {"keep_ratio": 0.05, "experts_keep": 4, "stages": 1}),
    (DEMO, {"layers_drop": 2, "sparsity": 0.5}), (DEMO, {"keep_ratio": 0.75, "quantize": "GPTQ W4A16"}),
    (DEMO, {"keep_ratio": 0.55, "quantize": "GPTQ experts W4A16 / attention W8A16", "experts_keep": 6, "stages": 1}),
    (DEMO, {"quantize": "W8A16 torchao (RTN)", "sparsity": 0.3}), (DEMO, {"quantize": "RTN FP8", "stages": 1}),
    (MIXTRAL, {"keep_ratio": 0.5}), (MIXTRAL, {"keep_ratio": 0.35, "layers_drop": 31, "quantize": "GPTQ W8A16"}),
    (MIXTRAL, {"experts_keep": 2, "stages": 1, "quantize": "FP8 torchao (RTN)", "sparsity": 0.85}),
    (GPT_OSS, {"keep_ratio": 0.4, "experts_keep": 12, "stages": 1}), (GPT_OSS, {"keep_ratio": 1.0, "layers_drop": 1, "experts_keep": 32}),
    (GROUPED, {"keep_ratio": 0.6, "experts_keep": 16}), (REFUSING, {"keep_ratio": 0.5}),
]
DEFERRED = [  # the server decides: refused, staged expert cuts, grouped routers, family refusals, bad ranges
    (DEMO, {"experts_keep": 1}), (DEMO, {"experts_keep": 4, "stages": 3}), (DEMO, {"layers_drop": 4}),
    (GROUPED, {"experts_keep": 8, "stages": 1}), (REFUSING, {"layers_drop": 1}), (DEMO, {"sparsity": 1.0}),
]


def _page(cases, *, current: str = "CURRENT", note: str = "") -> list[str]:
    """Run live_estimate.js on each (summary, overrides) as the page does: payload, current card, note, controls."""
    calls = [[live_estimate.payload({"summary": s}), current, note, *compress_args(**kw)] for s, kw in cases]
    script = f"const f = ({live_estimate.JS});\nconst calls = {json.dumps(calls)};\n" \
             "process.stdout.write(JSON.stringify(calls.map(c => f(...c))));"
    out = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _server(summary: dict, kw: dict) -> str:
    model = {"source": "demo", "summary": summary}
    f = compress.form(model, *compress_args(**kw))
    return compress.estimate_card(model, f["slimming"], f["quantize"], stages=f["stages"])


def test_page_and_server_give_the_same_card():
    for (summary, kw), html in zip(CASES, _page(CASES)):
        assert html == _server(summary, kw), (summary["family"], kw)


def test_page_leaves_what_it_cannot_decide_to_the_server():
    for (summary, kw), html in zip(DEFERRED, _page(DEFERRED)):
        assert html == "CURRENT", (summary["family"], kw)
    # a refusal on show, or a layer-by-layer run: the server redraws the card with its refusal
    assert _page([(DEMO, {"keep_ratio": 0.3})], current="<div class=\"msg msg-error\">no</div>") == [
        "<div class=\"msg msg-error\">no</div>"]
    assert _page([(DEMO, {"keep_ratio": 0.3})], note="<div data-layered='true'>x</div>") == ["CURRENT"]
    assert live_estimate.payload(None) is None
    assert live_estimate.payload({"summary": {**DEMO, "num_experts": [8, 4]}}) is None
