"""`python -m compressor eval MODEL [--baseline MODEL]`: evaluate a model, against a baseline when given.

Prints a table (or JSON with --json): held-out perplexity, top-1 agreement and KL to the baseline, task accuracy,
parameters total / active, checkpoint bytes, peak memory, prefill / decode tokens/s and their ratio, and the expert
kernel each model ran with.

    python -m compressor eval runs/first/checkpoint --baseline demo
    python -m compressor eval demo --json --no-speed
    python -m compressor eval runs/first/checkpoint --baseline demo --lm-eval sotu_cloze,sotu_completion --lm-eval-limit 200
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compressor.commands.run import add_threads_argument, apply_threads
from compressor.recipe import EvaluateConfig, LmEvalConfig

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
                        help="a local multiple-choice .jsonl file; repeatable")
    parser.add_argument("--lm-eval", metavar="TASK[,TASK]", default="",
                        help="lm-evaluation-harness tasks: the shipped offline sotu_completion, sotu_cloze, "
                             "sotu_presidents, any lm-eval task name (its data comes from the hub), or a preset: "
                             "offline (the shipped three) or papers (arc_easy, hellaswag, winogrande, mmlu, gsm8k)")
    parser.add_argument("--lm-eval-limit", type=int, default=None, metavar="N", help="examples per lm-eval task")
    parser.add_argument("--num-fewshot", type=int, default=None, metavar="K", help="lm-eval few-shot examples")
    parser.add_argument("--lm-eval-backend", choices=("auto", "hf", "vllm"), default="auto",
                        help="hf = the model in memory; vllm = lm-eval's vllm backend (needs vllm and a CUDA GPU); "
                             "auto = vllm where it can run, else hf (default)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    parser.add_argument("--no-perplexity", action="store_true", help="skip perplexity / agreement / KL")
    parser.add_argument("--dtype", default="float32",
                        help="dtype both models run in (default float32; the speed probe may still pick bf16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--streaming", choices=("auto", "on", "off"), default="auto",
                        help="evaluate layer by layer (perplexity, agreement, KL and sizes; no speed): 'auto' when a "
                             "model does not fit comfortably, 'on' always, 'off' never (default auto)")
    add_threads_argument(parser)
    from compressor.commands.model_args import add_device_argument
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from compressor.commands.run import ProgressBars
    from compressor.evaluate import evaluate, render_table
    from compressor.sources import load_model

    try:
        lm = LmEvalConfig(tasks=[t.strip() for t in args.lm_eval.split(",") if t.strip()], limit=args.lm_eval_limit,
                          num_fewshot=args.num_fewshot, backend=args.lm_eval_backend)
        cfg = EvaluateConfig(perplexity=not args.no_perplexity, speed=not args.no_speed, tokens=args.tokens,
                             seq_len=args.seq_len, tasks=args.task, lm_eval=lm)
    except ValidationError as exc:
        raise ValueError("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                                   for e in exc.errors())) from None
    apply_threads(args)
    streamed = _streamed_dirs(args, cfg)
    if streamed is not None:
        return _run_streamed(args, cfg, *streamed)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    base = load_model(args.baseline, dtype=args.dtype, device=args.device) if args.baseline else None
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


def _streamed_dirs(args, cfg):
    """(model folder, baseline folder or None) when either model should be evaluated layer by layer, else None."""
    from compressor.sources import parse_dtype, resolve_local
    from compressor.engine.plan import plan_execution

    if args.streaming == "off":
        return None
    found = [resolve_local(m) for m in (args.model, args.baseline) if m]
    dtype = parse_dtype(args.dtype) if args.dtype else None
    plans = [plan_execution(f.local_dir, args.streaming, tokens=cfg.tokens, taylor=False, dtype=dtype) for f in found]
    if not any(p.streaming for p in plans):
        return None
    return found[0], (found[1] if len(found) > 1 else None)


def _run_streamed(args, cfg, model, baseline) -> int:
    """Quality from one sweep per model and sizes from the headers (`engine.layered.evaluate_layered`, what a
    layer-by-layer run reports); speed and tasks need the whole model in memory and are left out (said in the
    output)."""
    import resource
    import time

    from compressor.data import eval_windows
    from compressor.device import resolve_device
    from compressor.engine.layered import evaluate_layered
    from compressor.evaluate import render_table
    from compressor.sources import load_tokenizer, parse_dtype

    tokenizer = load_tokenizer(model.local_dir) or (load_tokenizer(baseline.local_dir) if baseline else None)
    if tokenizer is None:
        raise ValueError(f"{args.model} ships no tokenizer files and no --baseline tokenizer was given")
    if cfg.tasks or cfg.lm_eval.tasks:
        raise ValueError("--task and --lm-eval need the whole model in memory; run them with --streaming off")
    t0 = time.perf_counter()
    windows = eval_windows(tokenizer, tokens=cfg.tokens, seq_len=cfg.seq_len) if cfg.perplexity else None
    report = evaluate_layered(model.local_dir, baseline.local_dir if baseline else None, windows,
                              dtype=parse_dtype(args.dtype) if args.dtype else None,
                              device=resolve_device(args.device))
    report.seconds = time.perf_counter() - t0
    report.size.peak_memory_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report.size.peak_memory_method = "ru_maxrss"      # this whole process, both sweeps included
    if args.json:
        out = {"model": str(model.source), "baseline": str(baseline.source) if baseline else None,
               "streamed": True, **report.to_dict()}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        title = f"{model.source}" + (f" vs {baseline.source}" if baseline else "") + " (layer by layer; no speed)"
        sys.stdout.write(title + "\n\n" + render_table(report) + "\n")
    return 0
