"""Enqueue -> first progress: how long a run waits before its job reports anything, with cold and warm workers.

A private studio stack per mode (embedded Redis + one prefork Celery worker with `worker_max_tasks_per_child=1`,
SQLite in a temporary folder, as `python app.py` starts it); each mode enqueues a tiny run of the demo model `--runs`
times, one at a time on an idle worker, and polls the runs table every 10 ms for three moments:
  - claimed: the row turns `running` (the job process took it);
  - first progress: the row has a stage (the pipeline's first progress event, written by the run monitor);
the run is then cancelled and waited for, so the next one meets an idle worker whose pool process has been replaced.

Modes: `cold` is the worker as it was (MOE_STUDIO_WARM_WORKER=0: each forked job process imports torch,
transformers and the pipeline itself); `warm` imports them in the worker parent before it forks
(workers.tasks.warm_imports). The blocks alternate (cold, warm, cold, warm with `--blocks 2`) so that a change in
the machine's load hits both. Goal (issue 15): under 2 s on an idle machine.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.first_progress             # 2 blocks x 5 runs per mode
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.first_progress --quick     # 1 block x 2 runs
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS_DIR, log, parse_args, start, table, write_result

RECIPE = {"model": "demo", "stages": 1, "seed": 0,
          "calibration": {"tokens": 512, "seq_len": 64, "batch_size": 8},
          "slimming": {"expert_keep_ratio": 0.5},
          "distill": {"steps": 2},
          "evaluate": {"perplexity": True, "speed": False, "tokens": 512}}
POLL_S = 0.01
MODES = {"cold": "0", "warm": "1"}


def _extra(p) -> None:
    p.add_argument("--runs", type=int, default=5, help="runs per mode and block (default 5)")
    p.add_argument("--blocks", type=int, default=2, help="alternating blocks of cold and warm (default 2)")


def _wait(predicate, timeout: float, what: str):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def measure_block(mode: str, runs: int, home: Path) -> tuple[list[dict], float]:
    """`runs` enqueue -> claim / first-progress timings on a fresh stack in `mode`; and the worker's start time."""
    from storage import db, repo
    from workers.embedded import EmbeddedServices
    from workers.service import enqueue_run

    for key in ("REDIS_URL", "DATABASE_URL"):
        os.environ.pop(key, None)
    os.environ.update(MOE_STUDIO_HOME=str(home), MOE_STUDIO_CACHE=str(home / "cache"),
                      MOE_STUDIO_WARM_WORKER=MODES[mode], MOE_STUDIO_PROGRESS_EVERY_S="0.2")
    db.dispose_all()
    t0 = time.perf_counter()
    out = []
    with EmbeddedServices(wait_ready_s=0) as services:
        services.wait_ready(300)
        ready_s = time.perf_counter() - t0
        time.sleep(2.0)                                   # the worker settles (its first pool process is forked)
        for i in range(runs):
            t_enqueue = time.perf_counter()
            run_id = enqueue_run(RECIPE, name=f"{mode} {i}")
            _wait(lambda: repo.get_run(run_id).status != "queued", 300, "the claim")
            claimed = time.perf_counter() - t_enqueue
            _wait(lambda: repo.get_run(run_id).stage or repo.get_run(run_id).is_finished, 300, "first progress")
            first = time.perf_counter() - t_enqueue
            repo.request_cancel(run_id)
            _wait(lambda: repo.get_run(run_id).is_finished, 300, "the end of the run")
            out.append({"claimed": claimed, "first": first})
            log(f"{mode} run {i}: claimed after {claimed:.2f} s, first progress after {first:.2f} s")
            time.sleep(1.0)                               # the pool process is replaced (PromptRecycle, 0.25 s)
    db.dispose_all()
    return out, ready_s


def main(argv=None) -> None:
    args = parse_args("first_progress", __doc__, _extra)
    if args.out is None:
        args.out = RESULTS_DIR / ("first_progress-quick.md" if args.quick else "first_progress.md")
    runs, blocks = (2, 1) if args.quick else (args.runs, args.blocks)
    run = start()
    samples: dict[str, list[dict]] = {m: [] for m in MODES}
    ready: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-first-progress-") as tmp:
        for block in range(blocks):
            for mode in MODES:
                got, ready_s = measure_block(mode, runs, Path(tmp) / f"{mode}-{block}")
                samples[mode] += got
                ready[mode].append(ready_s)
    rows = []
    for mode in MODES:
        first = [s["first"] for s in samples[mode]]
        claimed = [s["claimed"] for s in samples[mode]]
        rows.append([mode, len(first), f"{statistics.median(first):.2f}", f"{min(first):.2f} – {max(first):.2f}",
                     f"{statistics.median(claimed):.2f}", f"{statistics.median(ready[mode]):.1f}"])
    each = table(["mode", "block and run", "claimed (s)", "first progress (s)"],
                 [[m, f"{i // runs + 1}.{i % runs + 1}", f"{s['claimed']:.2f}", f"{s['first']:.2f}"]
                  for m in MODES for i, s in enumerate(samples[m])])
    summary = table(["mode", "runs", "enqueue -> first progress, median (s)", "range (s)",
                     "enqueue -> claimed, median (s)", "worker start to ready (s)"], rows)
    write_result(args, "Enqueue to first progress: cold and warm workers", [
        "## Summary", summary,
        "cold = MOE_STUDIO_WARM_WORKER=0 (each job process imports torch, transformers and the pipeline); warm = "
        "the worker parent imported them before forking (workers.tasks.warm_imports). The worker takes longer to "
        "become ready when warm: it pays the imports once, at its start, instead of once per job.",
        "## Every run", each], run)


if __name__ == "__main__":
    main()
