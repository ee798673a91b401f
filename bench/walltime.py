"""Wall-time benchmark: the default recipe (model demo) end to end, split by phase.

Which recipe (`--recipe`): `issue` (the default) is the example recipe of issue 3, i.e. `Recipe()` with
`slimming.expert_keep_ratio: 0.5` (3 stages, 300 distillation steps, calibration 32k tokens, evaluation with speed);
`bare` is `Recipe()` exactly, whose slimming defaults to expert_keep_ratio 1.0 (no cut: it only distils the model
into itself), kept for reference.

One `run_recipe(recipe, out)` call with a fresh, empty score cache (so calibration is really run). The split is
taken two ways, which should agree:
  - progress events: a segment starts at the first event of a stage ("load", "calibrate", "slim", "distill",
    "evaluate", "speed", "export", ...) and ends at the first event of the next stage; segments of the same stage
    are summed. Events are sent as work proceeds (some after a step), so a boundary can shift by one step.
  - the pipeline's own per-phase timers (`PipelineResult.timings`), which wrap each phase exactly.
Target (issue 3): under 10 minutes on this 2-core machine.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.walltime            # the default recipe, ~10 min
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.walltime --quick    # 6 distillation steps, ~1 min
"""
from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import (fmt, log, parse_args, setup_threads, start,
                          table, write_result)

TARGET_S = 600.0


class EventClock:
    """Records (seconds since start, stage, message) of every progress event and splits wall time by stage."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.events: list[tuple[float, str, str]] = []
        self._last_log = ("", 0.0)

    def __call__(self, ev) -> None:
        now = time.perf_counter() - self.t0
        self.events.append((now, ev.stage, ev.message))
        if ev.stage != self._last_log[0] or now - self._last_log[1] > 30:
            log(f"  {ev.stage}: {ev.message} ({ev.fraction:.0%})")
            self._last_log = (ev.stage, now)

    def segments(self, end: float) -> list[tuple[str, float, float]]:
        """(stage, start, end) of every run of consecutive events with the same stage; the first segment starts at
        0 (work before the first event is the first stage's), the last ends at `end`."""
        segs: list[list] = []
        for t, stage, _ in self.events:
            if not segs or segs[-1][0] != stage:
                if segs:
                    segs[-1][2] = t
                segs.append([stage, t if segs else 0.0, end])
        return [tuple(s) for s in segs]


def _extra(p):
    p.add_argument("--recipe", choices=("issue", "bare"), default="issue",
                   help="issue: Recipe() with expert_keep_ratio 0.5 (default); bare: Recipe() as is")


def recipe_for(which: str, quick: bool):
    from compressor.recipe import Recipe
    data = {"slimming": {"expert_keep_ratio": 0.5}} if which == "issue" else {}
    if quick:
        data.update({"calibration": {"tokens": 2048}, "distill": {"steps": 6}, "evaluate": {"tokens": 2048}})
    return Recipe.parse(data)


def _by_stage(segs) -> list[list]:
    totals: dict[str, list] = {}
    for stage, a, b in segs:
        row = totals.setdefault(stage, [0.0, 0])
        row[0] += b - a
        row[1] += 1
    total = sum(v[0] for v in totals.values())
    return [[k, v[0], f"{v[0] / total:.0%}", v[1]] for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0])]


def main() -> None:
    args = parse_args("walltime", __doc__, _extra)
    if args.recipe != "issue" and args.out.name.startswith("walltime"):
        args.out = args.out.with_name(args.out.name.replace("walltime", f"walltime-{args.recipe}"))
    setup_threads(args.threads)
    recipe = recipe_for(args.recipe, args.quick)
    run = start()
    work = Path(tempfile.mkdtemp(prefix="bench-walltime-"))
    os.environ["MOE_STUDIO_CACHE"] = str(work / "cache")        # fresh score cache: calibration really runs
    from compressor.pipeline import run_recipe
    clock = EventClock()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        t0 = time.perf_counter()
        res = run_recipe(recipe, work / "out", on_progress=clock)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    load_end = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    m = res.metrics
    ok = wall < TARGET_S
    verdict = (f"- End to end **{wall:.0f} s = {wall / 60:.1f} min** (target < {TARGET_S / 60:.0f} min): "
               f"**{'met' if ok else f'missed by {wall - TARGET_S:.0f} s ({wall / TARGET_S - 1:+.0%})'}**.\n"
               f"- Process CPU time {cpu:.0f} s ({cpu / wall:.2f} cores busy on average of "
               f"{args.threads} threads); load average at the end {load_end} (1/5/15 min).\n"
               f"- Result: perplexity {m['perplexity']:.2f} (original {m['baseline_perplexity']:.2f}), top-1 "
               f"agreement {m['top1_agreement']:.3f}, active parameters {m['params_active']:,} of "
               f"{m['baseline_params_active']:,}, prefill speed-up {fmt(m.get('prefill_speedup'))}x, decode "
               f"speed-up {fmt(m.get('decode_speedup'))}x.")
    segs = clock.segments(end=wall)
    timers = sorted(((k, v) for k, v in res.timings.items() if k != "total"), key=lambda kv: -kv[1])
    stage_rows = [[st["stage"], st["target"].get("width"), (st.get("distill") or {}).get("steps", 0),
                   (st.get("distill") or {}).get("tokens_per_s"), st.get("perplexity"),
                   *[st.get("seconds", {}).get(k, 0.0) for k in ("calibrate", "slim", "distill", "stage_evaluate")],
                   sum(st.get("seconds", {}).values())] for st in res.stages]
    what = ("the example recipe of issue 3: `Recipe()` with `slimming.expert_keep_ratio: 0.5`" if args.recipe ==
            "issue" else "`Recipe()` exactly (expert_keep_ratio 1.0: nothing is cut, the model is distilled into "
            "itself)")
    sections = [
        f"## Recipe\nRun: {what}.\n\n```yaml\n" + recipe.to_yaml().strip() + "\n```",
        "## Target\n" + verdict,
        "## Split by progress-event stage\n" + table(["stage", "wall s", "share", "segments"], _by_stage(segs)),
        "## Split by the pipeline's phase timers\n" + table(
            ["phase", "wall s", "share"], [[k, v, f"{v / res.timings['total']:.0%}"] for k, v in timers] +
            [["total (timers)", res.timings["total"], "100%"]]),
        "## Per stage\n" + table(["stage", "expert width", "distil steps", "distil tokens/s", "ppl after stage",
                                  "calibrate s", "slim s", "distill s", "evaluate s", "stage s"], stage_rows),
    ]
    write_result(args, "Wall time of the default recipe", sections, run)


if __name__ == "__main__":
    main()
