"""Helpers of the browser tests (Playwright + Debian's chromium): the page fixture lives in test_browser.py; these
read and drive the Runs tab the way a user does."""
from __future__ import annotations

import re

SELECT = "#run-select"


def table_runs(pg) -> list[tuple[str, int]]:
    """(mark, run id) of every row of the runs table as drawn (mark is "▶" on the selected run's row)."""
    return pg.evaluate("""() => [...document.querySelectorAll('#runs-table [role=row].virtual-row')].map(row => [
        (row.querySelector('[data-col="0"]')?.innerText || '').trim(),
        parseInt((row.querySelector('[data-col="1"]')?.innerText || '').trim())])""")


def marked(pg) -> list[int]:
    return [rid for mark, rid in table_runs(pg) if mark == "▶"]


def selector_run(pg) -> int | None:
    """The run id the selector shows ("#7 · queued · name" -> 7), None when empty."""
    m = re.match(r"#(\d+)", pg.locator(f"{SELECT} input").input_value())
    return int(m.group(1)) if m else None


def pick(pg, run_id: int) -> None:
    """Choose a run in the selector list."""
    pg.locator(f"{SELECT} input").click()
    pg.get_by_role("option", name=re.compile(rf"^#{run_id} ")).click()


def click_row(pg, run_id: int) -> None:
    """Click a run's row in the table (its name cell)."""
    rows = table_runs(pg)
    index = [rid for _, rid in rows].index(run_id)
    pg.locator(f"#runs-table [role=row].virtual-row[data-index='{index}'] [data-col='2']").click()


def head_run(pg) -> int | None:
    m = re.search(r"Run #(\d+)", pg.locator("#run-head").inner_text())
    return int(m.group(1)) if m else None


_SELECTED_JS = """([rid, tag]) => {
    const sel = document.querySelector('#run-select input')?.value || '';
    const head = document.querySelector('#run-head')?.innerText || '';
    const rows = [...document.querySelectorAll('#runs-table [role=row].virtual-row')];
    const marks = rows.filter(r => (r.querySelector('[data-col="0"]')?.innerText || '').trim() === '▶')
                      .map(r => parseInt(r.querySelector('[data-col="1"]').innerText));
    const cancel = (document.querySelector('#run-cancel')?.innerText || '').trim();
    if (rid === null) return !/^#\\d/.test(sel) && marks.length === 0 && !/Run #/.test(head) && cancel === 'Cancel';
    return sel.startsWith('#' + rid + ' ') && head.includes('Run #' + rid) && marks.length === 1
           && marks[0] === rid && cancel === 'Cancel' + tag;
}"""


def _tag(run_id):
    return f" #{run_id}" if run_id is not None else ""


def wait_selected(pg, run_id: int | None, timeout_ms: int = 20_000) -> None:
    """Until the selector, the head, the ▶ mark and the action buttons all name `run_id` (None: nothing)."""
    pg.wait_for_function(_SELECTED_JS, arg=[run_id, _tag(run_id)], timeout=timeout_ms)


def is_selected(pg, run_id: int | None) -> bool:
    """Whether the selector, the head, the ▶ mark and the action buttons all name `run_id` now."""
    return pg.evaluate(_SELECTED_JS, [run_id, _tag(run_id)])


def wait_row(pg, name: str, timeout_ms: int = 30_000) -> int:
    """Until a drawn row of the runs table has `name` in its name cell; that row's run id."""
    handle = pg.wait_for_function(
        """(name) => { const row = [...document.querySelectorAll('#runs-table [role=row].virtual-row')]
            .find(r => (r.querySelector('[data-col="2"]')?.innerText || '').includes(name));
            return row ? parseInt(row.querySelector('[data-col="1"]').innerText) : null; }""",
        arg=name, timeout=timeout_ms)
    return int(handle.json_value())
