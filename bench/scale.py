"""Scale benchmark (issue "real-size models"): a synthetic checkpoint with the layer shapes of Qwen3-30B-A3B
(hidden 2048, 128 experts, top-8, expert width 768, 32 query / 4 KV heads of 128, vocab 151,936; bf16), written shard
by shard without ever being in memory, then scored, slimmed and evaluated layer by layer, at several depths.

Per depth (`--sizes`, default 2,8,24 of the real model's 48 layers; 24 layers are about 30 GB, more than this
machine's memory), every phase runs in a child process of its own (`bench.scale_phase`), so each phase's peak
resident memory is its own:
  write    the synthetic checkpoint (bf16, one shard per layer)
  idle     the same interpreter with the project imported and the model's meta-device skeleton built
  forward  a plain streamed forward of the calibration tokens (load, run, free each layer; no hooks)
  analyze  `stream_analyze` with expert and neuron scores (REAP, frequency, activation; no Taylor), the experts
           computed once by the scoring experts implementation (compressor.importance.recording)
  analyze_hooks  the same with MOE_STUDIO_SCORING_EXPERTS=hooks: a hook recomputes every routed expert (the
           implementation before the scoring experts), for the side-by-side ratio
  slim     `stream_slim` with expert_keep_ratio 0.5 (activation scores) and experts_keep 96 (REAP)
  eval     `stream_quality` of the slimmed model against the original on held-out windows (both swept)
Reported: peak resident memory above idle as a multiple of one decoder layer (goal: at most 3x one layer plus the
activations), scoring tokens/s against the plain streamed forward of the same run (goal >= 0.7x), wall time per
layer (goal: linear in depth), disk written. Token ids are random (the synthetic model has no tokenizer).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.scale                      # 2, 8, 24 layers; ~1 h, 55 GB disk
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.scale --quick              # 1 and 2 layers
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import fmt, log, parse_args, setup_threads, start, table, write_result

PHASES = ("write", "idle", "forward", "analyze", "analyze_hooks", "slim", "eval")


def _extra(p):
    p.add_argument("--sizes", default="2,8,24", help="decoder-layer counts to build (default 2,8,24)")
    p.add_argument("--tokens", type=int, default=2048, help="calibration tokens (default 2048)")
    p.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens for the evaluation")
    p.add_argument("--work", type=Path, default=Path("out/scale"), help="scratch folder (deleted per size)")


def _phase(name: str, folder: Path, args, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.scale_phase", name, str(folder), "--threads", str(args.threads),
           "--tokens", str(args.eval_tokens if name == "eval" else args.tokens)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_size(layers: int, args) -> dict:
    work = args.work / f"L{layers}"
    shutil.rmtree(work, ignore_errors=True)
    ckpt, slim, scores = work / "checkpoint", work / "slim", work / "scores"
    r = {"layers": layers}
    log(f"{layers} layers: writing")
    r["write"] = _phase("write", ckpt, args, layers=layers)
    for name, kw in (("idle", {}), ("forward", {}), ("analyze", {"scores": scores}),
                     ("analyze_hooks", {"scores": work / "scores-hooks"}),
                     ("slim", {"scores": scores, "out": slim}), ("eval", {"out": slim, "batch": 1})):
        log(f"{layers} layers: {name}")
        r[name] = _phase(name, ckpt, args, **kw)
    r["slim_disk"] = sum(p.stat().st_size for p in slim.iterdir() if p.is_file())
    shutil.rmtree(work, ignore_errors=True)
    return r


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def report(results: list[dict], args) -> list[str]:
    rows_mem, rows_speed, rows_wall, rows_out = [], [], [], []
    for r in results:
        L, layer, idle = r["layers"], r["write"]["layer_bytes"], r["idle"]["peak_rss"]
        over = {p: (r[p]["peak_rss"] - idle) / layer for p in ("forward", "analyze", "slim", "eval")}
        rows_mem.append([L, _gb(r["write"]["bytes"]), _gb(layer), _gb(idle)]
                        + [f"{_gb(r[p]['peak_rss'])} ({over[p]:.2f}x)" for p in ("forward", "analyze", "slim",
                                                                                 "eval")])
        fwd_s = sum(r["forward"]["layer_seconds"])
        fwd_all, tok = fwd_s + r["forward"]["head_seconds"], r["forward"]["tokens"]
        for phase, label in (("analyze", "recorded (experts once)"), ("analyze_hooks", "hooks (experts twice)")):
            ana_s = sum(r[phase]["layer_seconds"])
            ana_all = ana_s + r[phase]["head_seconds"]
            rows_speed.append([L, tok, label, fmt(tok / fwd_all, 4), fmt(tok / ana_all, 4),
                               f"{fwd_all / ana_all:.2f}x", f"{fwd_s / ana_s:.2f}x"])
        rows_wall.append([L, fmt(r["write"]["seconds"]), fmt(fwd_s / L), fmt(r["analyze"]["loop_seconds"] / L),
                          fmt(sum(r["slim"]["layer_seconds"]) / L), fmt(r["eval"]["seconds"] / L),
                          fmt(sum(r[p]["seconds"] for p in ("forward", "analyze", "slim", "eval")))])
        rows_out.append([L, f"{r['slim']['params_before']:,} -> {r['slim']['params_after']:,}",
                         f"{r['slim']['active_before']:,} -> {r['slim']['active_after']:,}", _gb(r["slim_disk"]),
                         fmt(r["eval"]["agreement"]), fmt(r["eval"]["kl"])])
    total = [r["layers"] for r in results]
    walls = [sum(r[p]["seconds"] for p in ("forward", "analyze", "slim", "eval")) for r in results]
    growth = ", ".join(f"{b / a:.2f}x time for {lb / la:.1f}x layers" for (la, a), (lb, b)
                       in zip(zip(total, walls), list(zip(total, walls))[1:]))
    return [
        "## Peak resident memory (GB; in brackets: above the idle interpreter, in decoder layers)\n\n" + table(
            ["layers", "checkpoint GB", "one layer GB", "idle GB", "forward", "analyze", "slim", "eval"], rows_mem),
        "## Scoring throughput against a plain streamed forward (same run, same tokens; loading included)\n\n" + table(
            ["layers", "tokens", "scoring", "forward tok/s", "analyze tok/s", "ratio", "ratio, decoder layers only"],
            rows_speed) + "\n\nEvery pass loads every layer from disk and ends in norm + lm_head over every token "
            "(the in-memory analyze runs the whole model's forward, head included); the last column leaves the head "
            "out, so it shows what scoring costs inside the layers. 'recorded' is the scoring experts implementation "
            "(compressor.importance.recording: the routed experts computed once, their statistics recorded on the "
            "way); 'hooks' is the same run with MOE_STUDIO_SCORING_EXPERTS=hooks (the layer's own experts forward, "
            "then a hook recomputing every routed expert), measured in the same run on the same checkpoint.",
        "## Wall time (s); per layer for each phase\n\n" + table(
            ["layers", "write (whole)", "forward / layer", "analyze / layer", "slim / layer", "eval / layer",
             "all four phases"], rows_wall) + f"\n\nGrowth with depth: {growth}.",
        "## What was written\n\n" + table(
            ["layers", "params total", "params active", "slimmed checkpoint GB", "top-1 agreement", "KL (nats)"],
            rows_out),
    ]


def main() -> int:
    args = parse_args("scale", __doc__, _extra)
    setup_threads(args.threads)
    if args.quick:
        args.sizes, args.tokens, args.eval_tokens = "1,2", 512, 512
    run = start()
    results = [run_size(int(n), args) for n in args.sizes.split(",")]
    (args.work / "scale.json").parent.mkdir(parents=True, exist_ok=True)
    (args.work / "scale.json").write_text(json.dumps(results, indent=2))
    write_result(args, "Layer-by-layer scale benchmark", report(results, args), run)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
