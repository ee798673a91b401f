"""Options every command that loads a model shares: how far to trust what it loads.

    add_model_safety_arguments(parser)
    loaded = load_model(args.model, dtype=args.dtype, **model_safety_kwargs(args))
"""
from __future__ import annotations

import argparse


def add_model_safety_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also accept pytorch_model.bin / *.pt weights (loaded with weights_only=True); "
                             "by default only safetensors load")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a checkpoint's own Python code (config auto_map) to run; off by default")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) to pin")


def model_safety_kwargs(args: argparse.Namespace) -> dict:
    return {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code,
            "revision": args.revision}


def calibration_from_args(tokenizer, args: argparse.Namespace, cal) -> list[dict]:
    """Calibration batches with a model's tokenizer: `--text FILE` or the shipped text, `cal` tokens in windows."""
    from compressor.data import calibration_for, text_from_file
    if tokenizer is None:
        raise ValueError(f"{args.model}: the model folder has no tokenizer files, so calibration text cannot be "
                         "tokenised; add tokenizer.json (or tokenizer_config.json + vocab) to the folder")
    text = text_from_file(args.text) if args.text else None
    return calibration_for(tokenizer, cal, seed=args.seed, text=text)


def add_streaming_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streaming", choices=("auto", "on", "off"), default="auto",
                        help="work layer by layer (one decoder layer in memory): 'auto' when the model does not fit "
                             "comfortably in the machine's total memory (compressor.engine.residency), 'on' always, "
                             "'off' never (default auto)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", type=_device_spec,
                        help="auto (a GPU when torch.cuda.is_available(), else the CPU), cpu, cuda or cuda:N; in memory "
                             "the model runs there, layer by layer only the current layer (default auto)")


def _device_spec(text: str) -> str:
    from compressor.device import check_device_spec
    try:
        return check_device_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def streaming_plan(args: argparse.Namespace, *, tokens: int, taylor: bool, blockwise: bool = False):
    """(the resolved local model, its ExecutionPlan or None when it runs in memory) for a command's MODEL argument,
    by the one residency rule (`compressor.engine.plan`; `blockwise`: layer-local recovery asked, which runs layer by
    layer). Pickle checkpoints always run in memory; `--streaming on` on one is refused."""
    from compressor.sources import parse_dtype, resolve_local
    from compressor.engine.plan import plan_execution

    found = resolve_local(args.model, **model_safety_kwargs(args))
    if found.weights != "safetensors":
        if args.streaming == "on":
            raise ValueError(f"{args.model}: layer-by-layer work reads safetensors shards; this model has only "
                             "pickle weights. Convert it to safetensors first.")
        return found, None
    dtype = parse_dtype(args.dtype) if getattr(args, "dtype", None) else None
    plan = plan_execution(found.local_dir, args.streaming, tokens=tokens, taylor=taylor, dtype=dtype,
                          blockwise=blockwise)
    return found, plan if plan.streaming else None
