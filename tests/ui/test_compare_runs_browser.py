"""The N-run compare at 1440 px shows four runs without a horizontal scroll (issue 27, item 10): the Compare tab's
finished-runs view, served in-process over four stored runs (services faked), measured in headless Chromium."""
from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from ui import compare_runs, services

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
NAMES = ["half-width, 3 stages", "REAM 4 experts one-shot", "W8A16 torchao twin", "keep 0.25 + 300 steps"]


def _run(i: int):
    speed = {"prefill_speedup": 0.98 + i / 10, "prefill_speedup_range": [0.7, 1.3 + i / 10], "decode_speedup": 0.39,
             "decode_speedup_range": [0.3, 1.4], "prefill_tokens_per_s": 2000.0, "decode_tokens_per_s": 30.5,
             "baseline_prefill_tokens_per_s": 1800.0, "baseline_decode_tokens_per_s": 40.0}
    metrics = {"perplexity": 90.0 + i, "baseline_perplexity": 80.0, "params_active": 3e6, "top1_agreement": 0.9,
               "kl_to_baseline": 0.12, "baseline_params_active": 6e6, "params_total": 13_140_000,
               "checkpoint_bytes": 13_140_000, "evaluation": {"speed": speed}}
    recipe = {"model": "demo", "slimming": {"expert_keep_ratio": 0.5 - i / 10}, "distill": {"steps": 10 * i}}
    return SimpleNamespace(id=i, name=NAMES[i - 1], status="succeeded", recipe=recipe, metrics=metrics, stages=[],
                           started_at=None, finished_at=None, heartbeat_at=None)


@pytest.fixture
def served(monkeypatch):
    runs = {i: _run(i) for i in range(1, 5)}
    monkeypatch.setattr(services, "get_run", lambda rid: runs[rid])
    monkeypatch.setattr(compare_runs.catalog, "labels_by_source", lambda: {})
    from ui.common import CSS, theme
    with gr.Blocks() as demo:
        tab = compare_runs.build()
        tab.go.click(compare_runs.compare_runs, [tab.runs, tab.smoothing, tab.log_y],
                     [tab.status, tab.metrics, tab.diff, tab.loss])
        demo.load(lambda: gr.update(choices=[(f"#{i}", i) for i in runs], value=list(runs)), None, tab.runs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                theme=theme())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_four_runs_fit_a_1440_px_window(served):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": 1440, "height": 900})
            pg.set_default_timeout(60_000)
            pg.goto(served)
            pg.wait_for_function("() => document.querySelectorAll('#cmp-runs .token, #cmp-runs [class*=token]')"
                                 ".length >= 4")                # the four runs are picked (demo.load)
            pg.locator("#cmp-runs-go").click()
            pg.wait_for_function("() => (document.querySelector('#cmp-runs-metrics')?.innerText || '')"
                                 ".includes('keep 0.25 + 300 steps')")
            fit = pg.evaluate("""() => {
                const root = document.querySelector('#cmp-runs-metrics');
                const boxes = [...root.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 2
                    && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX));
                const heads = [...root.querySelectorAll('th, [role=columnheader]')]
                    .map(h => [h.innerText.trim(), h.getBoundingClientRect().right]);
                return {scrolling: boxes.length, heads, width: document.documentElement.clientWidth};
            }""")
        finally:
            browser.close()
    assert fit["scrolling"] == 0, fit
    last = [right for text, right in fit["heads"] if "keep 0.25 + 300 steps" in text]
    assert last and last[0] <= fit["width"], fit
