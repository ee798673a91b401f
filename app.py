"""MoE Compression Studio: `python app.py` serves the studio on http://127.0.0.1:7860.

With no REDIS_URL it starts a private Redis and one Celery worker (workers.embedded) and stops them on exit; with
REDIS_URL (and DATABASE_URL) it uses the given broker and database and workers started with
`celery -A workers worker`.

    python app.py                                   # embedded services, SQLite under ./studio-data
    python app.py --host 0.0.0.0 --port 8080 --auth alice:secret
    python app.py --model-root ~/models --model-root /srv/hf   # the Model tab opens folders under these only
    REDIS_URL=redis://h:6379/0 DATABASE_URL=postgresql+psycopg://u:p@h/db python app.py

Environment: MOE_STUDIO_AUTH (user:password), MOE_STUDIO_HOST, MOE_STUDIO_PORT, MOE_STUDIO_MAX_UPLOAD (e.g. 20gb),
MOE_STUDIO_MODEL_ROOTS (folders separated by os.pathsep; default the data folder and the current directory),
MOE_STUDIO_CACHE_QUOTA (uploads + extracted archives, default 100gb), DATABASE_URL, REDIS_URL, MOE_STUDIO_HOME (data
directory). Gradio serves returned files only from the artifacts folder (`allowed_paths`), its cache, the working
directory and the temp folder, so downloads work with the data folder anywhere (e.g. MOE_STUDIO_HOME=/data).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import urllib.parse
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from compressor.quiet import silence_import_noise  # noqa: E402

silence_import_noise()              # torchao's CUDA-extension and torch's pytree warnings, before anything imports them

import gradio as gr  # noqa: E402

from ui import compare, compare_runs, compress, download, explore, model, open_run, runs  # noqa: E402
from ui.common import CSS, TITLE, theme  # noqa: E402

HEADER = (f"<div style='margin:2px 0 6px'><div style='font-size:24px;font-weight:700;white-space:nowrap'>{TITLE}"
          "</div><div style='color:#64748b;font-size:14px;margin-top:2px'>pick a model → see which experts and layers "
          "matter → slim it → watch the job → compare the outputs → download the result</div></div>")


def _show_runs(run_id):
    """After a successful Enqueue: open the Runs tab with the new run selected."""
    if run_id is None:
        return gr.skip(), gr.skip()
    return gr.Tabs(selected="runs"), gr.update(choices=[(f"#{run_id} · queued", run_id)], value=run_id)


def build_app() -> gr.Blocks:
    """The studio's Blocks: six tabs, each built by its ui/ module and then wired."""
    with gr.Blocks(title=TITLE) as demo:
        gr.HTML(HEADER)
        model_state = gr.State(None)
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Model", id="model"):
                m = model.build()
            with gr.Tab("2 · Explore", id="explore") as t_explore:
                e = explore.build()
            with gr.Tab("3 · Compress", id="compress"):
                c = compress.build()
            with gr.Tab("4 · Runs", id="runs"):
                r = runs.build()
            with gr.Tab("5 · Compare", id="compare") as t_compare:
                with gr.Tabs():
                    with gr.Tab("Two models: generations", id="compare-models"):
                        cmp = compare.build()
                    with gr.Tab("Finished runs: metrics, recipes, losses", id="compare-runs") as t_compare_runs:
                        cmp_runs = compare_runs.build()
            with gr.Tab("6 · Download", id="download") as t_download:
                d = download.build()
        model.wire(m, model_state=model_state)
        explore.wire(e, model_state=model_state, tab_item=t_explore)
        runs_in, runs_out = runs.wire(r)
        enqueued, run_id = compress.wire(c, model_state=model_state)
        # the new run is selected (the selector's change event then draws its details and buttons: ui.runs, the
        # selection rule), and the chain draws the table with the timer's own refresh, the new run's row marked,
        # instead of waiting for the next tick
        enqueued.then(_show_runs, run_id, [tabs, r.run], api_name="show_runs", show_progress="hidden").then(
            runs.refresh, runs_in, runs_out, api_name="runs_after_enqueue", show_progress="hidden", **runs.VIEW)
        # Runs' "Open in Compress": the picked run's model in tab 1, its recipe in the sliders, then Compress
        open_run.wire(r, c, m, model_state=model_state, tabs=tabs)
        compare.wire(cmp, model_state=model_state, tab_item=t_compare)
        compare_runs.wire(cmp_runs, tab_items=[t_compare, t_compare_runs])
        download.wire(d, tab_item=t_download)
        demo.load(model.open_model, [m.kind, m.path, m.hub, m.files, m.staged],
                  [m.status, m.summary, model_state, m.staged], api_name="startup_model")
    return demo


def parse_auth(text: str | None) -> list[tuple[str, str]] | None:
    """"user:password" (several separated by commas) -> [(user, password)]; None/empty -> no auth."""
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise SystemExit(f"--auth / MOE_STUDIO_AUTH: expected user:password, got {item.strip()!r}")
        pairs.append((user, password))
    return pairs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MoE Compression Studio (Gradio UI + job workers)")
    p.add_argument("--host", default=os.environ.get("MOE_STUDIO_HOST", "127.0.0.1"),
                   help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it, use --auth)")
    p.add_argument("--port", type=int, default=int(os.environ.get("MOE_STUDIO_PORT", "7860")))
    p.add_argument("--database-url", default=None, help="SQLAlchemy URL (default $DATABASE_URL or SQLite file)")
    p.add_argument("--redis-url", default=None, help="broker (default $REDIS_URL; unset = private Redis + worker)")
    p.add_argument("--auth", default=os.environ.get("MOE_STUDIO_AUTH"), help="user:password for basic login")
    p.add_argument("--max-upload", default=os.environ.get("MOE_STUDIO_MAX_UPLOAD", "20gb"),
                   help="largest upload, e.g. 500mb or 20gb")
    p.add_argument("--model-root", action="append", default=None, metavar="DIR",
                   help="a folder the Model tab may open models from; repeatable (default $MOE_STUDIO_MODEL_ROOTS, "
                        "else the data folder and the current directory)")
    return p.parse_args(argv)


