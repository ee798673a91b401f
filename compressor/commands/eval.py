"""`python -m compressor eval MODEL [--baseline MODEL]`: evaluate a model, against a baseline when given.

Prints a table (or JSON with --json): held-out perplexity, top-1 agreement and KL to the baseline, task accuracy,
parameters total / active, checkpoint bytes, peak memory, prefill / decode tokens/s and their ratio, and the expert
kernel each model ran with.

    python -m compressor eval runs/first/checkpoint --baseline demo
    python -m compressor eval demo --json --no-speed
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compressor.commands.run import add_threads_argument, apply_threads
from compressor.recipe import EvaluateConfig

NAME = "eval"
HELP = "evaluate a model (perplexity, agreement and KL to a baseline, size, speed) and print a table or JSON"
_EV = EvaluateConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="'demo', a model folder, a .zip/.tar.gz of one, or a hub id")
    parser.add_argument("--baseline", metavar="MODEL", default=None, help="the model to compare with (e.g. demo)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--tokens", type=int, default=_EV.tokens, help=f"held-out tokens (default {_EV.tokens})")
    parser.add_argument("--seq-len", type=int, default=_EV.seq_len, help=f"window length (default {_EV.seq_len})")
    parser.add_argument("--task", action="append", default=[], metavar="TASK",
                        help="a local multiple-choice .jsonl file, or an lm-eval task name (needs lm_eval); repeatable")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    parser.add_argument("--no-perplexity", action="store_true", help="skip perplexity / agreement / KL")
    parser.add_argument("--dtype", default="float32",
                        help="dtype both models run in (default float32; the speed probe may still pick bf16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from compressor.commands.run import ProgressBars
    from compressor.evaluate import evaluate, render_table
    from compressor.sources import load_model

    try:
        cfg = EvaluateConfig(perplexity=not args.no_perplexity, speed=not args.no_speed, tokens=args.tokens,
                             seq_len=args.seq_len, tasks=args.task)
    except ValidationError as exc:
        raise ValueError("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                                   for e in exc.errors())) from None
    apply_threads(args)
    loaded = load_model(args.model, dtype=args.dtype)
    base = load_model(args.baseline, dtype=args.dtype) if args.baseline else None
    tokenizer = loaded.tokenizer or (base.tokenizer if base else None)
    if tokenizer is None:
        raise ValueError(f"{args.model} ships no tokenizer files and no --baseline tokenizer was given")
    bars = ProgressBars(enabled=not args.no_progress)
    try:
        report = evaluate(loaded.model, base.model if base else None, tokenizer, cfg,
                          checkpoint_dir=Path(loaded.local_dir), reporter=_reporter(bars),
                          baseline_checkpoint_dir=Path(base.local_dir) if base else None)
    finally:
        bars.close()
    if args.json:
        out = {"model": str(loaded.source), "baseline": str(base.source) if base else None, **report.to_dict()}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        title = f"{loaded.source}" + (f" vs {base.source}" if base else "")
        sys.stdout.write(title + "\n\n" + render_table(report) + "\n")
    return 0


def _reporter(bars):
    from compressor.progress import Reporter
    return Reporter(on_progress=bars)
