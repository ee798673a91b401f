"""`python -m compressor <command>`: the command-line face of the library.

Each command is a module in `compressor.commands` with `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.

    python -m compressor inspect demo
    python -m compressor analyze demo --out scores/
    python -m compressor slim demo --expert-keep-ratio 0.5 --out slim/
    python -m compressor quantize slim/ --out slim-w4 --scheme W4A16 --method gptq
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("inspect", "analyze", "slim", "run", "quantize", "eval", "recipe", "demo_model")


def _load(name: str):
    return importlib.import_module(f"compressor.commands.{name}")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="python -m compressor",
                                     description="MoE Compression Studio: inspect, score, slim, distil and "
                                                 "evaluate mixture-of-experts language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {}
    for name in COMMANDS:
        mod = _load(name)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        handlers[mod.NAME] = mod.run
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(handlers[args.command](args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        # Library errors carry a message that says what was wrong and what to do; no traceback for those.
        print(f"error: {exc}", file=sys.stderr)
        return 1
