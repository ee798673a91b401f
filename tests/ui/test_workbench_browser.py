"""The experiment workbench in headless Chromium: sort and filter the runs table, tags saved from the page, one
Pareto front per base model, N-run compare with the recipe diff and overlaid loss curves, and the open-in-Compress
round trip (the run's recipe in the sliders, enqueued as a child of that run, which is then selected)."""
from __future__ import annotations

import re

from tests.ui.browser import click_row, pick, table_runs, wait_row, wait_selected
from tests.ui.studio import TINY
from tests.ui.test_browser import CHROMIUM, _shot, browser_page, page  # noqa: F401 - fixtures (CHROMIUM: skip rule)
from tests.ui.workbench import OTHER


def _runs_tab(pg, url) -> None:
    pg.goto(url)
    pg.get_by_role("tab", name="4 · Runs").click()
    pg.locator("#runs-table [role=row].virtual-row").first.wait_for()


def _column(pg, col: int) -> list[str]:
    return pg.evaluate(f"""() => [...document.querySelectorAll('#runs-table [role=row].virtual-row')]
        .map(r => (r.querySelector('[data-col="{col}"]')?.innerText || '').trim())""")


def _choose(pg, elem_id: str, option: str) -> None:
    pg.locator(f"#{elem_id} input").first.click()
    pg.get_by_role("option", name=option, exact=True).click()
    pg.keyboard.press("Escape")


def test_sort_filter_and_tags_in_the_page(studio, page, workbench):
    pg, wb = page, workbench
    _runs_tab(pg, studio.url)
    _choose(pg, "runs-status-filter", "succeeded")
    _choose(pg, "runs-sort", "perplexity")
    pg.locator("#runs-desc input").uncheck()
    pg.wait_for_function("""() => { const v = [...document.querySelectorAll(
        '#runs-table [role=row].virtual-row [data-col="8"]')].map(c => parseFloat(c.innerText));
        return v.length >= 3 && v.every((x, i) => i === 0 || v[i - 1] <= x); }""")
    assert all(s == "succeeded" for s in _column(pg, 3))
    ppl = [float(v) for v in _column(pg, 8)]
    assert ppl == sorted(ppl)
    _choose(pg, "runs-model-filter", OTHER)
    pg.wait_for_function("() => document.querySelectorAll('#runs-table [role=row].virtual-row').length === 1")
    assert [rid for _, rid in table_runs(pg)] == [wb.other]
    pg.locator("#runs-model-filter .token-remove, #runs-model-filter [aria-label='Remove']").first.click()
    pg.wait_for_function("() => document.querySelectorAll('#runs-table [role=row].virtual-row').length >= 3")

    click_row(pg, wb.narrow)
    wait_selected(pg, wb.narrow)
    pg.locator("#run-tags textarea, #run-tags input").first.fill("short-test")
    pg.locator("#run-save").click()
    pg.locator("#runs-status", has_text=f"Run #{wb.narrow}: tags short-test").wait_for()
    pg.locator("#runs-tag-filter textarea, #runs-tag-filter input").first.fill("short-test")
    pg.locator("#runs-tag-filter textarea, #runs-tag-filter input").first.press("Enter")
    pg.wait_for_function("() => document.querySelectorAll('#runs-table [role=row].virtual-row').length === 1")
    assert [rid for _, rid in table_runs(pg)] == [wb.narrow] and _column(pg, 12) == ["short-test"]
    pg.get_by_role("button", name="Export CSV").click()
    pg.locator("#runs-csv").get_by_text("runs.csv").first.wait_for()


def _pareto_runs(pg) -> set[int]:
    texts = pg.evaluate("""() => { const p = document.querySelector('#pareto .js-plotly-plot');
        const t = (p && p.data || []).find(d => d.name === 'runs'); return t ? t.text : []; }""")
    return {int(t.lstrip("#")) for t in texts}


