"""`python -m compressor run RECIPE --out DIR`: run a whole compression job with progress bars.

Writes DIR/checkpoint/ (a Hugging Face folder with a README.md model card carrying the recipe and metrics),
DIR/recipe.yaml and DIR/metrics.json, then prints the headline figures and the wall time per phase.

    python -m compressor recipe --example > recipe.yaml
    python -m compressor run recipe.yaml --out runs/first
    python -m compressor run recipe.yaml --out runs/two --nproc 2     # distillation's student sharded over 2 processes
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "run"
HELP = "run a compression recipe (score, slim, distil, evaluate in stages) and write DIR/checkpoint + metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE", type=Path, help="recipe file (YAML or JSON)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: checkpoint/, recipe.yaml, metrics.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    parser.add_argument("--device", default=None,
                        help="overrides the recipe's execution.device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--nproc", type=int, default=None,
                        help="overrides the recipe's execution.nproc: processes global distillation shards the "
                             "student over (FSDP2, gloo on the CPU); the result is the one-process result")
    add_threads_argument(parser)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice). On a machine shared with other jobs, 1 "
                             "thread is often faster than 2: busy cores stall multi-threaded kernels")


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)


class ProgressBars:
    """tqdm bars on stderr for `ProgressEvent`s: the whole job (by fraction) and the current phase (by step)."""

    SCALE = 1000

    def __init__(self, *, enabled: bool = True):
        from tqdm import tqdm
        self._tqdm, self.enabled = tqdm, enabled
        self.overall = tqdm(total=self.SCALE, desc="overall", unit="‰", file=sys.stderr, disable=not enabled,
                            bar_format="{desc:<22}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        self.phase, self.phase_key = None, None

    def __call__(self, ev) -> None:
        self.overall.update(max(int(ev.fraction * self.SCALE) - self.overall.n, 0))
        self.overall.set_description_str(f"{ev.stage}"[:22])
        if not ev.total:
            return
        if self.phase is None or self.phase_key != (ev.stage, ev.total) or ev.step < self.phase.n:
            if self.phase is not None:
                self.phase.close()
            self.phase = self._tqdm(total=ev.total, desc=f"  {ev.stage}"[:22], file=sys.stderr, leave=False,
                                    disable=not self.enabled, position=1)
            self.phase_key = (ev.stage, ev.total)
        self.phase.update(ev.step - self.phase.n)
        post = {}
        if ev.loss is not None:
            post["loss"] = f"{ev.loss:.4f}"
        if ev.tokens_per_s:
            post["tok/s"] = f"{ev.tokens_per_s:,.0f}"
        if ev.eta_s is not None:
            post["eta"] = f"{ev.eta_s:.0f}s"
        if post:
            self.phase.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.phase is not None:
            self.phase.close()
        self.overall.close()


def run(args: argparse.Namespace) -> int:
    from compressor.pipeline import run_recipe
    from compressor.recipe import Recipe

    if not args.recipe.is_file():
        raise FileNotFoundError(f"recipe file not found: {args.recipe} (make one with "
                                "`python -m compressor recipe --example > recipe.yaml`)")
    recipe = Recipe.load(args.recipe)
    override = {k: v for k, v in (("device", args.device), ("nproc", args.nproc)) if v is not None}
    if override:
        recipe = Recipe.parse({**recipe.to_dict(), "execution": {**recipe.execution.model_dump(), **override}})
    apply_threads(args)
    bars = ProgressBars(enabled=not args.no_progress)
    try:
        result = run_recipe(recipe, args.out, on_progress=bars)
    finally:
        bars.close()
    m = result.metrics
    lines = [f"checkpoint: {result.checkpoint_dir}", f"metrics:    {args.out / 'metrics.json'}", ""]
    for key in ("perplexity", "baseline_perplexity", "top1_agreement", "kl_to_baseline", "params_total",
                "baseline_params_total", "params_active", "baseline_params_active", "prefill_speedup",
                "decode_speedup"):
        if m.get(key) is not None:
            v = m[key]
            lines.append(f"{key:<24}{v:,.4f}" if isinstance(v, float) else f"{key:<24}{v:,}")
    lines.append("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in m.get("timings", {}).items()))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
