"""What every tab shares: the error guard, message boxes, number formatting, theme and CSS.

Every event function is wrapped by `guard(...)`: an expected error (bad input, a refused model, a missing run)
becomes a readable message in the page (a toast plus the tab's status box, both HTML-escaped: messages quote user
strings such as folder names) and the other outputs stay as they were;
an unexpected one is logged with its traceback on the server and shown as one line, never as a stack trace.

    @guard(outputs=3, status=0)
    def on_click(x): ...          # returns 3 values; on error: (error box, skip, skip)
"""
from __future__ import annotations

import functools
import html
import logging
import math

import gradio as gr

log = logging.getLogger("ui")

TITLE = "MoE Compression Studio"
CSS = """
.status-box {min-height: 0 !important}
.msg {border-radius: 8px; padding: 10px 14px; margin: 4px 0; font-size: 14px; line-height: 1.45}
.msg-error {background: #fef2f2; border: 1px solid #fecaca; color: #991b1b}
.msg-ok {background: #ecfdf5; border: 1px solid #a7f3d0; color: #065f46}
.msg-info {background: #eef2ff; border: 1px solid #c7d2fe; color: #3730a3}
.card {display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin: 6px 0}
.card .cell {background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
             border-radius: 10px; padding: 10px 12px}
.card .k {font-size: 12px; color: var(--body-text-color-subdued); text-transform: uppercase; letter-spacing: .04em}
.card .v {font-size: 20px; font-weight: 600; margin-top: 2px; overflow-wrap: anywhere}
.model-title code {word-break: break-all}
.card .s {font-size: 12px; color: var(--body-text-color-subdued)}
.pbar {background: #e5e7eb; border-radius: 6px; height: 14px; overflow: hidden; min-width: 90px}
.pbar > div {height: 100%; background: linear-gradient(90deg, #6366f1, #4f46e5); transition: width .4s}
.pbar.done > div {background: #059669} .pbar.failed > div {background: #dc2626}
.pbar.cancelled > div {background: #94a3b8}
.pill {display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
       white-space: nowrap}
.pill.queued {background: #f1f5f9; color: #475569} .pill.running {background: #e0e7ff; color: #3730a3}
.pill.succeeded {background: #d1fae5; color: #065f46} .pill.failed {background: #fee2e2; color: #991b1b}
.pill.cancelled {background: #f1f5f9; color: #64748b}
.gen-box textarea {font-family: ui-monospace, monospace !important; font-size: 13px !important}
footer {display: none !important}
#runs-table .cell-selected, #runs-table .cell-selected * {box-shadow: none !important; outline: none !important}
#runs-table .cell-selected::before, #runs-table .cell-selected::after {display: none !important}
#runs-table .selection-button {display: none !important}
#runs-table [data-col="0"] {color: #4f46e5; font-weight: 700}
#cmp-runs-metrics table, #cmp-runs-diff table {table-layout: fixed; width: 100% !important}
#cmp-runs-metrics th, #cmp-runs-metrics td, #cmp-runs-diff th, #cmp-runs-diff td {min-width: 0 !important;
    width: auto !important; overflow-wrap: anywhere}
#cmp-runs-metrics th:first-child, #cmp-runs-metrics td:first-child {width: 22% !important}
"""


def theme() -> gr.themes.Base:
    """Soft, indigo; system fonts only (no web-font download: the studio may run offline)."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
                          font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


# -- messages ------------------------------------------------------------------------------------------------------
def box(text: str, kind: str = "info") -> str:
    """An HTML message box (kind: info | ok | error); the text is escaped."""
    return f'<div class="msg msg-{kind}">{html.escape(text)}</div>'


def error_text(exc: BaseException) -> str:
    """One readable line for an exception: the message of an expected error, the type too otherwise."""
    msg = str(exc).strip() or type(exc).__name__
    return msg if isinstance(exc, EXPECTED) else f"{type(exc).__name__}: {msg}"


def _expected() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [ValueError, LookupError, FileNotFoundError, PermissionError]
    for mod, name in (("workers.service", "RunBusy"), ("workers.service", "BrokerUnavailable"),
                      ("compressor.isolate", "IsolatedFailure")):
        try:
            kinds.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


EXPECTED = _expected()


def guard(*, outputs: int, status: int | None = 0, toast: bool = True):
    """Wrap an event function: on an exception, return an error box at `status` and `gr.skip()` elsewhere.

    `outputs` is the number of outputs of the event; `status=None` means the event has no status box (the toast
    alone carries the message)."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every error becomes a message; the traceback goes to the log
                if not isinstance(exc, EXPECTED):
                    log.exception("event %s failed", fn.__name__)
                text = error_text(exc)
                if toast:
                    gr.Warning(html.escape(text, quote=False), duration=8)   # Gradio renders toasts as HTML
                values = [gr.skip()] * outputs
                if status is not None:
                    values[status] = box(text, "error")
                return values[0] if outputs == 1 else tuple(values)
        return inner
    return wrap


def fit_slider(value, *, maximum: float, minimum: float | None = None) -> dict:
    """A slider update that gives its range and a value inside it together: Gradio checks every later read of the
    slider against the range it last sent, so a narrower range alone leaves an old value out of it ("Value 8 is
    greater than maximum value 4")."""
    low = minimum if minimum is not None else -math.inf
    value = min(max(value if value is not None else low, low), maximum)
    kw = {"minimum": minimum} if minimum is not None else {}
    return gr.update(maximum=maximum, value=value, **kw)


def run_id_of(value) -> int:
    """A run id from a dropdown value: an int or a string of digits, nothing else (never a path)."""
    if isinstance(value, bool) or value in (None, ""):
        raise ValueError("choose a run from the list first")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{str(value)[:40]!r} is not a run id; choose a run from the list")


# -- numbers -------------------------------------------------------------------------------------------------------
def fmt_count(n: float | int | None) -> str:
    """12_345_678 -> '12.3 M'."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}" if abs(n) / scale < 100 else f"{n / scale:.0f} {unit}"
    return f"{n:.0f}"


def fmt_bytes(n: float | int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def card(cells: list[tuple[str, str, str]]) -> str:
    """A grid of (key, value, small print) cells."""
    parts = [f'<div class="cell"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div>'
             f'<div class="s">{html.escape(s)}</div></div>' for k, v, s in cells]
    return '<div class="card">' + "".join(parts) + "</div>"


def progress_bar(fraction: float, status: str = "running") -> str:
    pct = max(0.0, min(1.0, float(fraction or 0.0))) * 100
    cls = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled"}.get(status, "")
    return f'<div class="pbar {cls}" title="{pct:.0f}%"><div style="width:{pct:.1f}%"></div></div>'
