"""`python -m compressor slim MODEL --expert-keep-ratio R [--experts-keep N] [--layers-drop K] [--sparsity S] --out DIR`

Scores the model (or reuses cached scores), cuts it, and writes DIR/checkpoint/ (a Hugging Face folder that stock
transformers loads) and DIR/slim_report.json (parameters before/after, time, the scores used, what each cut kept).

    python -m compressor slim demo --expert-keep-ratio 0.5 --out slim/
    python -m compressor slim demo --expert-keep-ratio 0.75 --experts-keep 6 --layers-drop 1 --out slim/
    python -m compressor slim demo --sparsity 0.5 --allocation dlp --out sparse/
    python -m compressor slim demo --sparsity 0.5 --calibration dense --out sparse-dense/
    python -m compressor slim demo --experts-keep 4 --merge ream --out merged/
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from compressor.methods import EXPERT_MERGES, EXPERT_SCORES, NEURON_SCORES, SPARSITY_ALLOCATIONS, names
from compressor.progress import Reporter
from compressor.recipe import CalibrationConfig, SlimmingConfig

NAME = "slim"
HELP = ("cut a MoE model: keep a share of every expert's neurons, keep the best experts, drop low-influence layers, "
        "or sparsify with Wanda; writes a checkpoint stock transformers loads and a JSON report")

_CAL, _SLIM = CalibrationConfig(), SlimmingConfig()
REPORT_FILE = "slim_report.json"



def _legends(registry) -> str:
    """'name = formula; ...' for --help (argparse needs %% for a literal percent sign)."""
    return "; ".join(f"{m.name} = {m.formula}" for m in registry.values()).replace("%", "%%")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressor.commands.model_args import add_model_safety_arguments, add_streaming_argument
    from compressor.commands.model_args import add_device_argument
    add_model_safety_arguments(parser)
    add_streaming_argument(parser)
    add_device_argument(parser)
    parser.add_argument("model", metavar="MODEL", help="'demo', a model folder, a .zip/.tar.gz of one, or a hub id")
    parser.add_argument("--out", required=True, type=Path, help="output folder: checkpoint/ + slim_report.json")
    parser.add_argument("--expert-keep-ratio", type=float, default=1.0,
                        help="share of intermediate neurons every expert keeps (SlimMoE), e.g. 0.5 (default 1.0)")
    parser.add_argument("--neuron-score", choices=names(NEURON_SCORES), default=_SLIM.neuron_score,
                        help=f"neuron score that ranks neurons: {_legends(NEURON_SCORES)} "
                             f"(default {_SLIM.neuron_score})")
    parser.add_argument("--experts-keep", type=int, default=None, help="routed experts kept per MoE layer")
    parser.add_argument("--expert-score", choices=names(EXPERT_SCORES), default=_SLIM.expert_score,
                        help=f"expert score that ranks experts: {_legends(EXPERT_SCORES)} "
                             f"(default {_SLIM.expert_score})")
    parser.add_argument("--merge", choices=names(EXPERT_MERGES), default=None,
                        help=f"fold the experts into --experts-keep instead of dropping them: "
                             f"{_legends(EXPERT_MERGES)} (default: prune by --expert-score)")
    parser.add_argument("--merge-group-size", type=int, default=_SLIM.merge_group_size,
                        help=f"REAM's C: the most experts folded into one (default {_SLIM.merge_group_size})")
    parser.add_argument("--layers-drop", type=int, default=0, help="decoder layers removed (lowest block influence)")
    parser.add_argument("--sparsity", type=float, default=0.0, help="unstructured Wanda sparsity, e.g. 0.5")
    parser.add_argument("--allocation", choices=names(SPARSITY_ALLOCATIONS), default=_SLIM.sparsity_allocation,
                        help=f"how sparsity is spread over layers: {_legends(SPARSITY_ALLOCATIONS)} "
                             f"(default {_SLIM.sparsity_allocation})")
    parser.add_argument("--dlp-statistic", choices=("median", "mean"), default=_SLIM.sparsity_dlp_statistic,
                        help=f"DLP's layer score: the median Wanda score (paper) or the mean "
                             f"(default {_SLIM.sparsity_dlp_statistic})")
    parser.add_argument("--calibration", choices=("sequential", "dense"), default=_SLIM.sparsity_calibration,
                        help=f"sparsity calibration: sequential measures each layer's Wanda norms with the layers "
                             f"below already pruned (Wanda, OWL, DLP), dense takes them all from the unpruned model "
                             f"(default {_SLIM.sparsity_calibration})")
    parser.add_argument("--tokens", type=int, default=_CAL.tokens, help=f"calibration tokens (default {_CAL.tokens})")
    parser.add_argument("--seq-len", type=int, default=_CAL.seq_len, help=f"window length (default {_CAL.seq_len})")
    parser.add_argument("--batch-size", type=int, default=_CAL.batch_size, help="windows per forward pass")
    parser.add_argument("--text", type=Path, default=None,
                        help="calibration text (.txt or .jsonl with a 'text' field); default: the shipped corpus")
    parser.add_argument("--seed", type=int, default=0, help="which stretches of text are sampled")
    parser.add_argument("--dtype", default=None, help="load dtype, e.g. float32 or bfloat16 (default: checkpoint's)")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse / store scores in the studio cache ($MOE_STUDIO_CACHE/scores)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="score cache folder (overrides the default)")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="reload the written checkpoint and compare logits with the in-memory model (default on)")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DIR/checkpoint")
    parser.add_argument("--block-distill-steps", type=int, default=0,
                        help="layer-local recovery: AdamW steps per cut MoE block towards the original block's output "
                             "(works layer by layer; default 0 = off)")
    parser.add_argument("--block-distill-lr", type=float, default=1e-4, help="its learning rate (default 1e-4)")


def _slimming_config(args) -> SlimmingConfig:
    from pydantic import ValidationError
    try:
        return SlimmingConfig(expert_keep_ratio=args.expert_keep_ratio, neuron_score=args.neuron_score,
                              experts_keep=args.experts_keep, expert_score=args.expert_score,
                              expert_merge=args.merge, merge_group_size=args.merge_group_size,
                              layers_drop=args.layers_drop, sparsity=args.sparsity,
                              sparsity_allocation=args.allocation, sparsity_dlp_statistic=args.dlp_statistic,
                              sparsity_calibration=args.calibration)
    except ValidationError as exc:
        raise ValueError("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                                   for e in exc.errors())) from None


def _analyze_config(cfg: SlimmingConfig):
    from compressor.importance import AnalyzeConfig
    from compressor.slimming.apply import analysis_needs
    want, taylor = analysis_needs(cfg)
    return AnalyzeConfig(want=want, taylor=taylor) if want else None


def run(args: argparse.Namespace) -> int:
    """Score once (cache, in memory or layer by layer, `engine.scores.score_checkpoint`), cut with the driver the
    residency rule chose, write checkpoint/ and slim_report.json."""
    from compressor.commands.model_args import model_safety_kwargs, streaming_plan
    from compressor.engine.checkpoint import Checkpoint
    from compressor.sources import load_model, load_tokenizer

    t0 = time.perf_counter()
    cfg = _slimming_config(args)
    cal = CalibrationConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size)
    out = Path(args.out)
    ckpt = out / "checkpoint"
    if (ckpt / "config.json").exists() and not args.overwrite:
        raise ValueError(f"{ckpt} already holds a checkpoint; choose another --out or pass --overwrite")
    analyze_cfg = _analyze_config(cfg)
    if args.block_distill_steps and args.streaming == "off":
        raise ValueError("--block-distill-steps recovers each block while it is in memory, layer by layer: drop "
                         "--streaming off")
    found, plan = streaming_plan(args, tokens=cal.tokens, taylor=bool(analyze_cfg and analyze_cfg.taylor),
                                 blockwise=bool(args.block_distill_steps))
    source = Checkpoint(str(found.source), found)
    loaded = None
    if plan is None:
        loaded = load_model(found.source, dtype=args.dtype, device=args.device, **model_safety_kwargs(args))
    tokenizer = (loaded.tokenizer if loaded else
                 load_tokenizer(found.local_dir, trust_remote_code=args.trust_remote_code))
    batches, importance, scores_meta = _scores(args, source, loaded, cfg, analyze_cfg, cal, tokenizer)
    cut = _cut_layered(args, source, importance, cfg, batches) if plan else _cut_in_memory(args, loaded, importance,
                                                                                          cfg, batches)
    report = {"model": str(found.source), "slimming": cfg.model_dump(), **cut, "scores": scores_meta}
    if plan is not None:
        report["execution"] = plan.to_dict()
    return _write_report(out, ckpt, report, t0, source)


def _scores(args, source, loaded, cfg: SlimmingConfig, analyze_cfg, cal: CalibrationConfig, tokenizer):
    """(calibration batches or None, ImportanceReport or None, what the report says about them)."""
    from compressor.commands.model_args import calibration_from_args
    from compressor.device import resolve_device
    from compressor.engine.scores import score_checkpoint
    from compressor.sources import parse_dtype

    if analyze_cfg is None and not cfg.expert_merge:
        return None, None, {}
    batches = calibration_from_args(tokenizer, args, cal)
    if analyze_cfg is None:
        return batches, None, {}
    where = (dict(model=loaded.model, weights_fp=loaded.fingerprint) if loaded else
             dict(layered=True, dtype=parse_dtype(args.dtype) if args.dtype else None,
                  device=resolve_device(args.device)))
    importance = score_checkpoint(source, batches, analyze_cfg, cache_dir=args.cache_dir, use_cache=args.cache,
                                  reporter=Reporter(_progress_line), **where)
    meta = {"analyze": analyze_cfg.to_dict(), "cache": importance.meta.get("cache"),
            "tokens": importance.meta.get("tokens"), "calibration": cal.model_dump(),
            "text": str(args.text) if args.text else "shipped corpus (train split)", "seed": args.seed}
    return batches, importance, meta


def _cut_in_memory(args, loaded, importance, cfg: SlimmingConfig, batches) -> dict:
    """Apply the cuts to the loaded model, save it, and (with --verify) compare the reload's logits."""
    from compressor.slimming.apply import apply_slimming_
    from compressor.slimming.export import save_checkpoint, verify_reload

    ckpt, model = Path(args.out) / "checkpoint", loaded.model
    result = apply_slimming_(model, importance, cfg, batches=batches)
    nbytes = save_checkpoint(model, loaded.tokenizer, ckpt, extra_card={"source": str(loaded.source),
                                                                        "slimming": cfg.model_dump()},
                             overwrite=args.overwrite)
    info = {"dir": str(ckpt), "bytes": nbytes}
    if args.verify:
        probe = batches[0]["input_ids"][:2] if batches else _probe_ids(model)
        info["reload_max_abs_logit_diff"] = verify_reload(ckpt, model, probe)
    return {**result.to_dict(), "checkpoint": info}


