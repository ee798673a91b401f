"""Teacher outputs for distillation: live from a model in memory, or from top-k log-probs cached on disk.

A `TeacherCache` holds, for batch i of a fixed list of batches, the teacher's `TeacherTopK` (k most likely tokens and
the rest bucket, at the distillation temperature). It is written once, batch by batch, and read during training, so
the teacher can leave memory before the student trains (the pipeline then slims the teacher itself into the student).
Storage per batch: B * L * (k + 1) float16 + B * L * k int32, one safetensors file each.

    cache = TeacherCache.build(teacher, batches, directory=tmp / "teacher", k=32, temperature=2.0)
    del teacher
    target = cache[3]                     # TeacherTopK of batches[3]
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from compressor.distill.losses import TeacherTopK, teacher_topk
from compressor.progress import Reporter

_INDEX = "teacher_cache.json"


class TeacherCache:
    """Top-k teacher log-probs of batch i in `directory/batch_{i:06d}.safetensors`."""

    def __init__(self, directory: Path, *, k: int, temperature: float, batches: int, offset: int = 0):
        self.directory, self.k, self.temperature = Path(directory), k, temperature
        self.batches, self.offset = batches, offset

    def __len__(self) -> int:
        return self.batches

    def _file(self, i: int) -> Path:
        return self.directory / f"batch_{i + self.offset:06d}.safetensors"

    def slice(self, start: int, stop: int) -> "TeacherCache":
        """A view of entries start..stop-1 (for the batches of one stage), renumbered from 0."""
        if not 0 <= start <= stop <= self.batches:
            raise IndexError(f"teacher cache slice {start}:{stop} is outside 0:{self.batches}")
        return TeacherCache(self.directory, k=self.k, temperature=self.temperature, batches=stop - start,
                            offset=self.offset + start)

    def __getitem__(self, i: int) -> TeacherTopK:
        if not 0 <= i < self.batches:
            raise IndexError(f"teacher cache holds {self.batches} batches, asked for {i}")
        t = load_file(self._file(i))
        return TeacherTopK(logp=t["logp"], indices=t["indices"], temperature=self.temperature)

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: torch.nn.Module, batches: Sequence[dict], *, directory: Path, k: int,
              temperature: float, reporter: Reporter | None = None) -> "TeacherCache":
        """Run `teacher` over every batch once and store its top-k log-probs; returns the cache."""
        directory = Path(directory)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        cache = cls(directory, k=k, temperature=temperature, batches=len(batches))
        was_training = teacher.training
        teacher.eval()
        try:
            for i, batch in enumerate(batches):
                logits = teacher(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                 use_cache=False).logits
                top = teacher_topk(logits=logits, k=k, temperature=temperature)
                save_file({"logp": top.logp.to(torch.float16).contiguous(),
                           "indices": top.indices.to(torch.int32).contiguous()}, str(cache._file(i)))
                if reporter is not None:
                    reporter.report("teacher-cache", step=i + 1, total=len(batches),
                                    message=f"teacher top-{k} logits, batch {i + 1}/{len(batches)}")
        finally:
            teacher.train(was_training)
        (directory / _INDEX).write_text(json.dumps({"k": k, "temperature": temperature, "batches": len(batches)}))
        return cache

    def nbytes(self) -> int:
        return sum(self._file(i).stat().st_size for i in range(self.batches))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
