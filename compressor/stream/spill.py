"""Activations between layers past a size limit go to memory-mapped files in the job's folder.

The layer-by-layer engine keeps every calibration batch's hidden states [B, S, H] between layers (and, for Taylor
scores, every layer's inputs until the backward sweep: L + 1 copies). A `Spill` holds tensors in RAM while the bytes
it holds there stay within `limit_bytes`; past it, a tensor is copied into a file of its own in `directory` and the
tensor handed back *is* that file, memory-mapped (`torch.from_file(shared=True)`): a batch's pages are read in when
the batch is used and can be dropped from memory afterwards, so resident memory holds what is being computed on, not
every batch. The values are the same bytes, so every score and cut is bitwise what the in-RAM run gives.

Each file is unlinked as soon as it is mapped: its disk blocks live exactly as long as the tensor (the kernel frees
them when the mapping goes), so nothing stays on disk after the job, an error, or a kill. `close()` removes the
folder itself.

    limit = spill_limit_bytes(recipe.execution.spill_mb)   # recipe, else MOE_STUDIO_SPILL_MB, else memory / 4
    with Spill(run_dir / "spill", limit) as spill:
        acts = capture_inputs(skeleton, batches, spill=spill)     # acts.hidden[b] in RAM or mapped from disk
    spill.spilled_bytes, spill.spilled_tensors                  # what went to disk
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import torch

SPILL_ENV = "MOE_STUDIO_SPILL_MB"
DEFAULT_SHARE = 0.25              # of the machine's memory (compressor.engine.residency.machine_memory)


def spill_limit_bytes(spill_mb: int | None = None, env: dict | None = None) -> int:
    """`spill_mb` MB (the recipe's execution.spill_mb), else $MOE_STUDIO_SPILL_MB, else a quarter of the machine's
    memory (`MOE_STUDIO_MEMORY`, else its total). 0 sends every activation to disk."""
    env = os.environ if env is None else env
    if spill_mb is None and env.get(SPILL_ENV, "").strip():
        raw = env[SPILL_ENV].strip()
        try:
            spill_mb = int(raw)
        except ValueError:
            raise ValueError(f"{SPILL_ENV}={raw!r} is not a whole number of megabytes (e.g. 4096; 0 = always "
                             "spill)") from None
        if spill_mb < 0:
            raise ValueError(f"{SPILL_ENV}={raw!r} must be zero or more megabytes")
    if spill_mb is not None:
        return int(spill_mb) * 2**20
    from compressor.engine.residency import machine_memory
    return int(machine_memory() * DEFAULT_SHARE)


class Spill:
    """Places tensors in RAM up to `limit_bytes` (counted while they are alive), on disk past it: in `directory`
    (created when first needed, removed by `close`), or with `directory` None in the system's temporary folder
    ($TMPDIR), where each file is unlinked as soon as it is mapped and nothing else is created."""

    def __init__(self, directory: Path | str | None, limit_bytes: int):
        if limit_bytes < 0:
            raise ValueError(f"the spill limit must be zero or more bytes, got {limit_bytes}")
        self.directory = Path(directory) if directory is not None else None
        self.limit_bytes = int(limit_bytes)
        self.in_ram = 0                       # bytes of live tensors this spill kept in RAM
        self.spilled_bytes = 0
        self.spilled_tensors = 0
        self._names = itertools.count()
        self._lock = threading.Lock()

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """`t` itself while the RAM share allows (a CPU tensor), else a memory-mapped copy on disk."""
        n = t.numel() * t.element_size()
        if t.device.type != "cpu":
            return t                                     # only CPU activations are spilled
        with self._lock:
            fits = self.in_ram + n <= self.limit_bytes
            if fits:
                self.in_ram += n
        if fits:
            weakref.finalize(t, self._released, n)
            return t
        return self._to_disk(t, n)

    def _released(self, n: int) -> None:
        with self._lock:
            self.in_ram -= n

    def _to_disk(self, t: torch.Tensor, n: int) -> torch.Tensor:
        folder = self.directory if self.directory is not None else Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"moe-act-{os.getpid()}-{id(self):x}-{next(self._names):08d}.bin"
        try:
            raw = torch.from_file(str(path), shared=True, size=max(n, 1), dtype=torch.uint8)
            out = raw[:n].view(t.dtype).view(t.shape)
            out.copy_(t)
        finally:
            path.unlink(missing_ok=True)               # the mapping keeps the blocks while the tensor lives
        self.spilled_bytes += n
        self.spilled_tensors += 1
        return out

    def stats(self) -> dict:
        return {"limit_bytes": self.limit_bytes, "spilled_bytes": self.spilled_bytes,
                "spilled_tensors": self.spilled_tensors}

    def close(self) -> None:
        """Remove the spill folder when one was given (its files are already unlinked; tensors mapped from them stay
        valid)."""
        if self.directory is not None and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
