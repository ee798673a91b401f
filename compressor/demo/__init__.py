"""The built-in demo models: `demo`, a small Qwen3-MoE (8 experts, top-2) trained from scratch on the `sotu` train
split, and `demo-smollm`, SmolLM2-135M-Instruct turned into a 30-layer Mixtral by MoEfication (`smollm.py`; its
weights are fetched and assembled on first use, see docs/demo-smollm.md).

The checkpoint ships in `assets/model/` (HF directory, bf16 safetensors + tokenizer), the held-out evaluation text
in `assets/heldout.txt`, and how it was made in `assets/TRAINING.md`. `train.py` reproduces it:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir())
    metrics = train_demo_model("out/demo", steps=20)      # retrain (python -m compressor demo-model --out DIR)

Paths and names live in `locations` (torch-free, imported by `compressor.data` and the workers' roots rule).
"""
from __future__ import annotations

from pathlib import Path

from compressor.demo.locations import ASSETS_DIR, DEMO_NAMES, RETRAIN_COMMAND

__all__ = ["ASSETS_DIR", "DEMO_NAMES", "RETRAIN_COMMAND", "demo_model_dir", "train_demo_model", "DemoConfig"]


def demo_model_dir(name: str = "demo") -> Path:
    """The built-in checkpoint folder `name` (config.json, model.safetensors, tokenizer files): the shipped `demo`,
    or `demo-smollm` assembled on first use (a RuntimeError saying what to do when its weights are unreachable)."""
    if name == "demo-smollm":
        from compressor.demo.smollm import demo_smollm_dir
        return demo_smollm_dir()
    if name != "demo":
        raise FileNotFoundError(f"no built-in model {name!r}; the built-in names are {', '.join(DEMO_NAMES)}")
    path = ASSETS_DIR / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the demo model is missing from {path}; rebuild it with `{RETRAIN_COMMAND}`")
    return path


def __getattr__(name: str):
    if name in ("train_demo_model", "DemoConfig"):
        from compressor.demo import train
        return getattr(train, name)
    raise AttributeError(f"module 'compressor.demo' has no attribute {name!r}")
