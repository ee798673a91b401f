"""Stable fingerprints: of model weights (for score-cache keys and provenance) and of JSON-able settings.

    weights_fingerprint(Path("my-model"))   # sha256 over the weight files' names and bytes
    weights_fingerprint(model)              # sha256 over parameter names, shapes, dtypes and bytes
    fingerprint(weights_fp, {"tokens": 32768, "seq_len": 256})   # sha256 over canonical JSON

The directory form and the in-memory form hash different things, so they are not comparable with each other;
each is stable for its own kind of input. Neither includes the config (top-k, widths): a cache key whose meaning
depends on those must put them in the settings part.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

_CHUNK = 4 << 20
WEIGHT_PATTERNS = ("*.safetensors",)
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file's bytes (`hashlib.file_digest`)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_fingerprint(model_or_dir: torch.nn.Module | Path | str) -> str:
    """Hex sha256 of a model's weights.

    Directory: sha256("moe-studio/weights-dir/v1" NUL, then for f in sorted(top-level weight files):
        name(f) NUL size(f) NUL bytes(f)); weight files are the *.safetensors, or, when there are none, the
        pickle checkpoints (*.bin, *.pt, *.pth). Read in 4 MiB chunks.
    Module: sha256("moe-studio/weights-module/v1" NUL, then for name, t in sorted(state_dict):
        name NUL dtype NUL shape NUL bytes(t)).
    """
    if isinstance(model_or_dir, torch.nn.Module):
        return _module_fingerprint(model_or_dir)
    root = Path(model_or_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; pass a model folder or an nn.Module to weights_fingerprint")
    files = _weight_files(root)
    if not files:
        raise ValueError(f"{root}: no *.safetensors (or *.bin / *.pt) files to fingerprint")
    h = hashlib.sha256(b"moe-studio/weights-dir/v1\0")
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as src:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _weight_files(root: Path) -> list[Path]:
    for patterns in (WEIGHT_PATTERNS, PICKLE_PATTERNS):
        files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
        if files:
            return files
    return []


def _module_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256(b"moe-studio/weights-module/v1\0")
    state = model.state_dict()
    for name in sorted(state):
        t = state[name]
        if t.device.type == "meta":
            raise ValueError(f"parameter {name!r} is on the meta device (not loaded); load the weights first")
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """Hex sha256 of the canonical JSON of `parts` (sorted keys, no spaces, UTF-8).

    Pydantic models and dataclasses count as their dict; paths as strings; tuples as lists. Anything else that is
    not JSON-able raises TypeError naming its type.
    """
    text = json.dumps(list(parts), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_jsonable)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"fingerprint() cannot hash a {type(obj).__name__}; pass JSON-able settings "
                    "(numbers, strings, lists, dicts, pydantic models, dataclasses)")