def model_roots_env(dirs: list[str]) -> str:
    """`--model-root` values -> the MOE_STUDIO_MODEL_ROOTS value: real paths joined by os.pathsep. Each must be an
    existing folder."""
    roots = []
    for d in dirs:
        path = Path(os.path.realpath(Path(d).expanduser()))
        if not path.is_dir():
            raise SystemExit(f"--model-root {d!r}: no such folder; give an existing folder of models")
        roots.append(str(path))
    return os.pathsep.join(roots)


def redact_url(url: str) -> str:
    """A broker or database URL with its password replaced by '***', for logs.

        redact_url("redis://:s3cret@h:6379/0")              # "redis://:***@h:6379/0"
        redact_url("postgresql+psycopg://u:p@h/db")         # "postgresql+psycopg://u:***@h/db"
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:      # e.g. an unbalanced '[': show nothing of it
        return "<unparsable URL>"
    if "@" not in parts.netloc or ":" not in parts.netloc.rpartition("@")[0]:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}").geturl()


def allowed_paths() -> list[str]:
    """What Gradio may serve besides its cache, the working directory and the temp folder: the artifacts folder
    (the download zips), and nothing else."""
    from storage.artifacts import artifacts_root
    return [str(artifacts_root())]


def blocked_paths() -> list[str]:
    """What Gradio must never serve, even inside `allowed_paths`: the folder where download zips are written before
    they are renamed into place (`storage.artifacts.partial_dir`), so a half-written zip cannot be fetched."""
    from storage.artifacts import partial_dir
    return [str(partial_dir())]


def launch(demo: gr.Blocks, *, host: str, port: int, auth=None, max_upload: str = "20gb", block: bool = True):
    """Queue and launch with the studio's theme, CSS, upload cap and no stack traces in the page. With `auth`, failed
    logins back off per client address and the API description is not published (ui.login: the trade-offs)."""
    from starlette.middleware import Middleware

    from ui.login import LoginThrottle, hide_api

    demo.queue(default_concurrency_limit=4)
    extra = {}
    if auth:
        hide_api(demo)
        extra = dict(app_kwargs={"middleware": [Middleware(LoginThrottle)]}, footer_links=["gradio", "settings"])
    return demo.launch(server_name=host, server_port=port, auth=auth, theme=theme(), css=CSS,
                       max_file_size=max_upload, show_error=False, prevent_thread_lock=not block,
                       allowed_paths=allowed_paths(), blocked_paths=blocked_paths(),
                       auth_message="MoE Compression Studio: sign in" if auth else None, quiet=True, **extra)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    os.environ["MOE_STUDIO_MAX_UPLOAD"] = args.max_upload
    if args.model_root:
        os.environ["MOE_STUDIO_MODEL_ROOTS"] = model_roots_env(args.model_root)
    auth = parse_auth(args.auth)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not auth:
        logging.warning("serving on %s without --auth: anyone who can reach this port can use the studio",
                        args.host)
    from workers.embedded import EmbeddedServices

    # SIGTERM ends the studio like Ctrl-C: Gradio closes its server, then the embedded services stop.
    signal.signal(signal.SIGTERM, _interrupt)
    # The page does not wait for the worker: runs queued before it is ready wait in Redis. Its readiness is checked
    # in the background so a worker that cannot start is still reported.
    from ui import tempfiles

    tempfiles.use_private_gradio_temp_dir()     # before the Blocks are built: they read GRADIO_TEMP_DIR
    tempfiles.sweep(None)                       # what an earlier studio left (a kill -9 runs no cleanup)
    sweeper = tempfiles.Sweeper().start()
    with EmbeddedServices(wait_ready_s=0) as services:
        from storage.db import database_url
        mode = "embedded Redis + 1 worker" if services.embedded else f"broker {redact_url(services.redis_url)}"
        logging.info("studio on http://%s:%d (%s; database %s)", args.host, args.port, mode,
                     redact_url(database_url()))
        if services.worker_proc is not None:
            threading.Thread(target=_check_worker, args=(services,), daemon=True, name="worker-ready").start()
        demo = build_app()
        try:
            launch(demo, host=args.host, port=args.port, auth=auth, max_upload=args.max_upload, block=True)
        finally:
            demo.close()
            sweeper.stop()
            tempfiles.sweep(None)
    return 0


def _check_worker(services) -> None:
    try:
        services.wait_ready(120)
        logging.info("embedded worker ready")
    except Exception as exc:        # noqa: BLE001 - a thread's error must not end as a traceback on the console
        if services.running:        # a stop in progress takes the broker away: that is not the worker's failure
            logging.error("the embedded worker did not become ready: %s", exc)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:       # Ctrl-C or SIGTERM: main's with-blocks have stopped Gradio, the worker and Redis
        logging.info("studio stopped")
        sys.exit(130)
