"""`python -m compressor inspect MODEL`: print the model's summary as JSON (family, layers, experts, top-k, widths,
shared experts, parameters total / active per token, dtype).

    python -m compressor inspect demo
    python -m compressor inspect path/to/hf-folder --dtype float32
"""
from __future__ import annotations

import argparse
import json
import sys

NAME = "inspect"
HELP = "print a JSON summary of a MoE model: family, layers, experts, top-k, widths, parameters (total / active)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressor.commands.model_args import add_model_safety_arguments
    add_model_safety_arguments(parser)
    parser.add_argument("model", metavar="MODEL", help="'demo', a model folder, a .zip/.tar.gz of one, or a hub id")
    parser.add_argument("--dtype", default=None, help="load dtype, e.g. float32 or bfloat16 (default: checkpoint's)")


def run(args: argparse.Namespace) -> int:
    """Safetensors folders are described from config.json + the weight headers (no weights read); pickle checkpoints
    (only with --allow-pickle) are loaded."""
    from compressor.commands.model_args import model_safety_kwargs
    from compressor.describe import describe_checkpoint
    from compressor.sources import load_model, parse_dtype, resolve_local

    safety = model_safety_kwargs(args)
    found = resolve_local(args.model, **safety)
    if found.weights == "safetensors":
        summary = describe_checkpoint(found.local_dir, dtype=parse_dtype(args.dtype) if args.dtype else None)
        info = {"model": str(found.source), **summary}
    else:
        from compressor.inspect import inspect_model
        loaded = load_model(found.source, dtype=args.dtype, **safety)
        info = {"model": str(loaded.source), **inspect_model(loaded.model)}
    sys.stdout.write(json.dumps(info, indent=2) + "\n")
    return 0
