"""The selection rule of the Runs tab in headless Chromium, with the 2-second refresh running: what the user picks
stays picked across refreshes, Cancel / Re-run / Delete name the run they act on and act on exactly that run, the
run made by Re-run or Enqueue becomes the selected one, and after a delete the ▶ mark and the selector agree."""
from __future__ import annotations

import re

from tests.ui.browser import click_row, is_selected, pick, table_runs, wait_row, wait_selected
from tests.ui.studio import TINY, compress_args, open_demo, wait_run
from tests.ui.test_browser import CHROMIUM, browser_page, page  # noqa: F401 - fixtures (CHROMIUM: skip rule)

LONG = dict(TINY, steps=2000)          # keeps the worker busy for the whole test; cancelled at the end


def _enqueue(client, name: str, **kw) -> int:
    status = client.predict(name, *compress_args(**kw), api_name="/enqueue")
    return int(re.search(r"Run #(\d+) queued", status).group(1))


def _status_of(client, run_id: int) -> str | None:
    table = client.predict(None, api_name="/runs_refresh")[0]
    row = {r[1]: dict(zip(table["headers"], r)) for r in table["data"]}.get(run_id)
    return re.sub(r"<[^>]+>", "", row["status"]) if row else None


def _wait_ticks(pg, n: int = 3) -> None:
    """Until the table has been redrawn `n` times by the timer (a running run's time cell changes every tick)."""
    pg.evaluate("""() => { window.__ticks = 0;
        const obs = new MutationObserver(() => { window.__ticks += 1; });
        obs.observe(document.querySelector('#runs-table'), {subtree: true, childList: true, characterData: true});
        window.__tickObserver = obs; }""")
    pg.wait_for_function(f"() => window.__ticks >= {n}", timeout=30_000)
    pg.wait_for_timeout(2500)                  # and one more full tick after that


def test_actions_act_on_the_picked_run_while_the_refresh_runs(studio, page, finished_run):
    c = studio.client()
    open_demo(c)
    busy = _enqueue(c, "busy", **LONG)
    waiting = _enqueue(c, "waiting", **TINY)
    made = new = None
    try:
        pg = page
        pg.goto(studio.url)
        pg.get_by_role("tab", name="4 · Runs").click()
        assert wait_row(pg, "waiting") == waiting
        assert pg.locator("#run-cancel").inner_text().strip() == "Cancel"        # nothing picked: names no run

        # what the user picks stays picked, whichever way it was picked
        pick(pg, waiting)
        wait_selected(pg, waiting)
        _wait_ticks(pg)
        assert is_selected(pg, waiting), pg.locator('#run-head').inner_text()
        click_row(pg, finished_run)
        wait_selected(pg, finished_run)
        _wait_ticks(pg)
        assert is_selected(pg, finished_run), pg.locator('#run-head').inner_text()

        # Cancel acts on the picked run and says which
        pick(pg, waiting)
        wait_selected(pg, waiting)
        pg.locator("#run-cancel").click()
        pg.locator("#runs-status", has_text=f"Run #{waiting}: cancelled").wait_for()
        assert _status_of(c, waiting) == "cancelled" and _status_of(c, busy) == "running"
        assert _status_of(c, finished_run) == "succeeded"

        # Re-run queues the picked run's recipe and selects the new run
        click_row(pg, finished_run)
        wait_selected(pg, finished_run)
        pg.locator("#run-rerun").click()
        message = pg.locator("#runs-status .msg-ok", has_text=f"queued with the recipe of run #{finished_run}.")
        new = int(re.search(r"Run #(\d+) queued", message.inner_text()).group(1))
        wait_selected(pg, new)
        _wait_ticks(pg)
        assert is_selected(pg, new), pg.locator('#run-head').inner_text()
        assert f"parent run #{finished_run}" in pg.locator("#run-head").inner_text()

        # Delete asks about the picked run, deletes that one; then nothing is selected and nothing is marked
        pick(pg, waiting)
        wait_selected(pg, waiting)
        pg.locator("#run-delete").click()
        pg.get_by_text(f"Delete run #{waiting}").wait_for()
        pg.get_by_role("button", name="Yes, delete it").click()
        pg.locator("#runs-status", has_text=f"Run #{waiting} deleted.").wait_for()
        wait_selected(pg, None)
        _wait_ticks(pg)
        assert is_selected(pg, None), pg.locator('#run-head').inner_text()
        assert waiting not in [rid for _, rid in table_runs(pg)] and _status_of(c, waiting) is None
        assert _status_of(c, new) == "queued"

        # Enqueue from Compress while another run is picked: the new run is selected
        click_row(pg, finished_run)
        wait_selected(pg, finished_run)
        pg.get_by_role("tab", name="3 · Compress").click()
        pg.get_by_label("run name (optional)").fill("from compress")
        pg.get_by_role("button", name="Enqueue").click()
        made = wait_row(pg, "from compress")
        wait_selected(pg, made)
        _wait_ticks(pg)
        assert is_selected(pg, made), pg.locator('#run-head').inner_text()

    finally:                                  # the worker must be free for the next tests, pass or fail
        for run_id in (made, new, busy, waiting):
            if run_id is not None and _status_of(c, run_id) in ("queued", "running"):
                c.predict(run_id, api_name="/cancel_run")
    for run_id in (made, new, busy):
        assert "cancelled" in wait_run(c, run_id, timeout=120)["status"]
