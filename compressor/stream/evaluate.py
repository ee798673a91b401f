"""Held-out quality of checkpoints that do not fit: perplexity, top-1 agreement and KL to the original, computed
from one layer-by-layer sweep per model.

Each model's last hidden states for every evaluation batch come from a sweep (`final_hidden`); a `ReplayLM` then
answers `compare_quality`'s forward calls from them (norm + lm_head only, globals in memory), so the metrics are the
in-memory path's own code and equal its figures for the same windows.

    stats = stream_quality(Path("slim"), Path("original"), windows, batch_size=8)
    stats.perplexity, stats.agreement, stats.kl_to_baseline
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from compressor.evaluate.quality import QualityStats, compare_quality
from compressor.progress import Reporter
from compressor.families.catalog import check_streamable_family
from compressor.stream.skeleton import Skeleton
from compressor.stream.sweep import advance_, capture_inputs, final_logits, final_norm


@torch.no_grad()
def final_hidden(folder: Path | str, batches: list[torch.Tensor], *, dtype: torch.dtype | None = None,
                 reporter: Reporter | None = None, device: str = "cpu", spill=None
                 ) -> tuple[Skeleton, list[torch.Tensor]]:
    """The skeleton and the last decoder layer's output for every batch [B, L] of ids (globals released again:
    `load_globals_()` before computing logits). Each layer runs on `device`; the hidden states stay on the CPU."""
    sk = Skeleton.open(folder, dtype=dtype, device=device)
    check_streamable_family(sk.config)
    sk.load_globals_()
    acts = capture_inputs(sk, batches, spill=spill)
    sk.release_globals_()
    n = len(sk.layers)
    for i in range(n):
        if reporter is not None:
            reporter.report("evaluate", i, n, message=f"{Path(folder).name}: layer {i + 1}/{n}")
        advance_(sk.load_layer_(i), acts, i)
        sk.release_layer_(i)
    return sk, acts.hidden


class ReplayLM(nn.Module):
    """Answers forward calls, in order, with lm_head(norm(h)) of stored last hidden states; refuses other inputs."""

    def __init__(self, skeleton: Skeleton, batches: list[torch.Tensor], hidden: list[torch.Tensor]):
        super().__init__()
        self.skeleton = skeleton
        self.head, self.norm = skeleton.model.lm_head, final_norm(skeleton.base)      # real parameters (device, eval)
        self._queue = list(zip(batches, hidden))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        if not self._queue:
            raise RuntimeError("ReplayLM has no stored batch left; sweep the evaluation windows again")
        ids, h = self._queue.pop(0)
        if not torch.equal(ids, input_ids.to(ids.device)):
            raise RuntimeError("ReplayLM was asked for another batch than the one it stored next")
        return SimpleNamespace(logits=final_logits(self.skeleton, h))


def stream_quality(model_dir: Path | str, baseline_dir: Path | str | None, windows: torch.Tensor, *,
                   batch_size: int = 8, dtype: torch.dtype | None = None,
                   reporter: Reporter | None = None, device: str = "cpu", spill=None) -> QualityStats:
    """`compare_quality` of the checkpoint in `model_dir` against the one in `baseline_dir` (or alone), with one
    decoder layer of one model in memory at a time (on `device`)."""
    batches = list(windows.split(batch_size))
    reporter = reporter or Reporter()
    dirs = [d for d in (model_dir, baseline_dir) if d is not None]
    share = 0.9 / len(dirs)
    sweeps = [final_hidden(d, batches, dtype=dtype, reporter=reporter.span(k * share, (k + 1) * share),
                           device=device, spill=spill)
              for k, d in enumerate(dirs)]
    lms = []
    for sk, hidden in sweeps:                    # the heads are loaded only once every layer sweep is done
        sk.load_globals_()
        lms.append(ReplayLM(sk, batches, hidden))
    return compare_quality(lms[0], lms[1] if len(lms) > 1 else None, windows, batch_size=batch_size,
                           reporter=reporter.span(0.9, 1.0))
