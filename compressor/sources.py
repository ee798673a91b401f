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
What a source string names and the roots rules live in `compressor.source_spec`, the folder checks in
`compressor.model_checks`; this module resolves, fetches and loads (names of both re-exported here).

    src = parse_source("Qwen/Qwen3-30B-A3B@main")       # ModelSource(kind="hub", location="Qwen/Qwen3-30B-A3B", ...)
    loaded = load_model("path/to/my-model")               # LoadedModel(model=..., tokenizer=..., fingerprint=...)
    loaded = load_model(parse_source("upload.zip"), dtype=torch.bfloat16)
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from compressor.archive import ArchiveError, archive_root, extract_archive
from compressor.model_checks import PICKLE_SUFFIXES, check_config, check_model_dir, pickle_refusal, safetensors_refusal
from compressor.source_spec import (ACCEPTED_FORMS, SHOWN_CHARS, SOURCE_KINDS, ModelSource, SourceError,
                                    check_links_under_roots, check_under_roots, parse_hub_id, parse_local_source,
                                    parse_source, shown)
from compressor.fingerprint import file_sha256, weights_fingerprint
from compressor.studio_cache import CacheFullError, reserve, studio_cache_dir, touch

__all__ = ["ACCEPTED_FORMS", "SHOWN_CHARS", "SOURCE_KINDS", "LoadedModel", "LocalModel", "ModelSource",
           "QuantizedInputWarning", "SourceError", "check_links_under_roots", "check_model_dir", "check_under_roots",
           "dequantized_note", "extract_cached", "load_model", "load_tokenizer", "parse_dtype", "parse_hub_id",
           "parse_local_source", "parse_source", "resolve_local", "shown", "studio_cache_dir"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


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
    patterns += [f"*{s}" for s in PICKLE_SUFFIXES] if allow_pickle else []
    patterns += ["*.py"] if trust_remote_code else []
    offline = _hub_offline()
    try:
        configs = ["config.json", "tokenizer_config.json"]
        cfg_dir = Path(snapshot_download(repo, revision=revision, allow_patterns=configs, local_files_only=offline))
        check_config(cfg_dir, trust_remote_code=trust_remote_code)
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
        raise SourceError(pickle_refusal(local, e)) from e
    except SafetensorError as e:
        raise SourceError(safetensors_refusal(local, e)) from e
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
    files = sorted(p for p in local.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name != "training_args.bin")
    if len(files) != 1:
        raise SourceError(f"{local}: expected one pickle checkpoint, found {[p.name for p in files]}; save the "
                          "model with save_pretrained (safetensors) instead.")
    try:
        obj = torch.load(files[0], map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SourceError(pickle_refusal(files[0], e)) from e
    except (OSError, RuntimeError, EOFError) as e:
        raise SourceError(f"{files[0]}: not a readable torch checkpoint ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(f"{files[0]}: not a state dict of tensors")
    return obj


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
