"""Distillation beyond one process (issue 26): global KD of the demo at expert keep 0.5 with the live teacher, with the
teacher's top-k log-probs cached on disk (k = 16, 64, 256), and with the student sharded over 2 gloo CPU processes
(FSDP2, `execution.nproc: 2`), each a `Recipe` run end to end through `compressor.pipeline.run_recipe`.

Every row runs in a fresh child process (`--row`), so its peak resident memory is its own: the pipeline process's
(`resource.getrusage(RUSAGE_SELF)`) and, for the sharded rows, each rank's (`RUSAGE_CHILDREN` for the largest, and
the ranks' own figures from the distillation report). The teacher caches live in a private studio cache for the
whole benchmark, so the sharded top-64 row reads the cache the one-process top-64 row built (its teacher pass is 0).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.distill_scale --threads 2        # about 10 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.distill_scale --quick            # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS_DIR, log, parse_args, setup_threads, start, table, write_result

ROWS = (("live teacher", 0, 1), ("top-16 cache", 16, 1), ("top-64 cache", 64, 1), ("top-256 cache", 256, 1),
        ("live teacher, 2 processes", 0, 2), ("top-64 cache, 2 processes", 64, 2))


def _extra(p):
    p.add_argument("--steps", type=int, default=30, help="distillation steps per row (default 30)")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)      # one row, in a child process: its JSON


def recipe_for(k: int, nproc: int, *, steps: int, quick: bool):
    from compressor.recipe import Recipe
    data = {"model": "demo", "stages": 1, "seed": 0, "slimming": {"expert_keep_ratio": 0.5},
            "distill": {"steps": steps, "cache_teacher_topk": k},
            "evaluate": {"perplexity": True, "speed": False, "tokens": 4096 if quick else 16384},
            "execution": {"device": "cpu", "nproc": nproc}}
    if quick:
        data["calibration"] = {"tokens": 2048, "seq_len": 256}
        data["distill"].update(batch_size=2, seq_len=128)
    return Recipe.parse(data)


def run_row(spec: dict) -> dict:
    """One row in this process (the `--row` child): run the recipe, return its figures."""
    from compressor.pipeline import run_recipe
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recipe = recipe_for(spec["k"], spec["nproc"], steps=spec["steps"], quick=spec["quick"])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = run_recipe(recipe, out)
        seconds = time.perf_counter() - t0
    d, t = res.stages[0]["distill"], res.metrics["timings"]
    cache = res.metrics["execution"]["distill"].get("teacher_cache") or {}
    return {"perplexity": res.metrics["perplexity"], "baseline_perplexity": res.metrics["baseline_perplexity"],
            "seconds": seconds, "distill_s": t.get("distill", 0.0), "teacher_s": t.get("teacher_cache", 0.0),
            "cache_mb": cache.get("bytes", 0) / 2**20, "cache_hit": cache.get("hit"),
            "engine": d["engine"], "nproc": d["nproc"], "last_loss": d["final_loss_mean"],
            "imported_rss_mb": imported, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "rank_rss_mb": d.get("rank_peak_rss_mb", [])}


def spawn_row(spec: dict, cache: Path, threads: int) -> dict:
    env = {**os.environ, "MOE_STUDIO_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "bench.distill_scale", "--threads", str(threads), "--row", json.dumps(spec)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"row {spec} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _body(results: list[tuple[str, dict]]) -> list[list[str]]:
    body = []
    for label, r in results:
        ranks = ", ".join(f"{m:.0f}" for m in r["rank_rss_mb"]) or "-"
        body.append([label, r["engine"], str(r["nproc"]), f"{r['perplexity']:.2f}", f"{r['last_loss']:.4f}",
                     f"{r['seconds']:.0f}", f"{r['distill_s']:.0f}",
                     f"{r['teacher_s']:.1f}" + (" (hit)" if r["cache_hit"] else ""),
                     f"{r['cache_mb']:.1f}" if r["cache_mb"] else "-", f"{r['rss_mb']:.0f}", ranks])
    return body


def main() -> int:
    args = parse_args("distill_scale", __doc__, _extra)
    if args.out == RESULTS_DIR / f"distill_scale{'-quick' if args.quick else ''}.md":
        args.out = RESULTS_DIR / f"distill-scale{'-quick' if args.quick else ''}.md"
    setup_threads(args.threads)
    steps = 4 if args.quick else args.steps
    if args.row is not None:
        print(json.dumps(run_row(json.loads(args.row))))
        return 0
    run = start()
    results = []
    with tempfile.TemporaryDirectory() as cache:
        for label, k, nproc in ROWS:
            r = spawn_row({"k": k, "nproc": nproc, "steps": steps, "quick": args.quick}, Path(cache), args.threads)
            results.append((label, r))
            log(f"{label}: ppl {r['perplexity']:.2f}, {r['seconds']:.0f} s, rss {r['rss_mb']:.0f} MB "
                f"ranks {r['rank_rss_mb']}")
    base = results[0][1]["baseline_perplexity"]
    head = ["teacher", "engine", "processes", "perplexity", "final loss", "run s", "distil s", "teacher pass s",
            "cache MB", "peak RSS, pipeline process (MB)", "peak RSS per rank (MB)"]
    sections = [f"## Global distillation of the demo at expert keep 0.5, {steps} steps\n\nOriginal perplexity "
                f"{base:.2f}. Peak RSS is each process's ru_maxrss; the pipeline process holds the original (or its "
                "baseline figures, with a cache) and the student throughout. A process that has imported the "
                f"library and torch alone holds {results[0][1]['imported_rss_mb']:.0f} MB.\n\n"
                + table(head, _body(results))]
    write_result(args, "Distillation at scale: cached teacher and sharded student", sections, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
