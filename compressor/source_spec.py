"""What a model source names, and whether the studio may open it: the built-in demo, a local Hugging Face folder, an
archive of one, or a hub id; local folders only under the studio's model roots (real path, symlinks resolved, every
link inside the folder resolving under a root too); user strings in messages cut to 200 characters (`shown`).

    parse_source("Qwen/Qwen3-30B-A3B@main")     # ModelSource(kind="hub", location="Qwen/Qwen3-30B-A3B", revision="main")
    parse_local_source("models/mine", roots)    # SourceError unless it resolves under one of `roots`
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from compressor.archive import ARCHIVE_SUFFIXES, archive_kind


SOURCE_KINDS = ("demo", "directory", "archive", "hub")


ACCEPTED_FORMS = ("'demo'; a local Hugging Face model folder (config.json + *.safetensors); a .zip / .tar.gz / "
                  ".tgz / .tar of such a folder; or a hub id 'org/name' or 'org/name@revision'")


_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
                     r"(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]{0,199}))?$")


SHOWN_CHARS = 200   # user strings in messages are cut to this many characters


class SourceError(ValueError):
    """A model source that cannot be used; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class ModelSource:
    kind: str                   # one of SOURCE_KINDS
    location: str               # "demo", an absolute path, or a hub repo id
    revision: str | None = None  # hub only: branch, tag or commit

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise SourceError(f"unknown source kind {self.kind!r}; expected one of {SOURCE_KINDS}")
        if self.revision is not None and self.kind != "hub":
            raise SourceError(f"a revision only applies to hub ids, not to a {self.kind} source")

    def __str__(self) -> str:
        return f"{self.location}@{self.revision}" if self.revision else self.location


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """`repr` of a user string for a message, cut to `limit` characters with an ellipsis and the full length.

        shown("a/b")          # "'a/b'"
        shown("x" * 10**5)    # "'xxx…xxx'… (100000 characters)"
    """
    text = str(text)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def parse_source(text: str) -> ModelSource:
    """Classify a user string: 'demo' | existing folder | existing archive file | 'org/name[@rev]' hub id.

    A path that exists wins over a hub id of the same shape. A lone *.safetensors file is refused: a model needs
    its config.json next to the weights. Unrestricted (the CLI's rule); the studio uses `parse_local_source` and
    `parse_hub_id` instead.
    """
    raw = (text or "").strip()
    if not raw:
        raise SourceError(f"empty model source; accepted forms: {ACCEPTED_FORMS}")
    if raw.lower() in ("demo", "demo-smollm"):   # demo-smollm: compressor/demo/smollm.py, assembled on first use
        return ModelSource("demo", raw.lower())
    local = _local_source(Path(raw).expanduser(), raw)
    if local is not None:
        return local
    hub = _hub_source(raw)
    if hub is not None:
        return hub
    raise SourceError(f"{shown(raw)} is not an existing folder or archive, and not a hub id; accepted forms: "
                      f"{ACCEPTED_FORMS}")


def parse_hub_id(text: str) -> ModelSource:
    """A hub id 'org/name' or 'org/name@revision' (letters, digits, '.', '_', '-'; no '..') and nothing else: the
    disk is never looked at, so no path can be opened or probed through it.

        parse_hub_id("Qwen/Qwen1.5-MoE-A2.7B@main")   # ModelSource("hub", "Qwen/Qwen1.5-MoE-A2.7B", "main")
        parse_hub_id("/etc")                           # raises SourceError
    """
    raw = (text or "").strip()
    hub = _hub_source(raw)
    if hub is None:
        raise SourceError(f"{shown(raw)} is not a hub id: type 'org/name' or 'org/name@revision' (letters, digits, "
                          "'.', '_' and '-'). A model on this machine is opened as a local folder or an upload.")
    return hub