def _cut_layered(args, source, importance, cfg: SlimmingConfig, batches) -> dict:
    """Cut and write one decoder layer at a time (`stream.slim.stream_slim`). The written globals and first / last
    layer are read back through transformers' conversion (`--verify` cannot compare logits without the whole model
    in memory)."""
    import shutil

    from compressor.device import resolve_device
    from compressor.slimming.export import model_card
    from compressor.sources import parse_dtype
    from compressor.stream.blockwise import BlockDistillConfig
    from compressor.stream.skeleton import Skeleton
    from compressor.stream.slim import stream_slim

    ckpt = Path(args.out) / "checkpoint"
    if ckpt.exists() and args.overwrite:
        shutil.rmtree(ckpt)
    block = (BlockDistillConfig(steps=args.block_distill_steps, lr=args.block_distill_lr)
             if args.block_distill_steps else None)
    result = stream_slim(source.local_dir, importance, cfg, ckpt, batches=batches, block_distill=block,
                         dtype=parse_dtype(args.dtype) if args.dtype else None, reporter=Reporter(_progress_line),
                         device=resolve_device(args.device))
    card = model_card(Skeleton.open(ckpt).model, {"source": str(source.found.source), "slimming": cfg.model_dump()})
    (ckpt / "README.md").write_text(card)
    return {**result.to_dict(),
            "checkpoint": {"dir": str(ckpt), "bytes": sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()),
                           "verified": "config.json rebuilds the written globals and first / last layer"}}


def _write_report(out: Path, ckpt: Path, report: dict, t0: float, source) -> int:
    q = source.quantization
    report.update(input_quantization=q.to_dict() if q is not None else None, notes=source.input_notes())
    report["total_seconds"] = time.perf_counter() - t0
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    digest = {"checkpoint": str(ckpt), "report": str(out / REPORT_FILE), "params_before": report["params_before"],
              "params_after": report["params_after"], "seconds": round(report["total_seconds"], 2),
              "streamed": bool(report.get("execution", {}).get("streaming"))}
    sys.stdout.write(json.dumps(digest, indent=2) + "\n")
    return 0


def _probe_ids(model):
    import torch
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))


def _progress_line(event) -> None:
    if event.total and event.step in (event.total, 1) or event.step % 10 == 0:
        rate = f", {event.tokens_per_s:,.0f} tok/s" if event.tokens_per_s else ""
        sys.stderr.write(f"{event.stage}: {event.step}/{event.total or '?'}{rate}\n")
