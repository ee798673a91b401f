"""Where the built-in demo models' files live: paths and names only, no torch, so `compressor.data` (the shipped
corpus), the workers' roots rule and the demo's own modules import it without importing one another.

    ASSETS_DIR / "model"        # the shipped `demo` checkpoint
    ASSETS_DIR / "heldout.txt"  # the held-out evaluation text
"""
from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).parent / "assets"
RETRAIN_COMMAND = "python -m compressor demo-model --out compressor/demo/assets"
DEMO_NAMES = ("demo", "demo-smollm")
