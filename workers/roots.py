"""Where the studio may read models from, for the web process and the workers alike.

`allowed_source` is the rule of the Model tab's boxes and of every recipe the UI queues: "demo", a hub id, or a
folder / archive whose real path lies under a model root (`MOE_STUDIO_MODEL_ROOTS`, what `python app.py
--model-root DIR` sets; else the data folder, the artifacts folder and the working directory; always the cache's
uploads/ and archives/), with every link inside the folder resolving under a root too. The worker applies it again
right before it loads a run's model (`check_run_source`), so a folder swapped for a link after Enqueue is refused.
External workers read the same variable: give them the app's `MOE_STUDIO_MODEL_ROOTS`.

    allowed_source("org/name@v1", kind="hub")     # "org/name@v1"
    allowed_source("/etc", kind="folder")         # raises SourceError naming the roots
"""
from __future__ import annotations

import os
from pathlib import Path

from compressor.demo.locations import DEMO_NAMES   # the built-in models' names (torch-free)
from compressor.studio_cache import CACHE_PARTS, studio_cache_dir
from storage import artifacts
from storage.db import studio_home

ROOTS_ENV = "MOE_STUDIO_MODEL_ROOTS"
ROOTS_HINT = ("or start the studio with `--model-root DIR` (repeatable; or MOE_STUDIO_MODEL_ROOTS, folders separated "
              "by os.pathsep) to add the model's folder, or upload the model.")


def allowed_model_roots() -> list[Path]:
    """The folders the studio opens models from, real paths: `MOE_STUDIO_MODEL_ROOTS` (os.pathsep-separated; what
    `python app.py --model-root DIR` sets), else the data folder, the artifacts folder and the working directory;
    always the cache's uploads/ and archives/ (staged uploads and their extractions)."""
    env = os.environ.get(ROOTS_ENV, "")
    chosen = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    roots = chosen or [studio_home(), artifacts.artifacts_root(), Path.cwd()]
    roots += [studio_cache_dir() / part for part in CACHE_PARTS]
    real = [Path(os.path.realpath(r)) for r in roots]
    return list(dict.fromkeys(real))


def allowed_source(text: str, *, kind: str = "any") -> str:
    """The source string the studio may open for `text`, by the roots rule; raises SourceError saying why not.

    kind "folder": a folder or archive under `allowed_model_roots()`, returned as its real path (the Local folder
    box); "hub": a hub id 'org/name[@rev]' and never a path (the Hub id box); "any": what a recipe from the UI may
    name: "demo", a hub id, or a folder / archive under the roots. A path outside the roots gets one message whether
    it exists or not.

        allowed_source("org/name@v1", kind="hub")     # "org/name@v1"
        allowed_source("/etc", kind="folder")         # raises SourceError naming the roots
    """
    from compressor.sources import SourceError, parse_hub_id, parse_local_source

    if kind not in ("folder", "hub", "any"):
        raise ValueError(f"unknown source kind {kind!r}; use 'folder', 'hub' or 'any'")
    raw = (text or "").strip()
    roots = allowed_model_roots()
    if kind == "any" and raw.lower() in DEMO_NAMES:
        return raw.lower()
    if kind == "hub" or (kind == "any" and not Path(raw).is_absolute()):
        try:
            hub = str(parse_hub_id(raw))
        except SourceError:
            if kind == "hub":
                raise
        else:
            _refuse_shadowed_hub_id(hub, roots)
            return hub
    return str(parse_local_source(raw, roots, hint=ROOTS_HINT))


def _refuse_shadowed_hub_id(hub: str, roots: list[Path]) -> None:
    """`compressor.sources.parse_source` lets an existing relative path win over a hub id of the same shape; refuse
    a hub id that names such a path outside the roots (inside them, opening it is allowed anyway)."""
    from compressor.sources import SourceError, check_under_roots

    try:
        check_under_roots(hub, roots)
        return
    except SourceError:
        pass
    if os.path.lexists(hub):
        raise SourceError(f"{hub!r} is also the name of a path relative to the studio's working directory, outside "
                          "the folders it opens models from, so it cannot be used as a hub id here; start the studio "
                          "from another directory, or download the model into a model root.")


def check_run_source(model: str, *, extra_roots: tuple[Path, ...] = ()) -> None:
    """A queued run's model checked again by the worker, right before it is loaded. What exists on this machine under
    that name (a path wins over a hub id of the same shape when the pipeline parses it) must pass the folder rule
    of `allowed_source`: under a root, every link inside resolving under a root. "demo", a hub id and a name with
    nothing behind it are left to the pipeline, which loads the demo, downloads the hub id or says the folder is
    missing. `extra_roots`: folders allowed besides the model roots (Compare loads a run's checkpoint from the
    artifacts folder). Raises SourceError."""
    from compressor.sources import parse_local_source

    raw = str(model or "").strip()
    if raw.lower() in DEMO_NAMES:
        return
    try:
        present = os.path.lexists(Path(raw).expanduser())
    except (OSError, ValueError):
        present = False
    if present:
        parse_local_source(raw, [*allowed_model_roots(), *extra_roots], hint=ROOTS_HINT)
