"""`python -m compressor quantize MODEL --out DIR`: quantize a checkpoint (RTN or GPTQ, a scheme per module class)
into the compressed-tensors format vLLM serves, or into torchao's.

GPTQ's calibration batches come from `compressor.data.calibration_for` (the shipped text or `--text FILE`), as in a
recipe's quantize stage. `--streaming on` (or auto, for a model that does not fit) quantizes one decoder layer at
a time (`compressor.quantization.stream`).

    python -m compressor quantize demo --out demo-w4                       # GPTQ W4A16, group 128
    python -m compressor quantize slim/checkpoint --out slim-w4 --attention W8A16 --group-size 64
    python -m compressor quantize demo --out demo-fp8 --scheme FP8 --method rtn
    python -m compressor quantize run1/checkpoint --out run1-fp8 --like-input Qwen3-30B-A3B-FP8   # the input's format

`--like-input SOURCE` takes the scheme, group size and method from SOURCE's quantization_config
(`compressor.quantization.like_input`: block FP8 -> FP8_BLOCK, compressed-tensors W4A16 -> W4A16 with its group
size, ...); an explicit --method or per-class option still wins. The report lists what differs from the input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compressor.quantization.scheme import SCHEME_NAMES

NAME = "quantize"
HELP = ("quantize a checkpoint's weights (RTN or GPTQ; W4A16, W8A16, FP8, FP8_BLOCK; per module class) into the "
        "compressed-tensors format")
CLASSES = ("experts", "shared_experts", "attention", "dense_mlp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressor.commands.model_args import add_model_safety_arguments, add_streaming_argument
    from compressor.commands.run import add_threads_argument
    add_model_safety_arguments(parser)
    parser.add_argument("model", metavar="MODEL", help="'demo', a model folder, a .zip/.tar.gz of one, or a hub id")
    parser.add_argument("--out", required=True, type=Path, help="output folder (a Hugging Face checkpoint)")
    parser.add_argument("--scheme", choices=SCHEME_NAMES, default="W4A16", help="scheme of every class (W4A16)")
    from compressor.methods import QUANT_METHODS
    parser.add_argument("--method", choices=tuple(QUANT_METHODS), default=None,
                        help="; ".join(m.legend for m in QUANT_METHODS.values()) + " (default gptq)")
    parser.add_argument("--like-input", metavar="SOURCE", default=None,
                        help="write the format SOURCE (the quantized model that was slimmed) is stored in: its "
                             "scheme, group size and method replace --scheme / --group-size (docs/quantization.md)")
    parser.add_argument("--format", choices=("compressed-tensors", "torchao"), default="compressed-tensors")
    for klass in CLASSES:
        parser.add_argument(f"--{klass.replace('_', '-')}", choices=SCHEME_NAMES + ("keep",), default=None,
                            help=f"scheme of the {klass.replace('_', ' ')} (default --scheme)")
    parser.add_argument("--group-size", default=None,
                        help="columns per scale of the int schemes, or 'channel' (default: the scheme's own)")
    parser.add_argument("--act-order", action="store_true", help="GPTQ: columns by decreasing Hessian diagonal")
    parser.add_argument("--percdamp", type=float, default=0.01, help="GPTQ dampening (default 0.01)")
    parser.add_argument("--min-expert-tokens", type=int, default=64,
                        help="experts routed fewer calibration tokens are rounded to nearest (default 64)")
    parser.add_argument("--calibration-tokens", type=int, default=32768, help="GPTQ calibration tokens (32768)")
    parser.add_argument("--seq-len", type=int, default=256, help="calibration window length (256)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration windows per batch (8)")
    parser.add_argument("--text", default=None, help="calibration text file (default: the shipped text)")
    parser.add_argument("--seed", type=int, default=0)
    add_streaming_argument(parser)
    add_threads_argument(parser)


def like_input_fields(source: str | None) -> tuple[dict, list[str]]:
    """QuantizeConfig fields (and notes) that reproduce SOURCE's stored format; ({}, []) without --like-input."""
    if source is None:
        return {}, []
    from compressor.formats import quantization_of
    from compressor.quantization.like_input import quantize_fields_like
    from compressor.recipe import RecipeError
    from compressor.sources import parse_source, resolve_local
    local = resolve_local(parse_source(source)).local_dir
    try:
        config = json.loads((Path(local) / "config.json").read_text(encoding="utf-8"))
        return quantize_fields_like(quantization_of(config))
    except (OSError, ValueError) as e:
        raise RecipeError(f"--like-input {source}: {e}") from None


def config_from_args(args: argparse.Namespace, like: dict | None = None):
    """The validated QuantizeConfig of the arguments, `like` (--like-input's fields) in place of --scheme /
    --group-size (RecipeError names what is wrong)."""
    from compressor.recipe import QuantizeConfig, RecipeError
    from pydantic import ValidationError
    like = dict(like or {})
    fields = {"scheme": args.scheme, "method": args.method or like.pop("method", "gptq"), "format": args.format,
              "gptq": {"act_order": args.act_order, "percdamp": args.percdamp,
                       "min_expert_tokens": args.min_expert_tokens}}
    like.pop("method", None)
    if args.group_size is not None and not like:
        fields["group_size"] = args.group_size if args.group_size == "channel" else int(args.group_size)
    fields.update(like)
    fields.update({k: getattr(args, k) for k in CLASSES if getattr(args, k) is not None})
    try:
        return QuantizeConfig.model_validate(fields)
    except ValidationError as exc:
        from compressor.recipe import _explain
        raise RecipeError(_explain(exc).replace("invalid recipe", "invalid quantize options")) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from compressor.commands.model_args import calibration_from_args, model_safety_kwargs, streaming_plan
    from compressor.commands.run import apply_threads
    from compressor.quantize import check_quantize
    from compressor.recipe import CalibrationConfig

    apply_threads(args)
    like, notes = like_input_fields(getattr(args, "like_input", None))
    cfg = config_from_args(args, like)
    check_quantize(cfg)
    cal = CalibrationConfig(tokens=args.calibration_tokens, seq_len=args.seq_len, batch_size=args.batch_size)
    found, plan = streaming_plan(args, tokens=cal.tokens, taylor=False)
    if cfg.format == "torchao":
        from compressor.quantize import quantize_checkpoint
        report = quantize_checkpoint(found.local_dir, args.out, cfg).to_dict()
    elif plan is not None:
        from transformers import AutoTokenizer

        from compressor.quantization.stream import stream_quantize
        tok = AutoTokenizer.from_pretrained(found.local_dir) if cfg.method == "gptq" else None
        batches = calibration_from_args(tok, args, cal) if cfg.method == "gptq" else None
        report = stream_quantize(found.local_dir, args.out, batches, cfg.plan()).to_dict()
    else:
        from compressor.quantize import quantize_to_compressed, saved_dtype
        from compressor.sources import load_model
        loaded = load_model(found.source, dtype=torch.float32, **model_safety_kwargs(args))
        batches = calibration_from_args(loaded.tokenizer, args, cal) if cfg.method == "gptq" else None
        _, rep = quantize_to_compressed(loaded.model, batches, cfg, args.out, dtype=saved_dtype(found.local_dir),
                                        tokenizer=loaded.tokenizer, unquantized=found.local_dir)
        report = rep.to_dict()
    if args.like_input is not None:
        report["like_input"] = {"source": args.like_input, "scheme": cfg.label, "notes": notes}
    sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    return 0
