"""Merging benchmark: expert pruning (REAP) against expert merging (REAM, HC-SMoE, M-SMoE) at equal expert counts.

Rows, for N = 6 and N = 4 of the demo's 8 experts per layer (75% and 50%), each a `Recipe` run end to end through
`compressor.pipeline.run_recipe` (exported bf16 weights, held-out windows of the shipped corpus, the shipped lm-eval
task sotu_cloze), one-shot and with global distillation from the original:

    prune REAP      slimming.experts_keep = N, expert_score = reap
    REAM            slimming.experts_keep = N, expert_merge = ream,    merge_group_size = C
    HC-SMoE         slimming.experts_keep = N, expert_merge = hc_smoe
    M-SMoE          slimming.experts_keep = N, expert_merge = m_smoe

C = E / N + 1 (3 at N = 4, 2 at N = 6). REAM's default C = 16 is sized for 128 -> 96 experts; on 8 experts it lets
the first centroid take every other expert. The seed moves the calibration and distillation data; one-shot rows run
every seed of --seeds, distilled rows the first --distill-seeds of them.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.merge            # about 45 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.merge --quick    # smoke run, a few minutes
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import log, parse_args, setup_threads, start, table, write_result

METHODS = (("prune REAP", None), ("REAM", "ream"), ("HC-SMoE", "hc_smoe"), ("M-SMoE", "m_smoe"))
EXPERTS = 8
TASK = "sotu_cloze"


def _extra(p):
    p.add_argument("--keeps", default="6,4", help="experts kept per layer (comma-separated; default 6,4)")
    p.add_argument("--seeds", default="0,1,2", help="recipe seeds (default 0,1,2)")
    p.add_argument("--distill-seeds", type=int, default=1, help="how many of the seeds the distilled rows run")
    p.add_argument("--steps", type=int, default=60, help="distillation steps of the distilled rows (default 60)")
    p.add_argument("--limit", type=int, default=200, help=f"{TASK} examples per run (default 200)")


def recipe_for(keep: int, merge: str | None, *, steps: int, seed: int, quick: bool, limit: int):
    from compressor.recipe import Recipe
    slimming = {"experts_keep": keep, "expert_score": "reap"}
    if merge:
        slimming.update(expert_merge=merge, merge_group_size=EXPERTS // keep + 1)
    data = {"model": "demo", "stages": 1, "seed": seed, "slimming": slimming, "distill": {"steps": steps},
            "evaluate": {"perplexity": True, "speed": False,
                         "lm_eval": {"tasks": [TASK], "limit": 20 if quick else limit}}}
    if quick:
        data["calibration"] = {"tokens": 2048, "seq_len": 256}
        data["evaluate"].update(tokens=2048, seq_len=256)
    return Recipe.parse(data)


def run_row(recipe, work: Path) -> dict:
    from compressor.pipeline import run_recipe
    out = Path(tempfile.mkdtemp(dir=work))
    t0 = time.perf_counter()
    res = run_recipe(recipe, out)
    r = res.result
    row = {"perplexity": r.final.perplexity, "baseline_perplexity": r.baseline.perplexity,
           "acc": r.final.lm_eval.get(TASK), "baseline_acc": r.baseline.lm_eval.get(TASK),
           "params_total": res.metrics["params_total"], "baseline_total": res.metrics["baseline_params_total"],
           "seconds": time.perf_counter() - t0}
    shutil.rmtree(out, ignore_errors=True)
    return row


def _stats(vals: list[float]) -> str:
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.3f}" if mean < 10 else f"{mean:.2f}"
    sd = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return f"{mean:.3f} ± {sd:.3f}" if mean < 10 else f"{mean:.2f} ± {sd:.2f}"


def main() -> int:
    args = parse_args("merge", __doc__, _extra)
    setup_threads(args.threads)
    run = start()
    keeps = [int(k) for k in args.keeps.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    steps = 4 if args.quick else args.steps
    results: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for keep in keeps:
            for distill, row_seeds in ((0, seeds), (steps, seeds[:args.distill_seeds])):
                for label, merge in METHODS:
                    for seed in row_seeds:
                        rec = recipe_for(keep, merge, steps=distill, seed=seed, quick=args.quick, limit=args.limit)
                        row = run_row(rec, Path(tmp))
                        results.setdefault((keep, distill, label), []).append(row)
                        log(f"keep {keep} {label} distill {distill} seed {seed}: ppl {row['perplexity']:.2f} "
                            f"acc {row['acc']} ({row['seconds']:.0f} s)")
    first = next(iter(results.values()))[0]
    body = [["original", f"{EXPERTS} / {EXPERTS}", "-", _stats([first["baseline_perplexity"]]),
             _stats([first["baseline_acc"]]), f"{first['baseline_total']:,}", "-", "-"]]
    for (keep, distill, label), runs in results.items():
        body.append([label, f"{keep} / {EXPERTS}", f"{distill} steps" if distill else "one-shot",
                     _stats([r["perplexity"] for r in runs]), _stats([r["acc"] for r in runs if r["acc"] is not None]),
                     f"{runs[0]['params_total']:,}", str(len(runs)), f"{sum(r['seconds'] for r in runs) / len(runs):.0f}"])
    sections = ["## Pruning against merging on the demo\n\nHeld-out perplexity and sotu_cloze accuracy, mean ± sd "
                "over seeds.\n\n" + table(["method", "experts kept", "recovery", "perplexity", f"{TASK} acc",
                                          "params total", "seeds", "wall s / run"], body)]
    write_result(args, "Expert merging against pruning", sections, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
