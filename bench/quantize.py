"""Quantization benchmark: held-out perplexity, lm-eval accuracy and checkpoint bytes of the demo model, slimmed
and / or weight-only quantized.

Rows:
    original                      the shipped bf16 demo checkpoint
    slim                          expert_keep_ratio 0.5, one stage, S distillation steps (bench/quality.py's (d)),
                                  through `compressor.pipeline.run_recipe`, exported in bf16
    slim + W8A16 / slim + FP8     that checkpoint quantized by `compressor.quantize.quantize_checkpoint` (what the
                                  recipe's `quantize` stage runs), reloaded by stock `from_pretrained`
    W8A16 / FP8 only              the original checkpoint quantized the same way
    W4A16 (with or without slim)  not available here: the reason is the recipe validator's message

Every model is evaluated by `compressor.evaluate.evaluate` against the original in memory on the same held-out
windows (perplexity, top-1 agreement, KL) and on the shipped lm-eval tasks (first N examples); quantized models
run transformers' eager experts implementation in bf16, the others in float32.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.quantize            # about 21 min on 1 thread of a busy 2-core machine
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.quantize --quick    # smoke run, about 1 min
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import log, parse_args, setup_threads, start, table, write_result
from compressor.evaluate import evaluate
from compressor.evaluate.local_tasks import LOCAL_TASKS
from compressor.pipeline import run_recipe
from compressor.quantize import load_quantized, quantize_checkpoint
from compressor.recipe import EvaluateConfig, LmEvalConfig, QuantizeConfig, Recipe, RecipeError
from compressor.sources import load_model

SCHEMES = ("W8A16", "FP8")


def _extra(p):
    p.add_argument("--steps", type=int, default=150, help="distillation steps of the slim row (default 150)")
    p.add_argument("--limit", type=int, default=200, help="lm-eval examples per task (default 200)")


def slim_recipe(steps: int, quick: bool) -> Recipe:
    return Recipe.parse({"model": "demo", "slimming": {"expert_keep_ratio": 0.5}, "stages": 1,
                         "calibration": {"tokens": 2048 if quick else 32768},
                         "distill": {"steps": steps}, "evaluate": {"speed": False, "tokens": 2048 if quick else 16384}})


def row(name: str, model, ckpt: Path, original, tokenizer, cfg: EvaluateConfig) -> list:
    log(f"evaluating {name}")
    rep = evaluate(model, original, tokenizer, cfg, checkpoint_dir=ckpt)
    q, tasks = rep.quality, rep.lm_eval["tasks"]
    return [name, q.perplexity, q.agreement, f"{q.kl_to_baseline:.5f}", *(tasks[t]["model"]["acc"] for t in LOCAL_TASKS),
            rep.size.checkpoint_bytes]


def unavailable(scheme: str) -> str:
    try:
        Recipe.parse({"quantize": {"scheme": scheme}})
    except RecipeError as exc:
        return str(exc).removeprefix("invalid recipe: quantize: ")
    return "available"


def main() -> None:
    args = parse_args("quantize", __doc__, _extra)
    setup_threads(args.threads)
    run = start()
    steps, limit = (5, 20) if args.quick else (args.steps, args.limit)
    cfg = EvaluateConfig(speed=False, tokens=2048 if args.quick else 16384,
                         lm_eval=LmEvalConfig(tasks=list(LOCAL_TASKS), limit=limit, backend="hf"))
    demo = load_model("demo", dtype=torch.float32)
    original, tokenizer = demo.model.eval(), demo.tokenizer
    rows = [row("original (bf16)", original, demo.local_dir, original, tokenizer, cfg)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log(f"slimming to keep 0.5 with {steps} distillation steps")
        run_recipe(slim_recipe(steps, args.quick), tmp / "slim")
        slim_ckpt = tmp / "slim" / "checkpoint"
        slim = load_model(str(slim_ckpt), dtype=torch.float32).model.eval()
        rows.append(row("slim (bf16)", slim, slim_ckpt, original, tokenizer, cfg))
        del slim
        for label, src in (("slim + ", slim_ckpt), ("", Path(demo.local_dir))):
            for scheme in SCHEMES:
                out = tmp / f"{label.strip(' +') or 'orig'}-{scheme}"
                rep = quantize_checkpoint(src, out, QuantizeConfig(scheme=scheme))
                rows.append(row(f"{label}{scheme}" + ("" if label else " only"), load_quantized(out), out, original,
                                tokenizer, cfg))
                log(f"{label}{scheme}: {rep.quantized}, {rep.checkpoint_bytes_after:,} bytes")
    header = ["model", "perplexity", "top-1 agreement", "KL to original", *(f"{t} acc" for t in LOCAL_TASKS),
              "checkpoint bytes"]
    sections = [
        "## Perplexity, lm-eval accuracy and checkpoint bytes",
        table(header, rows),
        f"Held-out text: {cfg.tokens:,} tokens in windows of {cfg.seq_len}; lm-eval: first {limit} examples of each "
        f"shipped task, 0-shot, hf backend; slim = expert keep ratio 0.5, one stage, {steps} distillation steps. "
        "Quantized: every decoder nn.Linear and the fused expert tensors (torchao, per-row scales); embeddings, "
        "LM head, routers and norms stay bf16, which is why the bytes do not halve.",
        "## Not available here",
        table(["scheme", "why"], [["W4A16 (slim + W4A16, W4A16 only)", unavailable("W4A16")]]),
    ]
    write_result(args, "Quantization on the demo model", sections, run)


if __name__ == "__main__":
    main()