def test_one_pareto_front_per_base_model_in_the_page(studio, page, workbench):
    pg, wb = page, workbench
    _runs_tab(pg, studio.url)
    evaluation = f"eval {TINY['eval_tokens']} x 256"
    for key, inside, outside in ((f"{OTHER} · {evaluation}", {wb.other}, {wb.narrow, wb.wide}),
                                 (f"demo · {evaluation}", {wb.narrow, wb.wide}, {wb.other})):
        _choose(pg, "pareto-group", key)
        pg.locator("#pareto .gtitle", has_text=key).wait_for()
        shown = _pareto_runs(pg)
        assert inside <= shown and not (outside & shown), (key, shown)
    click_row(pg, wb.wide)                                   # the README's picture of Runs: the demo's front
    wait_selected(pg, wb.wide)
    _shot(pg, "4-runs-table")


def test_compare_n_runs_with_the_recipe_diff(studio, page, workbench):
    pg, wb = page, workbench
    pg.goto(studio.url)
    pg.get_by_role("tab", name="5 · Compare").click()
    pg.get_by_role("tab", name="Finished runs: metrics, recipes, losses").click()
    for run_id in (wb.narrow, wb.wide):
        pg.locator("#cmp-runs input").click()
        pg.get_by_role("option", name=re.compile(rf"^#{run_id} ")).click()
    pg.keyboard.press("Escape")
    pg.locator("#cmp-runs-go").click()
    pg.locator("#cmp-runs-status .msg-ok", has_text="2 runs of demo").wait_for()
    diff = pg.locator("#cmp-runs-diff").inner_text()
    assert "slimming.expert_keep_ratio" in diff and "0.75" in diff and "seed" not in diff
    assert "perplexity" in pg.locator("#cmp-runs-metrics").inner_text()
    names = pg.evaluate("() => document.querySelector('#cmp-runs-loss .js-plotly-plot').data.map(d => d.name)")
    assert names == [f"#{wb.narrow} · fixture run", f"#{wb.wide} · wide"]
    _shot(pg, "5-compare-runs")
    pg.get_by_label("log loss axis").check()
    pg.wait_for_function("""() => document.querySelector('#cmp-runs-loss .js-plotly-plot')
        ?.layout?.yaxis?.type === 'log'""")
    pg.locator("#cmp-runs input").click()
    pg.get_by_role("option", name=re.compile(rf"^#{wb.other} ")).click()
    pg.keyboard.press("Escape")
    pg.locator("#cmp-runs-go").click()
    pg.locator("#cmp-runs-status .msg-error", has_text="different base models").wait_for()


def test_open_in_compress_round_trip(studio, page, workbench):
    pg, wb = page, workbench
    _runs_tab(pg, studio.url)
    pick(pg, wb.wide)
    wait_selected(pg, wb.wide)
    pg.locator("#run-open").click()
    pg.locator("#lineage", has_text=f"Editing the recipe of run #{wb.wide}").wait_for()
    assert pg.locator("#keep-ratio input[type='number']").input_value() == "0.75"
    pg.wait_for_function("() => /expert_keep_ratio: 0.75/.test(document.body.innerText)")
    text = pg.locator("#compress-yaml .cm-content").inner_text()          # the form's recipe (first lines shown)
    for line in ("expert_keep_ratio: 0.75", f"tokens: {TINY['calib_tokens']}", f"seq_len: {TINY['calib_seq']}"):
        assert line in text, text
    assert pg.get_by_label("number input for distillation steps (all stages)").input_value() == str(TINY["steps"])
    pg.get_by_label("run name (optional)").fill("edited wide")
    pg.get_by_role("button", name="Enqueue").click()
    made = wait_row(pg, "edited wide")
    wait_selected(pg, made)
    assert f"parent run #{wb.wide}" in pg.locator("#run-head").inner_text()
    assert f"← #{wb.wide}" in pg.locator("#runs-table").inner_text()
    pg.locator("#run-cancel").click()
    pg.locator("#runs-status", has_text=f"Run #{made}").wait_for()
