"""Model sources: the built-in demo, a local Hugging Face folder, an uploaded archive of one, or a hub id.

Safety rules (the studio's conventions, "Safety of inputs"):
- weights load from *.safetensors only; pickle checkpoints (pytorch_model.bin, *.pt) need `allow_pickle=True`
  and then load with `torch.load(weights_only=True)`;
- a config with `auto_map` (custom modelling code) needs `trust_remote_code=True`;
- archives go through `compressor.archive.extract_archive` (no path escape, size and file-count caps), once per
  archive content (keyed by its sha256) under the studio cache;
- hub ids download only config, tokenizer and safetensors files (pickles / code only when allowed);
- the studio opens local folders only under its model roots (`parse_local_source`: real path, symlinks resolved,
  and every link inside the folder must resolve under a root too, `check_links_under_roots`) and takes hub ids
  from the hub box only (`parse_hub_id`); `parse_source` itself (the CLI) is unrestricted;
- messages never list a folder's contents, and echo a user string cut to 200 characters (`shown`).

    src = parse_source("Qwen/Qwen3-30B-A3B@main")       # ModelSource(kind="hub", location="Qwen/Qwen3-30B-A3B", ...)
    loaded = load_model("path/to/my-model")               # LoadedModel(model=..., tokenizer=..., fingerprint=...)
    loaded = load_model(parse_source("upload.zip"), dtype=torch.bfloat16)
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open

from compressor.archive import ARCHIVE_SUFFIXES, ArchiveError, archive_kind, archive_root, extract_archive
from compressor.fingerprint import file_sha256, weights_fingerprint
from compressor.studio_cache import CacheFullError, reserve, studio_cache_dir, touch

SOURCE_KINDS = ("demo", "directory", "archive", "hub")
ACCEPTED_FORMS = ("'demo'; a local Hugging Face model folder (config.json + *.safetensors); a .zip / .tar.gz / "
                  ".tgz / .tar of such a folder; or a hub id 'org/name' or 'org/name@revision'")
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
                     r"(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9._/-]{0,199}))?$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
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


@dataclass
class LoadedModel:
    model: torch.nn.Module       # in eval mode
    tokenizer: Any | None        # None when the folder ships no tokenizer files
    source: ModelSource
    local_dir: Path              # the folder the weights were read from
    fingerprint: str             # weights_fingerprint(local_dir)
    revision: str | None = None  # hub: the revision asked for ("main" when none was pinned)
    commit: str | None = None    # hub: the commit that revision resolved to
    quantization: dict | None = None  # a quantized input's format (compressor.formats.QuantInfo.to_dict()); the
    notes: tuple[str, ...] = ()        # model holds it dequantized, and `notes` says so in words


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


@dataclass(frozen=True)
class LocalModel:
    """A source resolved to a checked folder on this machine (nothing loaded yet)."""

    source: ModelSource
    local_dir: Path
    weights: str                 # 'safetensors' | 'bin' | 'pt' (check_model_dir)
    revision: str | None = None  # hub: the revision asked for
    commit: str | None = None    # hub: the commit it resolved to


def resolve_local(source: ModelSource | str, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                  revision: str | None = None, work_dir: Path | None = None) -> LocalModel:
    """The folder `source` names (demo, folder, extracted archive, downloaded hub snapshot), checked against the
    safety rules (`check_model_dir`); no weights are read."""
    src = parse_source(source) if isinstance(source, str) else source
    rev = commit = None
    if src.kind == "demo":
        local = _demo_dir(src.location)
    elif src.kind == "directory":
        local = Path(src.location)
    elif src.kind == "archive":
        local = extract_cached(Path(src.location), work_dir=work_dir)
    else:
        if revision and src.revision and revision != src.revision:
            raise SourceError(f"{src}: revision {revision!r} disagrees with the id's '@{src.revision}'; give one")
        rev = revision or src.revision or "main"
        local = _download_hub(src.location, rev, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        commit = local.name
    weights = check_model_dir(local, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return LocalModel(source=src, local_dir=local, weights=weights, revision=rev, commit=commit)


def load_model(source: ModelSource | str, *, dtype: torch.dtype | str | None = None, allow_pickle: bool = False,
               trust_remote_code: bool = False, revision: str | None = None, work_dir: Path | None = None,
               experts_implementation: str | None = None, device: str = "cpu") -> LoadedModel:
    """Resolve `source` to a local folder (`resolve_local`), load model (eval mode) + tokenizer, fingerprint the
    weights. `device` is a `compressor.device` spec (auto | cpu | cuda | cuda:N): the model is moved there, and a
    device this machine lacks is refused before any weight is read.

    dtype None keeps transformers' default ("auto": the checkpoint's dtype). `revision` pins a hub id (it must
    agree with an '@rev' in the id). Dense or unsupported families load fine here; `families.resolve_adapter`
    is the one that refuses them.
    """
    from compressor.device import resolve_device

    target = resolve_device(device)
    found = resolve_local(source, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, revision=revision,
                          work_dir=work_dir)
    local = found.local_dir
    quant = _quantization(local) if found.weights == "safetensors" else None
    model = _load_weights(local, found.weights, dtype=dtype, trust_remote_code=trust_remote_code,
                          experts_implementation=experts_implementation, quantized=quant is not None)
    model.eval()
    if target != "cpu":
        model.to(target)
    tokenizer = load_tokenizer(local, trust_remote_code=trust_remote_code)
    notes = (dequantized_note(quant, model),) if quant is not None else ()
    for note in notes:
        warnings.warn(note, QuantizedInputWarning, stacklevel=2)
    return LoadedModel(model=model, tokenizer=tokenizer, source=found.source, local_dir=local,
                       fingerprint=weights_fingerprint(local), revision=found.revision, commit=found.commit,
                       quantization=quant.to_dict() if quant is not None else None, notes=notes)


class QuantizedInputWarning(UserWarning):
    """A quantized checkpoint was loaded dequantized: what is written from it is not in the input's format."""