def check_under_roots(text: str, roots: Sequence[Path | str], *, hint: str = "") -> Path:
    """The real path of `text` when it lies under one of `roots`; SourceError otherwise.

    Rule: both the plain absolute path (`~` expanded, relative to the current directory, '..' folded) and the real
    path (every symlink resolved) must lie under a root's real path. The check needs no look at what the path
    holds, so a path outside gets the same message whether it exists or not, and a folder is never listed.

        check_under_roots("models/m", [Path.cwd()])    # -> the real path of ./models/m
        check_under_roots("/etc", [Path.cwd()])        # raises SourceError naming the roots and `hint`
    """
    raw = str(text).strip()
    try:
        plain = Path(os.path.abspath(Path(raw).expanduser()))
        real = Path(os.path.realpath(plain))
    except (ValueError, OSError) as e:   # a NUL byte, a path the OS cannot even spell
        raise SourceError(f"{shown(raw)} is not a valid path ({type(e).__name__})") from None
    bases = [Path(os.path.realpath(r)) for r in roots]
    if any(plain.is_relative_to(b) for b in bases) and any(real.is_relative_to(b) for b in bases):
        return real
    allowed = ", ".join(str(b) for b in bases) or "none"
    raise SourceError(f"{shown(raw)} is outside the folders this studio opens models from ({allowed}). "
                      f"Put the model under one of them{'; ' + hint if hint else '.'}")


def parse_local_source(text: str, roots: Sequence[Path | str], *, hint: str = "") -> ModelSource:
    """A folder or archive under `roots` (see `check_under_roots`), never a hub id; its location is the real path.

        parse_local_source("models/my-moe", [Path.cwd()])   # ModelSource("directory", "<cwd>/models/my-moe")
    """
    raw = (text or "").strip()
    if not raw:
        raise SourceError("type the path of a model folder (it holds config.json and *.safetensors)")
    real = check_under_roots(raw, roots, hint=hint)
    local = _local_source(real, raw)
    if local is None:
        raise SourceError(f"{shown(raw)} is not an existing folder or archive; give the folder that holds "
                          "config.json and the *.safetensors files, or a .zip / .tar.gz of it.")
    if local.kind == "directory":
        check_links_under_roots(Path(local.location), roots, hint=hint)
    return local


MAX_FOLDER_ENTRIES = 20_000   # a model folder holds tens of files; walking a whole disk is not a model


def check_links_under_roots(folder: Path, roots: Sequence[Path | str], *, hint: str = "") -> None:
    """Every file and folder inside `folder` must resolve (links followed) under one of `roots`: a
    `chat_template.jinja` or a weights file that links outside is refused, as is a link to nothing, so no file the
    loader, the tokenizer or the checkpoint copy reads comes from outside the roots. Names in the message are
    relative to `folder`; nothing outside is named.

        check_links_under_roots(Path("models/m"), [Path.cwd()])   # raises SourceError for models/m/x -> /etc/x
    """
    bases = [Path(os.path.realpath(r)) for r in roots]
    seen = 0
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise SourceError(f"{shown(folder.name)} holds more than {MAX_FOLDER_ENTRIES} files and folders; "
                                  "give the folder of one model (config.json, *.safetensors, tokenizer files).")
            path = Path(top) / name
            if not os.path.islink(path):
                continue
            real = Path(os.path.realpath(path))
            rel = path.relative_to(folder)
            if not os.path.exists(real):
                raise SourceError(f"{shown(str(rel))} in the model folder is a link to nothing; replace it with the "
                                  "file itself or remove it.")
            if not any(real.is_relative_to(b) for b in bases):
                raise SourceError(f"{shown(str(rel))} in the model folder links outside the folders this studio "
                                  "opens models from; copy the file into the folder instead of linking it"
                                  f"{'; ' + hint if hint else '.'}")


def _local_source(path: Path, raw: str) -> ModelSource | None:
    """A directory or archive source for an existing `path`, None when nothing is there; refuses other files."""
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError):   # a name too long for the OS, a NUL byte: nothing can be there
        return None
    if is_dir:
        return ModelSource("directory", str(path.resolve()))
    if not is_file:
        return None
    if archive_kind(path) is not None:
        return ModelSource("archive", str(path.resolve()))
    if path.suffix.lower() == ".safetensors":
        raise SourceError(f"{shown(raw)} is a single safetensors file, which is not a model by itself: zip the whole "
                          "Hugging Face folder (config.json + *.safetensors + tokenizer files) and upload the "
                          "zip, or pass the folder's path.")
    raise SourceError(f"{shown(raw)} is a file of a kind that cannot be loaded; accepted forms: {ACCEPTED_FORMS}")


def _hub_source(raw: str) -> ModelSource | None:
    match = _HUB_ID.match(raw)
    if match and ".." not in raw and not raw.lower().endswith((*ARCHIVE_SUFFIXES, ".safetensors")):
        return ModelSource("hub", match["repo"], match["rev"])
    return None
