"""Quantization benchmark: RTN against GPTQ on the demo model, in the compressed-tensors format vLLM serves.

Rows (each a checkpoint written by `compressor.quantize.quantize_to_compressed`, the recipe's quantize stage, and
reloaded by stock `from_pretrained`; GPTQ and RTN share the recipe's calibration batches
`compressor.data.calibration_for(tokenizer, CalibrationConfig(), seed=0)`: 32,768 tokens in windows of 256):

    original                         the shipped bf16 demo checkpoint
    RTN / GPTQ W4A16                 int4 symmetric, group 128, every decoder nn.Linear and every expert
    RTN / GPTQ W8A16                 int8 symmetric per channel, the same weights
    GPTQ experts W4A16 / attention W8A16   mixed precision by module class
    W8A16 torchao (RTN)              the format of recipes before version 4, for reference
    slim                             expert_keep_ratio 0.5, one stage, S distillation steps (bench/quality.py's (d)),
                                     through `compressor.pipeline.run_recipe`, exported in bf16
    slim + GPTQ W4A16 (group 64)     that checkpoint through the same quantize stage; its expert width 192 is not a
                                     multiple of 128, so the groups are 64 columns

Every model is evaluated by `compressor.evaluate.evaluate` against the original in memory on the same held-out
windows (perplexity, top-1 agreement, KL) and on the shipped lm-eval tasks (first N examples, hf backend). The
compressed-tensors checkpoints are dequantized to float32 by transformers on load, so every row computes in float32
on the weights as stored.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.quantize --threads 1     # about 25 min on a busy 2-core machine
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.quantize --quick         # smoke run, about 3 min
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import log, parse_args, setup_threads, start, table, write_result
from compressor.data import calibration_for
from compressor.evaluate import evaluate
from compressor.evaluate.local_tasks import LOCAL_TASKS
from compressor.pipeline import run_recipe
from compressor.quantize import load_quantized, quantize_checkpoint, quantize_to_compressed
from compressor.recipe import CalibrationConfig, EvaluateConfig, LmEvalConfig, QuantizeConfig, Recipe
from compressor.sources import load_model

ROWS = (  # label, QuantizeConfig fields
    ("RTN W4A16", {"scheme": "W4A16", "method": "rtn"}),
    ("GPTQ W4A16", {"scheme": "W4A16", "method": "gptq"}),
    ("RTN W8A16", {"scheme": "W8A16", "method": "rtn"}),
    ("GPTQ W8A16", {"scheme": "W8A16", "method": "gptq"}),
    ("GPTQ experts W4A16 / attention W8A16", {"scheme": "W4A16", "attention": "W8A16", "method": "gptq"}),
)


def _extra(p):
    p.add_argument("--steps", type=int, default=150, help="distillation steps of the slim row (default 150)")
    p.add_argument("--limit", type=int, default=200, help="lm-eval examples per task (default 200)")


def slim_recipe(steps: int, quick: bool) -> Recipe:
    return Recipe.parse({"model": "demo", "slimming": {"expert_keep_ratio": 0.5}, "stages": 1,
                         "calibration": {"tokens": 2048 if quick else 32768},
                         "distill": {"steps": steps}, "evaluate": {"speed": False, "tokens": 2048 if quick else 16384}})


def row(name: str, model, ckpt: Path, original, tokenizer, cfg: EvaluateConfig, extra: str = "") -> list:
    log(f"evaluating {name}")
    rep = evaluate(model, original, tokenizer, cfg, checkpoint_dir=ckpt)
    q, tasks = rep.quality, rep.lm_eval["tasks"]
    return [name, q.perplexity, q.agreement, f"{q.kl_to_baseline:.5f}", *(tasks[t]["model"]["acc"] for t in LOCAL_TASKS),
            rep.size.checkpoint_bytes, extra]


def quantized_row(label: str, fields: dict, src: Path, calib, tokenizer, original, cfg, out: Path) -> list:
    """Quantize the float32 copy of checkpoint `src` by `fields`, save, reload, evaluate."""
    model = load_model(str(src), dtype=torch.float32).model.eval()
    qcfg = QuantizeConfig(**fields)
    log(f"quantizing: {label}")
    reloaded, rep = quantize_to_compressed(model, calib, qcfg, out, dtype=torch.bfloat16, tokenizer=tokenizer,
                                           unquantized=src)
    d = rep.details
    extra = f"{d['gptq_matrices']} GPTQ / {d['rtn_matrices']} RTN matrices, {rep.seconds:.0f} s"
    if d["experts_rtn_fallback"]:
        extra += f"; {len(d['experts_rtn_fallback'])} experts under {qcfg.gptq.min_expert_tokens} tokens -> RTN"
    return row(label, reloaded, out, original, tokenizer, cfg, extra)


def main() -> None:
    args = parse_args("quantize", __doc__, _extra)
    setup_threads(args.threads)
    run = start()
    steps, limit = (5, 20) if args.quick else (args.steps, args.limit)
    cfg = EvaluateConfig(speed=False, tokens=2048 if args.quick else 16384,
                         lm_eval=LmEvalConfig(tasks=list(LOCAL_TASKS), limit=limit, backend="hf"))
    cal = CalibrationConfig(tokens=4096 if args.quick else 32768)
    demo = load_model("demo", dtype=torch.float32)
    original, tokenizer = demo.model.eval(), demo.tokenizer
    calib = calibration_for(tokenizer, cal, seed=0)
    src = Path(demo.local_dir)
    rows = [row("original (bf16)", original, src, original, tokenizer, cfg)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for k, (label, fields) in enumerate(ROWS):
            rows.append(quantized_row(label, fields, src, calib, tokenizer, original, cfg, tmp / f"q{k}"))
        log("torchao W8A16 (round to nearest)")
        quantize_checkpoint(src, tmp / "torchao", QuantizeConfig(scheme="W8A16", method="rtn", format="torchao"))
        rows.append(row("W8A16 torchao (RTN)", load_quantized(tmp / "torchao"), tmp / "torchao", original, tokenizer,
                        cfg, "torchao per-row int8; weights stay int8 in memory"))
        log(f"slimming to keep 0.5 with {steps} distillation steps")
        run_recipe(slim_recipe(steps, args.quick), tmp / "slim")
        slim_ckpt = tmp / "slim" / "checkpoint"
        slim = load_model(str(slim_ckpt), dtype=torch.float32).model.eval()
        rows.append(row("slim (bf16)", slim, slim_ckpt, original, tokenizer, cfg))
        del slim
        rows.append(quantized_row("slim + GPTQ W4A16 (group 64)", {"scheme": "W4A16", "method": "gptq",
                                                                  "group_size": 64}, slim_ckpt, calib,
                                  tokenizer, original, cfg, tmp / "slim-w4"))
    header = ["model", "perplexity", "top-1 agreement", "KL to original", *(f"{t} acc" for t in LOCAL_TASKS),
              "checkpoint bytes", "notes"]
    by = {r[0]: r for r in rows}
    verdict = ("GPTQ beats RTN at W4A16" if by["GPTQ W4A16"][1] < by["RTN W4A16"][1]
               else "GPTQ does NOT beat RTN at W4A16")
    sections = [
        "## Perplexity, lm-eval accuracy and checkpoint bytes",
        table(header, rows),
        f"Held-out text: {cfg.tokens:,} tokens in windows of {cfg.seq_len}; lm-eval: first {limit} examples of each "
        f"shipped task, 0-shot, hf backend; calibration for GPTQ: {cal.tokens:,} tokens in windows of "
        f"{cal.seq_len} (recipe defaults), percdamp 0.01, block 128, no act order, experts under 64 routed tokens "
        f"rounded to nearest; slim = expert keep ratio 0.5, one stage, {steps} distillation steps. Quantized: every "
        "decoder nn.Linear and every routed expert (per-expert keys); embeddings (tied LM head), routers and norms "
        "stay bf16, which is why the bytes do not fall to a quarter. compressed-tensors rows: int weights packed in "
        "int32, bf16 scales.",
        f"**{verdict}**: perplexity {by['GPTQ W4A16'][1]:.2f} against {by['RTN W4A16'][1]:.2f}.",
    ]
    write_result(args, "Quantization on the demo model: RTN and GPTQ, compressed-tensors", sections, run)


if __name__ == "__main__":
    main()
