"""`python -m compressor analyze MODEL --out DIR`: one calibration pass, scores written as tables + summary JSON.

    python -m compressor analyze demo --out scores/ --tokens 8192 --seq-len 256 --no-taylor
    # scores/experts.csv, neurons.csv, layers.csv, summary.json, scores.safetensors
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compressor.progress import Reporter
from compressor.recipe import CalibrationConfig

NAME = "analyze"
HELP = ("score experts (frequency, REAP, MAN, Taylor), neurons (activation, Taylor) and layers (block influence, "
        "DLP/OWL) on calibration text; write CSV/parquet tables and summary.json")

_CAL = CalibrationConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressor.commands.model_args import add_model_safety_arguments, add_streaming_argument
    from compressor.commands.model_args import add_device_argument
    add_model_safety_arguments(parser)
    add_streaming_argument(parser)
    add_device_argument(parser)
    parser.add_argument("model", metavar="MODEL", help="'demo', a model folder, a .zip/.tar.gz of one, or a hub id")
    parser.add_argument("--out", required=True, type=Path, help="folder for the tables and summary.json")
    parser.add_argument("--tokens", type=int, default=_CAL.tokens, help=f"calibration tokens (default {_CAL.tokens})")
    parser.add_argument("--seq-len", type=int, default=_CAL.seq_len, help=f"window length (default {_CAL.seq_len})")
    parser.add_argument("--batch-size", type=int, default=_CAL.batch_size,
                        help=f"windows per forward pass (default {_CAL.batch_size})")
    parser.add_argument("--taylor", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the backward pass for first-order Taylor scores (default on)")
    parser.add_argument("--text", type=Path, default=None,
                        help="calibration text (.txt or .jsonl with a 'text' field); default: the shipped corpus")
    parser.add_argument("--seed", type=int, default=0, help="which stretches of text are sampled")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format (default csv)")
    parser.add_argument("--dtype", default=None, help="load dtype, e.g. float32 or bfloat16 (default: checkpoint's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy shared machine)")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                        help="reuse / store scores in the studio cache ($MOE_STUDIO_CACHE/scores)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="score cache folder (overrides the default)")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from compressor.commands.model_args import calibration_from_args, model_safety_kwargs, streaming_plan
    from compressor.engine.checkpoint import Checkpoint
    from compressor.engine.scores import score_checkpoint
    from compressor.importance import AnalyzeConfig

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    cal = CalibrationConfig(tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size)
    config = AnalyzeConfig(taylor=args.taylor)
    found, plan = streaming_plan(args, tokens=cal.tokens, taylor=args.taylor)
    source = Checkpoint(str(found.source), found)
    where, tokenizer = _where(args, found, plan, model_safety_kwargs(args))
    batches = calibration_from_args(tokenizer, args, cal)
    with tqdm(total=len(batches), desc="calibrate", unit="batch", file=sys.stderr) as bar:
        def on_progress(event):
            if event.total and event.total != bar.total:     # layer-by-layer work counts layers, not batches
                bar.reset(total=event.total)
            bar.update(event.step - bar.n)
            if event.tokens_per_s:
                bar.set_postfix(tok_s=f"{event.tokens_per_s:,.0f}", loss=f"{event.loss or 0:.3f}")

        report = score_checkpoint(source, batches, config, cache_dir=args.cache_dir, use_cache=args.cache,
                                  reporter=Reporter(on_progress), **where)
    report.meta.update({"model": str(found.source), "calibration": cal.model_dump(),
                        "execution": plan.to_dict() if plan else {"streaming": False},
                        "text": str(args.text) if args.text else "shipped corpus (train split)", "seed": args.seed})
    out = report.save(args.out, table_format=args.format)
    cache = report.meta.get("cache", {})
    digest = {"out": str(out), "family": report.family, "tokens": report.meta["tokens"],
              "tokens_per_s": round(report.meta["tokens_per_s"], 1), "ce_loss": round(report.meta["ce_loss"], 4),
              "taylor": report.meta["taylor"], "cache_hit": cache.get("hit", False), "streamed": plan is not None,
              "files": sorted(p.name for p in out.iterdir())}
    sys.stdout.write(json.dumps(digest, indent=2) + "\n")
    return 0


def _where(args, found, plan, safety: dict) -> tuple[dict, object]:
    """(how `score_checkpoint` scores: the loaded model, or layer by layer with its dtype and device; tokenizer)."""
    from compressor.device import resolve_device
    from compressor.sources import load_model, load_tokenizer, parse_dtype

    if plan is None:
        loaded = load_model(found.source, dtype=args.dtype, device=args.device, **safety)
        return dict(model=loaded.model, weights_fp=loaded.fingerprint), loaded.tokenizer
    where = dict(layered=True, dtype=parse_dtype(args.dtype) if args.dtype else None,
                 device=resolve_device(args.device))
    return where, load_tokenizer(found.local_dir, trust_remote_code=args.trust_remote_code)
