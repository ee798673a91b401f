"""The safety rules a model folder passes before anything of it is loaded (the studio's conventions, "Safety of
inputs"), and the refusals that name the file at fault:
- weights load from *.safetensors only; pickle checkpoints need `allow_pickle=True` (then `torch.load(weights_only=True)`);
- a config with `auto_map` (custom modelling code) needs `trust_remote_code=True`, unless its model_type is one
  transformers has natively, whose own code `from_pretrained` then uses.

    weights = check_model_dir(Path("my-model"))       # "safetensors" | "bin" | "pt", or SourceError saying what to do
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open

from compressor.source_spec import SHOWN_CHARS, SourceError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def check_model_dir(local: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> str:
    """Check a model folder against the safety rules; return its weight format: 'safetensors' | 'bin' | 'pt'."""
    if not local.is_dir():
        raise SourceError(f"{local}: no such folder")
    check_config(local, trust_remote_code=trust_remote_code)
    names = sorted(p.name for p in local.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) and n != "training_args.bin"]
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


def check_config(local: Path, *, trust_remote_code: bool) -> None:
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


def safetensors_refusal(local: Path, err: Exception) -> str:
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


def pickle_refusal(where: Path, err: Exception) -> str:
    """torch's message recommends weights_only=False; keep only the line naming the offending global."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()]
    what = next((ln for ln in lines if "global" in ln.lower()), type(err).__name__).split(". Please")[0]
    return (f"{where}: the pickle checkpoint holds objects other than tensors, which could run code, so "
            f"torch.load(weights_only=True) refused it ({what[:200]}). Convert it to safetensors on a trusted "
            "machine and load that folder instead.")