def _quantization(local: Path):
    """config.json's quantization (`compressor.formats.quantization_of`), None for plain weights."""
    from compressor.formats import QuantFormatError, quantization_of
    try:
        return quantization_of(json.loads((local / "config.json").read_text(encoding="utf-8")))
    except QuantFormatError as e:
        raise SourceError(f"{local}: {e}") from e


def dequantized_note(quant, model) -> str:
    """The message a dequantized load carries: the input's format, the dtype the model holds, and what follows."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return (f"the input is quantized ({quant.label}, {quant.method}) and was dequantized to {dtype} on load; "
            f"slimmed checkpoints are written unquantized ({dtype}), so one can be larger on disk than the input. "
            "Re-quantize the output (compressor quantize) to shrink it again.")


def _demo_dir(name: str = "demo") -> Path:
    try:
        from compressor.demo import demo_model_dir   # lazy: loading a user's model never needs the demo package
        return Path(demo_model_dir() if name == "demo" else demo_model_dir(name))
    except (ImportError, FileNotFoundError, RuntimeError) as e:
        raise SourceError(f"the built-in demo model is not available ({e}); pass a model folder or archive "
                          "instead.") from e


# ------------------------------------------------------------------------------------------------------- archives
def extract_cached(archive: Path, *, work_dir: Path | None = None) -> Path:
    """Extract `archive` once into `work_dir/<sha256>/` (default work_dir: `studio_cache_dir()/archives`).

    Extraction goes to a private temporary folder that is renamed into place when complete, so a crash or a
    concurrent load never leaves a half-extracted folder under the final name. In the studio cache (the default
    work_dir) the quota holds: least recently used entries make room first and the extraction's size stays reserved
    until it is in place (`studio_cache.reserve`; pinned entries of queued and running runs are never evicted), and
    a hit marks the extraction and the archive as used.
    """
    in_cache = work_dir is None
    root = Path(work_dir) if not in_cache else studio_cache_dir() / "archives"
    root.mkdir(parents=True, exist_ok=True)
    final = root / file_sha256(archive)
    if in_cache:
        touch(archive)
    if final.is_dir():
        touch(final)
        return archive_root(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}-", dir=root))
    try:
        with reserve(keep=[archive]) if in_cache else _no_reservation() as room:
            try:
                extract_archive(archive, tmp / "x", make_room=room.make_room if room else None)
            except (ArchiveError, CacheFullError) as e:   # one error type for callers of load_model
                raise SourceError(str(e)) from e
            try:
                os.replace(tmp / "x", final)
            except OSError:
                if not final.is_dir():   # a concurrent load may have won the race; theirs is as good as ours
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return archive_root(final)


@contextmanager
def _no_reservation():
    yield None


# ------------------------------------------------------------------------------------------------------------ hub
def _hub_offline() -> bool:
    from huggingface_hub import constants
    env = any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def _download_hub(repo: str, revision: str, *, allow_pickle: bool, trust_remote_code: bool) -> Path:
    """Fetch configs first (to refuse remote code before any weights move), then tokenizer + allowed weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
    patterns += [f"*{s}" for s in _PICKLE_SUFFIXES] if allow_pickle else []
    patterns += ["*.py"] if trust_remote_code else []
    offline = _hub_offline()
    try:
        configs = ["config.json", "tokenizer_config.json"]
        cfg_dir = Path(snapshot_download(repo, revision=revision, allow_patterns=configs, local_files_only=offline))
        _check_config(cfg_dir, trust_remote_code=trust_remote_code)
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=offline))
    except GatedRepoError as e:
        raise SourceError(f"hub model {repo!r} is gated: accept its licence on huggingface.co and log in "
                          "(`hf auth login`), or download the folder and pass its path.") from e
    except RepositoryNotFoundError as e:
        raise SourceError(f"hub model {repo!r} was not found (or is private); check the id.") from e
    except RevisionNotFoundError as e:
        raise SourceError(f"hub model {repo!r} has no revision {revision!r}; check the branch, tag or commit.") from e
    except OSError as e:   # LocalEntryNotFoundError, OfflineModeIsEnabled, connection errors
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise SourceError(f"cannot fetch hub model {repo!r}@{revision}: this machine is offline ({why}) and the model "
                          "is not in the local cache. Download the model folder on a machine with network access "
                          "(e.g. `hf download ORG/NAME --local-dir my-model`) and pass the folder's path, or "
                          "upload it zipped.") from e


