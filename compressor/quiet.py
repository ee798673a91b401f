"""Import-time noise of optional dependencies, kept out of what a user sees.

When torchao is installed, transformers imports it in every process; torchao then logs a warning for each CUDA-only
extension it cannot load on a CPU build (`Failed to load ..._C_mxfp8...so`), one for the missing Triton, and torch
logs two `register_constant()` deprecation warnings for torchao's enums (`torch.utils._pytree`). None of them is
actionable and none concerns the user's model. `silence_import_noise()` raises those three loggers to ERROR (real
errors still show) and is called by every entry point: the CLI, `python app.py` and the Celery workers.

    from compressor.quiet import silence_import_noise
    silence_import_noise()          # before anything imports transformers
"""
from __future__ import annotations

import logging

NOISY_LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


def silence_import_noise() -> None:
    """Set the loggers of `NOISY_LOGGERS` to ERROR (idempotent)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
