"""The one analyze verb: the importance report of a checkpoint on calibration batches, from the score cache or
computed by the driver the plan chose, under the same cache key either way (both drivers give the same scores).

    report = score_checkpoint(ckpt, batches, AnalyzeConfig(taylor=False), model=loaded.model)     # in memory
    report = score_checkpoint(ckpt, batches, AnalyzeConfig(taylor=False), layered=True)           # layer by layer

In memory the scores come from `importance.analyze` on `model`; layer by layer from `stream.analyze.stream_analyze`
(one decoder layer in memory), with the meta-device skeleton standing in for the model in the cache key (its config
and dtype). The pipeline's drivers, `python -m compressor analyze / slim` and Explore's analysis job all call this.
"""
from __future__ import annotations

from compressor.importance import AnalyzeConfig, ImportanceReport, load_or_analyze
from compressor.progress import Reporter
from compressor.stream.analyze import stream_analyze
from compressor.stream.skeleton import Skeleton


def score_checkpoint(ckpt, batches, config: AnalyzeConfig, *, model=None, layered: bool = False, dtype=None,
                     device: str = "cpu", spill=None, weights_fp: str | None = None, cache_dir=None,
                     use_cache: bool = True, reporter: Reporter | None = None) -> ImportanceReport:
    """`load_or_analyze` for `ckpt` (an `engine.checkpoint.Checkpoint`): in memory on `model` (loaded by the
    caller), or `layered` with `dtype` / `device` / `spill` for the layer-by-layer sweep. `weights_fp` defaults to
    the checkpoint's fingerprint."""
    if layered == (model is not None):
        raise ValueError("score_checkpoint: pass the loaded model to score in memory, or layered=True, not both")
    analyzer = None
    if layered:
        model = Skeleton.open(ckpt.local_dir, dtype=dtype).model
        analyzer = _layered_analyzer(ckpt.local_dir, dtype=dtype, device=device, spill=spill)
    return load_or_analyze(model, batches, config=config, weights_fp=weights_fp or ckpt.fingerprint,
                           cache_dir=cache_dir, use_cache=use_cache, reporter=reporter, analyzer=analyzer)


def _layered_analyzer(folder, **sweep):
    def analyzer(batches, **kw):
        return stream_analyze(folder, batches, **sweep, **kw)
    return analyzer
