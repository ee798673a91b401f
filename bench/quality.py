"""Quality benchmark: the demo model at 50% of its expert parameters, five ways, plus Wanda sparsity allocations.

Rows (every one is a `Recipe` run end to end through `compressor.pipeline.run_recipe`, so the figures are what a
user gets, exported bf16 weights included; all share the same calibration batches, distillation batches and
held-out windows, because those depend only on the recipe's data settings and seed, which are equal):

    (a) drop 4 of 8 experts per layer by routing frequency           experts_keep=4, expert_score=frequency
    (b) drop 4 of 8 experts per layer by REAP                        experts_keep=4, expert_score=reap
    (c) one-shot neuron slimming to half the expert width (Taylor)   expert_keep_ratio=0.5, stages=1, no distillation
    (d) (c) + distillation from the original                         stages=1, distill.steps=S
    (e) multi-stage: 3 stages (widths 304, 240, 192) + distillation  stages=3, distill.steps=S (S/3 per stage)
    Wanda unstructured sparsity 50/60/70% with uniform, OWL and DLP allocation (no distillation)

Target (issue 3): (e) within 10% of the original perplexity and better than every baseline (a)-(d).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.quality            # about 20-25 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.quality --quick    # smoke run, about 3 min
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import (fmt, log, parse_args, setup_threads, start, table,
                          write_result)

TARGET_PPL_MARGIN = 0.10
SPARSITIES = (0.5, 0.6, 0.7)
ALLOCATIONS = ("uniform", "owl", "dlp")


def _extra(p):
    p.add_argument("--steps", type=int, default=None,
                   help="total distillation steps of rows (d) and (e) (default 150; 6 with --quick)")
    p.add_argument("--rows", default=None, help="comma-separated row keys to run (a,b,c,d,e,w); default all")
    p.add_argument("--seed", type=int, default=0, help="recipe seed: calibration and distillation data, init")


def rows(steps: int, quick: bool) -> list[tuple[str, str, dict]]:
    """(key, label, recipe overrides) of every row, in table order."""
    half = {"expert_keep_ratio": 0.5, "neuron_score": "taylor"}
    out = [
        ("a", "(a) drop 4/8 experts by frequency", {"slimming": {"experts_keep": 4, "expert_score": "frequency"}}),
        ("b", "(b) drop 4/8 experts by REAP", {"slimming": {"experts_keep": 4, "expert_score": "reap"}}),
        ("c", "(c) one-shot neuron slimming (keep 0.5), no distillation", {"slimming": half}),
        ("d", f"(d) one-shot slimming + distillation ({steps} steps)",
         {"slimming": half, "distill": {"steps": steps}}),
        ("e", f"(e) 3-stage slimming + distillation ({steps} steps in all)",
         {"slimming": half, "stages": 3, "distill": {"steps": steps}}),
    ]
    for s in (SPARSITIES[:1] if quick else SPARSITIES):
        for a in ALLOCATIONS:
            out.append(("w", f"Wanda {int(s * 100)}% {a}", {"slimming": {"sparsity": s, "sparsity_allocation": a}}))
    return out


def recipe_for(overrides: dict, quick: bool, seed: int = 0):
    from compressor.recipe import Recipe
    data = {"model": "demo", "stages": 1, "seed": seed,
            "distill": {"steps": 0},
            "evaluate": {"perplexity": True, "speed": False}}
    if quick:
        data["calibration"] = {"tokens": 2048, "seq_len": 256}
        data["evaluate"].update(tokens=2048, seq_len=256)
    for key, val in overrides.items():
        data[key] = {**data.get(key, {}), **val} if isinstance(val, dict) else val
    return Recipe.parse(data)


def _progress(label: str):
    last = {"stage": None, "t": 0.0}

    def on_progress(ev):
        now = time.perf_counter()
        if ev.stage != last["stage"] or now - last["t"] > 30:
            log(f"  {label}: {ev.stage} {ev.message}")
            last.update(stage=ev.stage, t=now)
    return on_progress


def run_row(label: str, recipe, work: Path) -> dict:
    from compressor.pipeline import run_recipe
    out = work / f"run-{abs(hash(label)) % 10 ** 8}"
    t0 = time.perf_counter()
    res = run_recipe(recipe, out, on_progress=_progress(label))
    m = res.metrics
    row = {"label": label, "perplexity": m["perplexity"], "agreement": m.get("top1_agreement"),
           "kl": m.get("kl_to_baseline"), "params_total": m["params_total"], "params_active": m["params_active"],
           "baseline_perplexity": m["baseline_perplexity"], "baseline_total": m["baseline_params_total"],
           "baseline_active": m["baseline_params_active"], "seconds": time.perf_counter() - t0,
           "timings": m["timings"], "stages": res.stages}
    shutil.rmtree(out, ignore_errors=True)
    log(f"{label}: ppl {row['perplexity']:.2f}  agreement {row['agreement']:.3f}  "
        f"active {row['params_active']:,}  ({row['seconds']:.0f} s)")
    return row


def _main_table(results: dict, base: dict) -> str:
    ppl0 = base["baseline_perplexity"]
    body = [["original (bf16 weights, computed in fp32)", ppl0, "1.000", 1.0, 0.0, base["baseline_total"],
             base["baseline_active"], "-"]]
    for key in "abcde":
        if key not in results:
            continue
        r = results[key]
        body.append([r["label"], r["perplexity"], f"{r['perplexity'] / ppl0:.3f}", r["agreement"], r["kl"],
                     r["params_total"], r["params_active"], f"{r['seconds']:.0f}"])
    return table(["row", "held-out ppl", "ppl / original", "top-1 agreement", "KL to original (nats/tok)",
                  "params total", "params active / token", "wall s"], body)


def _stage_table(r: dict) -> str:
    body = []
    for st in r["stages"]:
        dist = st.get("distill") or {}
        body.append([st["stage"], st["target"].get("width"), st.get("perplexity"), st.get("top1_agreement"),
                     dist.get("steps", 0), dist.get("first_loss"), dist.get("last_loss"),
                     f"{sum(st.get('seconds', {}).values()):.0f}"])
    return table(["stage", "expert width", "ppl after stage", "agreement", "distil steps", "first loss",
                  "last loss", "stage s"], body)


def _wanda_table(results: list[dict], ppl0: float) -> str:
    by = {(r["sparsity"], r["allocation"]): r for r in results}
    sps = sorted({k[0] for k in by})
    body = []
    for s in sps:
        cells = [by.get((s, a)) for a in ALLOCATIONS]
        ppls = [c["perplexity"] if c else None for c in cells]
        best = min((p, a) for p, a in zip(ppls, ALLOCATIONS) if p is not None)[1]
        body.append([f"{int(s * 100)}%", *ppls, best])
    return table(["sparsity", *[f"ppl {a}" for a in ALLOCATIONS], "best"], body) + \
        f"\n\nOriginal perplexity {fmt(ppl0)}; sparsity applies to every linear map of the decoder layers " \
        "(attention and experts; embeddings, router and lm_head stay dense)."


def verdict(results: dict, ppl0: float) -> str:
    if "e" not in results:
        return "Row (e) was not run; no verdict."
    e = results["e"]["perplexity"]
    over = e / ppl0 - 1
    within = over <= TARGET_PPL_MARGIN
    others = {k: results[k]["perplexity"] for k in "abcd" if k in results}
    best_k = min(others, key=others.get) if others else None
    beats = all(e < p for p in others.values())
    lines = [f"- (e) perplexity {e:.2f} is {over:+.1%} from the original {ppl0:.2f} (target: at most "
             f"{TARGET_PPL_MARGIN:+.0%}, i.e. <= {ppl0 * (1 + TARGET_PPL_MARGIN):.2f}): "
             f"**{'met' if within else f'missed by {over - TARGET_PPL_MARGIN:.1%} of the original perplexity'}**."]
    if others:
        gap = (e / others[best_k] - 1)
        lines.append(f"- (e) against the best baseline, {results[best_k]['label']} at {others[best_k]:.2f}: "
                     f"{gap:+.1%} -> **{'beats every baseline' if beats else 'does not beat every baseline'}**.")
    return "\n".join(lines)


def main() -> None:
    args = parse_args("quality", __doc__, _extra)
    setup_threads(args.threads)
    steps = args.steps if args.steps is not None else (6 if args.quick else 150)
    wanted = set(args.rows.split(",")) if args.rows else set("abcdew")
    run = start()
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    os.environ["MOE_STUDIO_CACHE"] = str(work / "cache")      # fresh score cache, shared by the rows of this run
    results, wanda = {}, []
    try:
        for key, label, over in rows(steps, args.quick):
            if key not in wanted:
                continue
            log(f"row {label}")
            r = run_row(label, recipe_for(over, args.quick, args.seed), work)
            if key == "w":
                r.update(sparsity=over["slimming"]["sparsity"], allocation=over["slimming"]["sparsity_allocation"])
                wanda.append(r)
            else:
                results[key] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = next(iter(results.values()), None) or wanda[0]
    ppl0 = base["baseline_perplexity"]
    rec = recipe_for({}, args.quick, args.seed)
    sections = [
        "## Setup\n"
        f"- Demo model (Qwen3-MoE, 4 layers, 8 experts, top-2, expert width 384), loaded in float32.\n"
        f"- Calibration: {rec.calibration.tokens:,} tokens ({rec.calibration.seq_len}-token windows of the train "
        f"split, seed {rec.seed}); held-out evaluation: {rec.evaluate.tokens // rec.evaluate.seq_len} windows of "
        f"{rec.evaluate.seq_len} tokens spread over the test split. The same for every row.\n"
        f"- Distillation budget: **{steps} optimizer steps in total** for (d) and (e) (batch "
        f"{rec.distill.batch_size} x {rec.distill.seq_len} tokens = {steps * rec.distill.batch_size * rec.distill.seq_len:,}"
        f" tokens), forward KL at T={rec.distill.temperature}, lr {rec.distill.lr}, {rec.distill.warmup_steps} "
        "warm-up steps then cosine (per stage), teacher = the original model. (e) spends "
        f"{steps // 3}-{-(-steps // 3)} steps per stage. Chosen to keep the whole benchmark near 20-25 min on this "
        "shared 2-core machine; the recipe default is 300.\n"
        "- Every row is one `run_recipe` call; its figures are measured on the exported bf16 checkpoint weights.",
        "## 50% of expert parameters\n" + _main_table(results, base),
    ]
    if "e" in results:
        sections.append("### Stages of (e)\n" + _stage_table(results["e"]))
    sections.append("## Target\n" + verdict(results, ppl0))
    if wanda:
        sections.append("## Wanda sparsity (perplexity, no distillation)\n" + _wanda_table(wanda, ppl0))
    write_result(args, "Quality: the demo model at 50% of expert parameters", sections, run)


if __name__ == "__main__":
    main()