# ---------------------------------------------------------------------------------------------------------- checks
def check_model_dir(local: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> str:
    """Check a model folder against the safety rules; return its weight format: 'safetensors' | 'bin' | 'pt'."""
    if not local.is_dir():
        raise SourceError(f"{local}: no such folder")
    _check_config(local, trust_remote_code=trust_remote_code)
    names = sorted(p.name for p in local.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES) and n != "training_args.bin"]
    if not pickles:
        raise SourceError(f"{local}: no weights found (expected *.safetensors next to config.json). A model that "
                          "ships only pickle checkpoints (*.bin, *.pt) needs --allow-pickle.")
    if not allow_pickle:
        raise SourceError(f"{local}: only pickle checkpoints ({', '.join(pickles[:5])}), which can run code when "
                          "loaded. Convert them to safetensors, or pass --allow-pickle (allow_pickle=True) to load "
                          "them with torch.load(weights_only=True).")
    if any(n.startswith("pytorch_model") and n.endswith(".bin") for n in pickles):
        return "bin"
    return "pt"


def _check_config(local: Path, *, trust_remote_code: bool) -> None:
    """config.json must exist; it and tokenizer_config.json may name custom code (`auto_map`) only when trusted."""
    if not (local / "config.json").is_file():
        raise SourceError(f"{local}: no config.json, so this is not a Hugging Face model folder. Pass the folder "
                          "that holds config.json and the *.safetensors files.")
    for name in ("config.json", "tokenizer_config.json"):
        path = local / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(config, dict):
            raise SourceError(f"{path}: expected a JSON object")
        if "auto_map" in config and not trust_remote_code and name == "config.json":
            _check_remote_config(local, config)
        elif "auto_map" in config and not trust_remote_code:
            raise SourceError(f"{local}: {name} has 'auto_map', so the model needs its own Python code "
                              f"({', '.join(sorted(map(str, config['auto_map'])))}). Read that code, then pass "
                              "--trust-remote-code (trust_remote_code=True) to run it; it is off by default.")


# Remote-code configs whose architecture transformers has under another model_type (the config's own fields fit)
NATIVE_ALIASES = {"kimi_k2": "deepseek_v3"}


