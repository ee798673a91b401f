"""Teacher outputs for distillation: live from a model in memory, or top-k log-probs computed once and read from disk.

A `TeacherCache` holds, for batch i of a fixed list of batches, the teacher's `TeacherTopK` (k most likely tokens and
the rest bucket, at the distillation temperature). It is written once, in one pass over the batches, and read during
training, so the teacher can leave memory before the student trains. One cache is a folder:

    teacher_cache.json   {"format", "k", "temperature", "vocab", "shapes": [[B, L] of every batch], "key", ...}
    logp.f16             float16 [tokens, k + 1]   log-probs of the k tokens, then the rest bucket
    indices.i32          int32   [tokens, k]       their vocabulary ids
    (tokens = sum of B * L over the batches, row-major: batch, then row, then position; 2 (k + 1) + 4 k bytes each)

Both files are memory-mapped (numpy.memmap): reading batch i, or rows lo..hi of it (one process's share of a
sharded step), touches only those tokens. `open_or_build` keeps caches under `root/<key>`, key = fingerprint(teacher
fingerprint, data fingerprint, k, temperature): a later stage or run with the same teacher, tokens, k and T reads
the same files instead of running the teacher again.

    cache, hit = TeacherCache.open_or_build(teacher, batches, root=teacher_cache_dir(), k=64, temperature=2.0,
                                            teacher_fp=weights_fp)
    target = cache[3]                     # TeacherTopK of batches[3]
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from compressor.distill.losses import TeacherTopK, teacher_topk
from compressor.fingerprint import fingerprint
from compressor.progress import Reporter
from compressor.studio_cache import studio_cache_dir

FORMAT = 2
INDEX, LOGP, INDICES = "teacher_cache.json", "logp.f16", "indices.i32"


def teacher_cache_dir() -> Path:
    """`$MOE_STUDIO_CACHE/teacher-topk`, else `~/.cache/moe-studio/teacher-topk`."""
    return studio_cache_dir() / "teacher-topk"


def data_fingerprint(batches: Sequence[dict]) -> str:
    """sha256 over every batch's input_ids (dtype, shape, bytes), in order."""
    h = hashlib.sha256(b"moe-studio/distill-batches/v1\0")
    for batch in batches:
        ids = batch["input_ids"].detach().cpu().contiguous()
        h.update(f"{ids.dtype}\0{tuple(ids.shape)}\0".encode())
        h.update(ids.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def cache_key(*, teacher_fp: str, data_fp: str, k: int, temperature: float) -> str:
    """fingerprint(teacher, data, {format, k, T}): what the stored log-probs are a function of."""
    return fingerprint(teacher_fp, data_fp, {"format": FORMAT, "k": k, "temperature": float(temperature)})


class TeacherCache:
    """Top-k teacher log-probs of batches[start:start + len] in `directory` (see the module docstring)."""

    def __init__(self, directory: Path, *, k: int, temperature: float, shapes: Sequence[Sequence[int]],
                 start: int = 0, stop: int | None = None, meta: dict | None = None):
        self.directory, self.k, self.temperature = Path(directory), k, temperature
        self.shapes = [tuple(s) for s in shapes]
        self.start, self.stop = start, len(self.shapes) if stop is None else stop
        self.offsets = np.concatenate([[0], np.cumsum([b * n for b, n in self.shapes])]).astype(np.int64)
        self.meta = meta or {}

    def __len__(self) -> int:
        return self.stop - self.start

    def slice(self, start: int, stop: int) -> "TeacherCache":
        """A view of entries start..stop-1 (for the batches of one stage), renumbered from 0."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"teacher cache slice {start}:{stop} is outside 0:{len(self)}")
        return TeacherCache(self.directory, k=self.k, temperature=self.temperature, shapes=self.shapes,
                            start=self.start + start, stop=self.start + stop, meta=self.meta)

    def __getitem__(self, i: int) -> TeacherTopK:
        if not 0 <= i < len(self):
            raise IndexError(f"teacher cache holds {len(self)} batches, asked for {i}")
        return self.rows(i, 0, self.shapes[self.start + i][0])

    def rows(self, i: int, lo: int, hi: int) -> TeacherTopK:
        """Rows lo..hi-1 of batch i: logp [hi - lo, L, k + 1] float16, indices [hi - lo, L, k] int64."""
        b, n = self.shapes[self.start + i]
        if not 0 <= lo < hi <= b:
            raise IndexError(f"rows {lo}:{hi} of a batch of {b}")
        first = int(self.offsets[self.start + i]) + lo * n
        logp, idx = self._maps()
        out_logp = torch.from_numpy(np.array(logp[first:first + (hi - lo) * n])).view(hi - lo, n, self.k + 1)
        out_idx = torch.from_numpy(np.array(idx[first:first + (hi - lo) * n])).view(hi - lo, n, self.k)
        return TeacherTopK(logp=out_logp, indices=out_idx.long(), temperature=self.temperature)

    def _maps(self) -> tuple[np.memmap, np.memmap]:
        tokens = int(self.offsets[-1])
        return (np.memmap(self.directory / LOGP, dtype=np.float16, mode="r", shape=(tokens, self.k + 1)),
                np.memmap(self.directory / INDICES, dtype=np.int32, mode="r", shape=(tokens, self.k)))

    def nbytes(self) -> int:
        return sum((self.directory / f).stat().st_size for f in (LOGP, INDICES))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    @classmethod
    def open(cls, directory: Path) -> "TeacherCache | None":
        """The complete cache in `directory`, or None (missing, another format, files of the wrong size)."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / INDEX).read_text())
            if meta.get("format") != FORMAT:
                return None
            cache = cls(directory, k=meta["k"], temperature=meta["temperature"], shapes=meta["shapes"], meta=meta)
            tokens = int(cache.offsets[-1])
            if ((directory / LOGP).stat().st_size != tokens * (cache.k + 1) * 2
                    or (directory / INDICES).stat().st_size != tokens * cache.k * 4):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cache

    @classmethod
    def open_or_build(cls, teacher: torch.nn.Module, batches: Sequence[dict], *, root: Path, k: int,
                      temperature: float, teacher_fp: str,
                      reporter: Reporter | None = None) -> tuple["TeacherCache", bool]:
        """The cache of (teacher_fp, batches, k, T) under `root/<key>` when one is stored, else built there;
        returns (cache, hit). `teacher_fp` must change whenever the teacher's outputs would."""
        key = cache_key(teacher_fp=teacher_fp, data_fp=data_fingerprint(batches), k=k, temperature=temperature)
        found = cls.open(Path(root) / key)
        if found is not None and found.shapes == [tuple(b["input_ids"].shape) for b in batches]:
            os.utime(found.directory / INDEX)                  # a hit marks the entry as recently used
            return found, True
        built = cls.build(teacher, batches, directory=Path(root) / key, k=k, temperature=temperature,
                          reporter=reporter, meta={"key": key, "teacher": teacher_fp})
        return built, False

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: torch.nn.Module, batches: Sequence[dict], *, directory: Path, k: int,
              temperature: float, reporter: Reporter | None = None, meta: dict | None = None) -> "TeacherCache":
        """Run `teacher` over every batch once and store its top-k log-probs in `directory` (replaced); the files
        are written in a hidden sibling folder and renamed into place, so a reader never sees half a cache."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            info = _write(teacher, batches, tmp, k=k, temperature=temperature, reporter=reporter)
            (tmp / INDEX).write_text(json.dumps({**(meta or {}), **info}))
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(directory)


def _write(teacher: torch.nn.Module, batches: Sequence[dict], folder: Path, *, k: int, temperature: float,
           reporter: Reporter | None) -> dict:
    """One pass of `teacher` over `batches` into the memory-mapped files of `folder`; returns the index fields."""
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    tokens = sum(b * n for b, n in shapes)
    device = next(teacher.parameters()).device
    was_training, maps, at, vocab = teacher.training, None, 0, None
    teacher.eval()
    try:
        for i, batch in enumerate(batches):
            mask = batch.get("attention_mask")
            logits = teacher(input_ids=batch["input_ids"].to(device), use_cache=False,
                             attention_mask=None if mask is None else mask.to(device)).logits
            top = teacher_topk(logits=logits, k=k, temperature=temperature)
            if maps is None:                 # k is clipped to the vocabulary, known from the first logits
                vocab, kk = logits.shape[-1], top.indices.shape[-1]
                maps = (np.memmap(folder / LOGP, dtype=np.float16, mode="w+", shape=(tokens, kk + 1)),
                        np.memmap(folder / INDICES, dtype=np.int32, mode="w+", shape=(tokens, kk)))
            n = top.indices.shape[0] * top.indices.shape[1]
            maps[0][at:at + n] = top.logp.reshape(n, -1).to(torch.float16).cpu().numpy()
            maps[1][at:at + n] = top.indices.reshape(n, -1).to(torch.int32).cpu().numpy()
            at += n
            if reporter is not None:
                reporter.report("teacher-cache", step=i + 1, total=len(batches),
                                message=f"teacher top-{k} logits, batch {i + 1}/{len(batches)}")
    finally:
        teacher.train(was_training)
    for m in maps or ():
        m.flush()
    kk = maps[1].shape[1] if maps is not None else k
    return {"format": FORMAT, "k": kk, "k_asked": k, "temperature": temperature, "vocab": vocab,
            "shapes": [list(s) for s in shapes], "tokens": tokens}
