"""One phase of `bench.scale` in its own process, so its peak resident memory is its own (printed as JSON).

    python -m bench.scale_phase write|idle|forward|analyze|analyze_hooks|slim|eval FOLDER [--out DIR] [--layers N] ...
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

QWEN3_30B_A3B = dict(hidden=2048, experts=128, top_k=8, width=768, heads=32, kv_heads=4, vocab=151936)


def _batches(n_tokens: int, seq_len: int, batch: int, vocab: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = max(1, n_tokens // seq_len)
    ids = torch.randint(3, vocab, (rows, seq_len), generator=g)
    return list(ids.split(batch))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=("write", "idle", "forward", "analyze", "analyze_hooks", "slim", "eval"))
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scores", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from compressor.stream.skeleton import Skeleton
    t0 = time.perf_counter()
    out: dict = {}
    if a.phase == "write":
        from compressor.stream.synthetic import write_synthetic_checkpoint
        from compressor.testing import tiny_config
        cfg = tiny_config("qwen3_moe", layers=a.layers, **QWEN3_30B_A3B)
        cfg.head_dim = 128
        cfg.num_experts_per_tok = 8
        out["bytes"] = write_synthetic_checkpoint(cfg, a.folder, dtype=torch.bfloat16)
    sk = Skeleton.open(a.folder)
    out["layer_bytes"] = sk.layer_bytes(0)
    vocab = sk.config.vocab_size
    batches = _batches(a.tokens, a.seq_len, a.batch, vocab, seed=0)
    tokens = sum(b.numel() for b in batches)
    if a.phase == "forward":                 # plain streamed forward: load, run, free; no hooks
        from compressor.stream.sweep import advance_, capture_inputs, final_logits
        sk.load_globals_()
        acts = capture_inputs(sk, batches)
        sk.release_globals_()
        per_layer = []
        for i in range(len(sk.layers)):
            tl = time.perf_counter()
            advance_(sk.load_layer_(i), acts, i)
            sk.release_layer_(i)
            per_layer.append(time.perf_counter() - tl)
        th = time.perf_counter()                 # a model's forward ends in norm + lm_head: the same rows as analyze
        sk.load_globals_()
        with torch.no_grad():
            for h in acts.hidden:
                for r in range(h.shape[0]):
                    final_logits(sk, h[r:r + 1])
        out.update(tokens=tokens, layer_seconds=per_layer, head_seconds=time.perf_counter() - th)
    elif a.phase in ("analyze", "analyze_hooks"):       # hooks: the experts recomputed by a hook, as before
        if a.phase == "analyze_hooks":
            os.environ["MOE_STUDIO_SCORING_EXPERTS"] = "hooks"
        from compressor.importance.analyze import AnalyzeConfig
        from compressor.stream.analyze import stream_analyze
        report = stream_analyze(a.folder, batches, config=AnalyzeConfig(taylor=False, want=("experts", "neurons")))
        report.save(a.scores)
        out.update(tokens=tokens, loop_seconds=report.meta["seconds"], layer_seconds=report.meta["layer_seconds"],
                   head_seconds=report.meta["head_seconds"])
    elif a.phase == "slim":
        from compressor.importance.scores import ImportanceReport
        from compressor.recipe import SlimmingConfig
        from compressor.stream.slim import stream_slim
        report = ImportanceReport.load(a.scores)
        cfg = SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation", experts_keep=96, expert_score="reap")
        res = stream_slim(a.folder, report, cfg, a.out)
        out.update(bytes_written=res.bytes_written, layer_seconds=res.layer_seconds,
                   params_before=res.params_before.total, params_after=res.params_after.total,
                   active_before=res.params_before.active, active_after=res.params_after.active)
    elif a.phase == "eval":
        from compressor.stream.evaluate import stream_quality
        windows = torch.cat(_batches(a.tokens, a.seq_len, a.batch, vocab, seed=1))
        q = stream_quality(a.out, a.folder, windows, batch_size=a.batch)
        out.update(tokens=q.tokens, perplexity=q.perplexity, baseline_perplexity=q.baseline_perplexity,
                   agreement=q.agreement, kl=q.kl_to_baseline)
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