def _check_remote_config(local: Path, config: dict) -> None:
    """config.json with `auto_map` and no trust_remote_code: a model_type transformers has natively (DeepSeek-V3/R1's
    `deepseek_v3`, MiniMax-M2's `minimax_m2`) opens with transformers' own code, which `from_pretrained` uses when
    remote code is not trusted, so nothing of the repository runs; any other is refused with the setting that works."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return
    alias = NATIVE_ALIASES.get(model_type) if isinstance(model_type, str) else None
    code = ", ".join(sorted(map(str, config["auto_map"])))
    if alias is not None:
        raise SourceError(f"{local}: config.json has model_type {model_type!r}, which transformers does not know, and "
                          f"'auto_map' ({code}) to run the repository's own Python code. Its architecture is "
                          f"transformers' {alias!r}: set \"model_type\": \"{alias}\" in config.json (and delete "
                          "'auto_map') to open it with transformers' own code, or read the repository's code and "
                          "pass --trust-remote-code (trust_remote_code=True) to run it.")
    raise SourceError(f"{local}: config.json has 'auto_map', so the model needs its own Python code ({code}), and "
                      f"transformers has no built-in model_type {str(model_type)[:60]!r}. Read that code, then pass "
                      "--trust-remote-code (trust_remote_code=True) to run it; it is off by default.")


# --------------------------------------------------------------------------------------------------------- loading
def _load_weights(local: Path, weights: str, *, dtype, trust_remote_code: bool,
                  experts_implementation: str | None, quantized: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = parse_dtype(dtype)
    if experts_implementation is not None:
        kwargs["experts_implementation"] = experts_implementation
    try:
        if weights == "pt":
            model, info = _load_pt(local, kwargs)
        elif quantized:   # FP8 / MXFP4 / compressed-tensors, dequantized (compressor.formats.load)
            model, info = _dequantized(local, kwargs)
        else:
            model, info = AutoModelForCausalLM.from_pretrained(local, local_files_only=True, weights_only=True,
                                                               use_safetensors=weights == "safetensors", **kwargs)
    except SourceError:
        raise
    except pickle.UnpicklingError as e:
        raise SourceError(_pickle_refusal(local, e)) from e
    except SafetensorError as e:
        raise SourceError(_safetensors_refusal(local, e)) from e
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise SourceError(f"{local}: transformers could not load this model ({type(e).__name__}: {e})") from e
    missing = sorted(info.get("missing_keys") or ())
    if missing:   # they would silently stay random
        raise SourceError(f"{local}: the checkpoint lacks {len(missing)} weights the model needs (e.g. "
                          f"{', '.join(missing[:3])}); the weights do not match config.json.")
    return model


def _dequantized(local: Path, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, dict]:
    """`compressor.formats.load.load_dequantized` with `_load_weights`'s kwargs; (model, loading info)."""
    from compressor.formats.load import load_dequantized
    from compressor.stream.shards import ShardError

    try:
        loaded, how = load_dequantized(local, dtype=kwargs.get("dtype"),
                                       experts_implementation=kwargs.get("experts_implementation"),
                                       kwargs={"output_loading_info": True})
    except ShardError as e:
        raise SourceError(str(e)) from e
    return loaded if how == "transformers" else (loaded, {})


def _load_pt(local: Path, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, dict]:
    """A folder with config.json + one bare *.pt state dict: build the class the config names, load the tensors."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    config = AutoConfig.from_pretrained(local, local_files_only=True)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise SourceError(f"{local}: a bare {config.model_type!r} checkpoint is not a causal LM transformers knows; "
                          "save the model with save_pretrained (safetensors) and load that folder.")
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    kwargs = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
    return model_class.from_pretrained(None, config=config, state_dict=_torch_load_state(local), **kwargs)


def _torch_load_state(local: Path) -> dict[str, torch.Tensor]:
    """The one *.pt / *.pth / *.bin in `local`, read with weights_only=True; a bare or wrapped state dict."""
    files = sorted(p for p in local.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.name != "training_args.bin")
    if len(files) != 1:
        raise SourceError(f"{local}: expected one pickle checkpoint, found {[p.name for p in files]}; save the "
                          "model with save_pretrained (safetensors) instead.")
    try:
        obj = torch.load(files[0], map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SourceError(_pickle_refusal(files[0], e)) from e
    except (OSError, RuntimeError, EOFError) as e:
        raise SourceError(f"{files[0]}: not a readable torch checkpoint ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(f"{files[0]}: not a state dict of tensors")
    return obj


def _safetensors_refusal(local: Path, err: Exception) -> str:
    """Name the weight file whose header does not read (safetensors' own message does not say which)."""
    bad = "a *.safetensors file"
    for path in sorted(local.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError):
            bad = path.name
            break
    return (f"{local}: {bad} is not a readable safetensors file ({str(err)[:SHOWN_CHARS]}); it is truncated or "
            "corrupt. Copy or upload it again, or re-save the model with save_pretrained.")


def _pickle_refusal(where: Path, err: Exception) -> str:
    """torch's message recommends weights_only=False; keep only the line naming the offending global."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()]
    what = next((ln for ln in lines if "global" in ln.lower()), type(err).__name__).split(". Please")[0]
    return (f"{where}: the pickle checkpoint holds objects other than tensors, which could run code, so "
            f"torch.load(weights_only=True) refused it ({what[:200]}). Convert it to safetensors on a trusted "
            "machine and load that folder instead.")


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise SourceError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
    return value


def load_tokenizer(local: Path, *, trust_remote_code: bool = False):
    """The folder's tokenizer, or None when it ships no tokenizer files."""
    if not any((local / n).is_file() for n in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{local}: the tokenizer files are present but do not load ({type(e).__name__}: {e})") from e
