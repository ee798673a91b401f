"""The studio's latencies as a user meets them in Chromium (issue 27, item 9): first page load -> demo card, keep-ratio
slider -> new estimate text, Enqueue -> the new row in Runs. Each studio is a private one (`python app.py` with its
own home, Redis and worker, as tests/ui/conftest.py starts it); `--baseline REV` also measures the code of git
revision REV (exported with `git archive` to a temporary folder, run with this checkout's .venv), the two studios
one after the other in one command, and writes both to bench/results/ui_latency.md.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. .venv/bin/python -m bench.ui_latency --baseline HEAD~1 [--moves 40]

Slider timing is taken inside the page: `performance.now()` when the range input's value is set and its input and
change events are dispatched (what Playwright's fill does), until the last change a MutationObserver sees of the
estimate's card and message text (Gradio's "queue: 1/1 | processing" lines drawn over it are not counted).
Each move waits for the page to settle (no change of the estimate for 1.2 s) before the next, so a late server
answer is not counted as the next move's.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"
OUT = REPO / "bench" / "results" / "ui_latency.md"

_MOVE_JS = """async ([value, settle]) => {
  const est = document.querySelector('#estimate'), input = document.querySelector('#keep-ratio input[type=range]');
  const shown = () => [...est.querySelectorAll('.card, .msg')].map(e => e.innerText).join('|');
  let t1 = null, last = performance.now(), text = shown();
  const obs = new MutationObserver(() => { last = performance.now();
                                           if (shown() !== text) { text = shown(); t1 = last; } });
  obs.observe(est, {subtree: true, childList: true, characterData: true, attributes: true});
  const t0 = performance.now();
  input.value = value;
  input.dispatchEvent(new Event('input', {bubbles: true}));
  input.dispatchEvent(new Event('change', {bubbles: true}));
  while (performance.now() - t0 < 15000 && (t1 === null || performance.now() - last < settle))
    await new Promise(r => setTimeout(r, 10));
  obs.disconnect();
  return t1 === null ? -1 : t1 - t0;       // the last change of the text: the estimate as it stays
}"""


def _start(repo: Path, home: Path):
    from tests.ui.conftest import _free_port, _wait_http, studio_env
    home.mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    env = studio_env(home, TMPDIR=str(home / "tmp"), GRADIO_TEMP_DIR=str(home / "tmp" / "gradio"))
    env["PYTHONPATH"] = str(repo)
    port, log = _free_port(), home / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(repo / "app.py"), "--port", str(port)], cwd=repo, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    _wait_http(f"http://127.0.0.1:{port}/", proc, log, timeout=180)
    return proc, f"http://127.0.0.1:{port}/", time.monotonic() - t0


def _page_load(pg, url: str) -> dict:
    """Seconds from navigation to the Model tab's button, and to the demo's card (opened by the page's load event)."""
    t0 = time.perf_counter()
    pg.goto(url)
    pg.get_by_role("button", name="Open model").wait_for()
    shown = time.perf_counter() - t0
    pg.locator(".msg-ok:has-text('Opened demo') >> visible=true").first.wait_for(timeout=120_000)
    return {"page rendered": shown, "demo card shown": time.perf_counter() - t0}


def _slider(pg, moves: int) -> list[float]:
    pg.get_by_role("tab", name="3 · Compress").click()
    pg.locator("#estimate").get_by_text("Estimated result").wait_for()
    values = [round(0.3 + 0.05 * (i % 12), 2) for i in range(moves + 1)]
    out = []
    for v in values:
        ms = pg.evaluate(_MOVE_JS, [str(v), 1200])
        out.append(ms / 1000 if ms >= 0 else float("nan"))
    return out[1:]                                   # the first move sets up the cycle


def _set_number(pg, label: str, value) -> None:
    box = pg.get_by_label(label, exact=True).first
    box.fill(str(value))
    box.press("Enter")


def _enqueue(pg, n: int) -> list[float]:
    """Enqueue a tiny one-stage run `n` times (each from Compress); seconds from the click to its row in Runs."""
    out = []
    for i in range(n):
        pg.get_by_role("tab", name="3 · Compress").click()
        if i == 0:
            _set_number(pg, "number input for distillation steps (all stages)", 0)
            _set_number(pg, "number input for stages (1 = one-shot)", 1)
            pg.get_by_text("Calibration, evaluation, seed").click()
            for label, v in (("calibration tokens", 256), ("calibration seq_len", 64), ("evaluation tokens", 256)):
                _set_number(pg, label, v)
            time.sleep(1.5)
        name = f"latency {i} {time.time_ns()}"
        pg.get_by_label("run name (optional)").fill(name)
        time.sleep(0.5)
        t0 = time.perf_counter()
        pg.get_by_role("button", name="Enqueue").click()
        pg.locator(f"#runs-table :text('{name}') >> visible=true").first.wait_for(timeout=60_000)
        out.append(time.perf_counter() - t0)
        time.sleep(1.0)
    return out


def measure(repo: Path, home: Path, moves: int, enqueues: int) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.ui.conftest import stop_app
    proc, url, startup = _start(repo, home)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox",
                                                                        "--disable-gpu"])
            pg = browser.new_page(viewport={"width": 1440, "height": 900})
            pg.set_default_timeout(60_000)
            first = _page_load(pg, url)
            again = _page_load(pg, url)
            slider = _slider(pg, moves)
            enq = _enqueue(pg, enqueues)
            browser.close()
    finally:
        stop_app(proc)
    return {"app start to HTTP 200": [startup], "first load: page rendered": [first["page rendered"]],
            "first load: demo card shown": [first["demo card shown"]],
            "reload: demo card shown": [again["demo card shown"]], "slider -> estimate text": slider,
            "Enqueue -> row in Runs": enq}


def _row(name: str, xs: list[float]) -> str:
    ok = [x for x in xs if x == x]
    if not ok:
        return f"| {name} | – | – | 0 of {len(xs)} |"
    med = statistics.median(ok)
    return f"| {name} | {med * 1000:.0f} | {min(ok) * 1000:.0f}-{max(ok) * 1000:.0f} | {len(ok)} of {len(xs)} |"


def report(results: dict[str, dict], args) -> str:
    from bench.common import command_line, machine
    m = machine()
    lines = ["# UI latency in Chromium (issue 27, item 9)", "", "```", command_line(), "```", "",
             "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in m.items()], "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.moves} slider moves, "
             f"{args.enqueues} Enqueues per studio; headless Chromium at 1440x900; milliseconds.", ""]
    for label, res in results.items():
        lines += [f"## {label}", "", "| what | median ms | range ms | counted |", "|---|---|---|---|",
                  *[_row(k, v) for k, v in res.items()], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=None, help="also measure this git revision (before), e.g. HEAD~1")
    p.add_argument("--moves", type=int, default=40)
    p.add_argument("--enqueues", type=int, default=3)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ui-latency-") as tmp:
        if args.baseline:
            base = Path(tmp) / "baseline"
            base.mkdir()
            rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO, check=True,
                                 capture_output=True, text=True).stdout.strip()
            subprocess.run(f"git archive {rev} | tar -x -C {base}", shell=True, cwd=REPO, check=True)
            results[f"before: {rev} ({args.baseline})"] = measure(base, Path(tmp) / "home-base", args.moves,
                                                                  args.enqueues)
        results["this checkout"] = measure(REPO, Path(tmp) / "home", args.moves, args.enqueues)
    text = report(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
