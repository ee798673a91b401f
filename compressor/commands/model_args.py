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


def calibration_from_args(loaded, args: argparse.Namespace, cal) -> list[dict]:
    """Calibration batches for a loaded model: `--text FILE` or the shipped text, `cal` tokens in windows."""
    from compressor.data import calibration_batches, text_from_file
    if loaded.tokenizer is None:
        raise ValueError(f"{args.model}: the model folder has no tokenizer files, so calibration text cannot be "
                         "tokenised; add tokenizer.json (or tokenizer_config.json + vocab) to the folder")
    text = text_from_file(args.text) if args.text else None
    return calibration_batches(loaded.tokenizer, tokens=cal.tokens, seq_len=cal.seq_len,
                               batch_size=cal.batch_size, seed=args.seed, text=text)
