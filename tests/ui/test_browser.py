"""End to end in headless Chromium, as a new user: pick the demo model, see the heatmap, move the keep-ratio slider
and see the estimate change, enqueue a tiny run and see it finish in Runs, compare outputs, download the zip, load it
with transformers. Saves a screenshot of every tab to docs/screenshots/ and records the UI timings.

Needs Debian's chromium at /usr/bin/chromium (`apt-get install chromium`); skipped without it unless
MOE_STUDIO_REQUIRE_SERVICES=1 (CI), where a missing browser fails the test.
"""
from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from tests.ui.studio import TINY

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1360, "height": 900}
BROWSER_STEPS = 6            # a few more than the other tiny runs, so the screenshot shows a loss curve

if not Path(CHROMIUM).exists():
    if os.environ.get("MOE_STUDIO_REQUIRE_SERVICES") == "1":
        raise RuntimeError(f"{CHROMIUM} is missing and MOE_STUDIO_REQUIRE_SERVICES=1: apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


@pytest.fixture
def page(browser_page, studio, request):
    """The browser page; when a test fails, a screenshot and the app log's tail go next to the studio's files."""
    yield browser_page
    if getattr(request.node, "failed", False):
        shot = studio.home / f"failure-{request.node.name}.png"
        browser_page.screenshot(path=str(shot), full_page=True)
        print(f"\nfailure screenshot: {shot}\napp log tail:\n{studio.log.read_text()[-3000:]}")


def _tab(pg, name: str) -> None:
    pg.get_by_role("tab", name=name).click()


def _shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    time.sleep(0.6)                                   # let plotly finish its transitions
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _visible(pg, selector: str):
    return pg.locator(f"{selector} >> visible=true").first


def _set_number(pg, label: str, value) -> None:
    box = pg.get_by_label(label, exact=True).first
    box.fill(str(value))
    box.press("Enter")


def _heatmap_switch(pg, score: str, label: str) -> float:
    """Choose an expert score; seconds from the click on it until its heatmap is drawn (server round trip, figure
    JSON, plotly render)."""
    pg.get_by_label("expert score", exact=True).click()
    option = pg.get_by_role("option", name=score, exact=True)
    option.wait_for()
    t0 = time.perf_counter()
    option.click()
    pg.locator(".js-plotly-plot .gtitle", has_text=label).first.wait_for()
    return time.perf_counter() - t0


def _wait_explore(pg) -> None:
    pg.locator(".msg-ok", has_text="Analysis finished").or_(pg.locator(".msg-ok", has_text="from the cache")) \
        .first.wait_for(timeout=180_000)
    pg.locator(".js-plotly-plot .gtitle", has_text="per layer and expert").first.wait_for()


def test_new_user_flow(studio, page, tmp_path):
    pg, timings = page, studio.timings
    # 1. open the app and pick the demo model
    t0 = time.perf_counter()
    pg.goto(studio.url)
    pg.get_by_role("button", name="Open model").wait_for()
    timings["browser: first page rendered (s)"] = time.perf_counter() - t0
    pg.get_by_label("Demo model (built in)").check()
    pg.get_by_role("button", name="Open model").click()
    _visible(pg, ".msg-ok:has-text('Opened demo')").wait_for()
    pg.get_by_text("PARAMS ACTIVE", exact=False).first.wait_for()
    _shot(pg, "1-model")

    # 2. see the heatmap (the analysis starts by itself when the tab opens; a job, polled)
    _tab(pg, "2 · Explore")
    t0 = time.perf_counter()
    _wait_explore(pg)
    timings["browser: explore tab to heatmap, demo (s)"] = time.perf_counter() - t0
    timings["browser: heatmap render, demo, 4x8 (s)"] = _heatmap_switch(pg, "frequency", "routing frequency")
    _heatmap_switch(pg, "reap", "REAP per layer")
    _shot(pg, "2-explore")

    # 3. move the keep-ratio slider and see the estimate change
    _tab(pg, "3 · Compress")
    estimate = pg.locator("#estimate")
    estimate.get_by_text("Estimated result").wait_for()
    before = estimate.inner_text()
    t0 = time.perf_counter()
    pg.locator("#keep-ratio input[type='range']").fill("0.3")
    pg.wait_for_function("([el, old]) => el.innerText !== old", arg=[estimate.element_handle(), before])
    timings["browser: slider to estimate (s)"] = time.perf_counter() - t0
    assert estimate.inner_text() != before
    _shot(pg, "3-compress")

    # 4. enqueue a tiny run and see it finish in Runs
    pg.locator("#keep-ratio input[type='range']").fill(str(TINY["keep_ratio"]))
    _set_number(pg, "number input for stages (1 = one-shot)", TINY["stages"])
    _set_number(pg, "number input for distillation steps (all stages)", BROWSER_STEPS)
    pg.get_by_text("Calibration, evaluation, seed").click()
    _set_number(pg, "calibration tokens", TINY["calib_tokens"])
    _set_number(pg, "calibration seq_len", TINY["calib_seq"])
    _set_number(pg, "evaluation tokens", TINY["eval_tokens"])
    pg.get_by_label("speed", exact=True).uncheck()              # no speed benchmark in a tiny test run
    pg.get_by_label("run name (optional)").fill("browser run")
    time.sleep(0.5)
    pg.get_by_role("button", name="Enqueue").click()
    _visible(pg, "#runs-table").wait_for()                       # the app switches to Runs
    t0 = time.perf_counter()
    _visible(pg, "#runs-table :text('browser run')").wait_for(timeout=10_000)
    timings["browser: enqueue to row in Runs (s)"] = time.perf_counter() - t0
    head = pg.locator("#run-head")
    head.get_by_text("browser run").wait_for()                 # the new run is the one shown below the table
    head.locator(".pill.succeeded, .pill.failed, .pill.cancelled").first.wait_for(timeout=240_000)
    assert head.locator(".pill.succeeded").count() == 1, head.inner_text()
    timings["browser: tiny run finished (s)"] = time.perf_counter() - t0
    pg.locator(".js-plotly-plot .gtitle", has_text="size against quality").first.wait_for()
    _shot(pg, "4-runs")

    # 5. compare outputs
    _tab(pg, "5 · Compare")
    pg.get_by_label("model B").wait_for()
    time.sleep(1.0)                                            # choices refresh on tab select
    pg.get_by_role("button", name="Compare").click()
    _visible(pg, ".msg-ok:has-text('Top-1 agreement')").wait_for()
    text_a = pg.locator("#gen-a textarea").input_value()
    text_b = pg.locator("#gen-b textarea").input_value()
    assert text_a and text_b
    _shot(pg, "5-compare")

    # 6. download the zip
    _tab(pg, "6 · Download")
    pg.get_by_role("button", name="Prepare zip").click()
    button = pg.locator("#dl-button")
    button.wait_for(state="visible")
    with pg.expect_download() as info:
        button.click()
    zip_path = tmp_path / "run.zip"
    info.value.save_as(zip_path)
    _shot(pg, "6-download")

    # 7. load the downloaded checkpoint with transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path / "unzipped")
    ckpt = next((tmp_path / "unzipped").glob("run-*/checkpoint"))
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    out = model.generate(**tok("The state of our union is", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 5 and torch.isfinite(model(input_ids=out).logits).all()


def test_heatmap_of_a_64_expert_model(studio, page):
    """Render time of the layer x expert heatmap for a synthetic 64-expert, top-8, 2-layer model (the grid the
    benchmarks' realistic synthetic model has), opened from a local folder (under the data folder: a model root)."""
    from transformers import AutoTokenizer

    from compressor.demo import demo_model_dir
    from compressor.testing import tiny_moe
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    folder = studio.home / "models" / "moe64"
    tiny_moe("qwen3_moe", hidden=64, experts=64, top_k=8, width=32, layers=2, vocab=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    pg = page
    _tab(pg, "1 · Model")
    pg.get_by_label("Local folder").check()
    pg.get_by_label("Folder on this machine").fill(str(folder))
    pg.get_by_role("button", name="Open model").click()
    _visible(pg, ".msg-ok:has-text('64 experts')").wait_for()
    _tab(pg, "2 · Explore")
    _wait_explore(pg)
    assert pg.locator(".js-plotly-plot .xtick").count() >= 16
    studio.timings["browser: heatmap render, 64 experts x 2 layers (s)"] = _heatmap_switch(
        pg, "frequency", "routing frequency")
