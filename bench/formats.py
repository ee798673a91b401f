"""Quantized-input benchmark (issue 22): a block-FP8 Qwen3-MoE of a few GB, built here (no hub), inspected, scored
and slimmed layer by layer; peak resident memory of each step's process as a multiple of one dequantized layer.

Build: `bench.scale_phase write` writes a bf16 checkpoint with Qwen3-30B-A3B's layer shapes (hidden 2048, 128
experts, top-8, width 768, vocab 151,936; one shard per layer, never the whole model in memory), then every shard
is rewritten as the hub ships Qwen3-30B-A3B-FP8: per-expert keys (`mlp.experts.N.{gate,up,down}_proj.weight`)
and every 2-D decoder-layer Linear except the router in float8_e4m3fn with 128 x 128 `weight_scale_inv` tiles
(`compressor.formats.synthetic.fp8_quantize`), `quantization_config: {quant_method: fp8, weight_block_size:
[128, 128]}`. Steps, each in a child process of its own (peak RSS = that child's ru_maxrss):
  inspect   `python -m compressor inspect` (headers, meta skeleton, first MoE layer verified)
  idle      the interpreter with the project imported and the skeleton built (`bench.scale_phase idle`)
  analyze   `stream_analyze`: expert and neuron scores, layer by layer, dequantized per layer
  slim      `stream_slim`: expert width 768 -> 384 (activation), 128 -> 96 experts (REAP); bf16 output

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.formats               # 2 layers, ~3 GB FP8
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.formats --layers 3
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import log, parse_args, setup_threads, start, table, write_result

ROOT = Path(__file__).resolve().parents[1]


def _extra(p):
    p.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument("--tokens", type=int, default=1024, help="calibration tokens (default 1024)")
    p.add_argument("--work", type=Path, default=Path("out/formats"), help="scratch folder (deleted at the end)")


def _child(cmd: list[str]) -> tuple[str, int]:
    """(stdout, peak RSS bytes) of a child process, measured by /usr/bin/time -f %M."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{done.stderr[-3000:]}")
    rss = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("MAXRSS"))
    return done.stdout, rss * 1024


def _phase(name: str, folder: Path, args, **kw) -> tuple[dict, int]:
    cmd = [sys.executable, "-m", "bench.scale_phase", name, str(folder), "--threads", str(args.threads),
           "--tokens", str(args.tokens)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out, rss = _child(cmd)
    return json.loads(out.strip().splitlines()[-1]), rss


def to_hub_fp8_(folder: Path, block=(128, 128)) -> None:
    """Rewrite a fused-expert bf16 checkpoint, one shard at a time, in Qwen3-*-FP8's per-expert block-FP8 layout."""
    import torch
    from safetensors.torch import load_file, save_file

    from compressor.formats.synthetic import _fp8_target, fp8_quantize

    weight_map = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out = {}
        for name, t in load_file(shard).items():
            parts = {name: t}
            if name.endswith("mlp.experts.gate_up_proj"):            # [E, 2I, H] -> gate / up per expert
                base, half = name.removesuffix("gate_up_proj"), t.shape[1] // 2
                parts = {f"{base}{e}.{p}.weight": w for e in range(t.shape[0])
                         for p, w in (("gate_proj", t[e, :half]), ("up_proj", t[e, half:]))}
            elif name.endswith("mlp.experts.down_proj"):              # [E, H, I]
                base = name.removesuffix("down_proj")
                parts = {f"{base}{e}.down_proj.weight": t[e] for e in range(t.shape[0])}
            for k, w in parts.items():
                if _fp8_target(k, w):
                    q, s = fp8_quantize(w, block)
                    out.update({k: q, k + "_scale_inv": s})
                else:
                    out[k] = w.contiguous()
        save_file(out, shard, metadata={"format": "pt"})
        weight_map.update({k: shard.name for k in out})
        del out
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = dict(sorted(weight_map.items()))
    index.write_text(json.dumps(data, indent=2))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                  "weight_block_size": list(block)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def run(args) -> dict:
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    ckpt, slim, scores = work / "checkpoint", work / "slim", work / "scores"
    r: dict = {}
    log(f"{args.layers} layers: writing bf16")
    r["write"], _ = _phase("write", ckpt, args, layers=args.layers)
    r["bf16_bytes"] = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    log("converting to block FP8")
    _, r["convert_rss"] = _child([sys.executable, "-c", f"from pathlib import Path; from bench.formats import "
                                  f"to_hub_fp8_; to_hub_fp8_(Path({str(ckpt)!r}))"])
    log("inspect")
    out, r["inspect_rss"] = _child([sys.executable, "-m", "compressor", "inspect", str(ckpt)])
    r["inspect"] = json.loads(out)
    for name, kw in (("idle", {}), ("analyze", {"scores": scores}), ("slim", {"scores": scores, "out": slim})):
        log(name)
        r[name], r[f"{name}_rss"] = _phase(name, ckpt, args, **kw)
    r["slim_bytes"] = sum(p.stat().st_size for p in slim.glob("*.safetensors"))
    shutil.rmtree(work, ignore_errors=True)
    return r


def report(r: dict, args) -> list[str]:
    gb = lambda n: f"{n / 2**30:.2f}"                                   # noqa: E731
    info, layer = r["inspect"], r["idle"]["layer_bytes"]
    idle = r["idle_rss"]
    rows = [[step, gb(r[f"{step}_rss"]), f"{(r[f'{step}_rss'] - idle) / layer:.2f}x" if step != "idle" else "",
             f"{r[step]['seconds']:.0f}" if "seconds" in r.get(step, {}) else ""]
            for step in ("inspect", "idle", "analyze", "slim")]
    q = info["quantization"]
    return [
        "## The checkpoint\n",
        table(["layers", "format", "bf16 GB", "FP8 on disk GB", "dequantized GB", "one dequantized layer GB"],
              [[args.layers, q["format"] + f" {q['block']}", gb(r["bf16_bytes"]), gb(info["checkpoint_bytes"]),
                gb(info["dequantized_bytes"]), gb(layer)]]),
        "\n## Peak resident memory per step (GB; above the idle interpreter, in dequantized layers)\n",
        table(["step", "peak RSS GB", "above idle", "seconds"], rows),
        f"\nSlimmed (bf16, width 384, 96 experts): {gb(r['slim_bytes'])} GB written; params "
        f"{r['slim']['params_before']:,} -> {r['slim']['params_after']:,}. Converting to FP8 (one shard at a time) "
        f"peaked at {gb(r['convert_rss'])} GB.\n",
    ]


def main() -> int:
    args = parse_args("formats", __doc__, _extra)
    setup_threads(args.threads)
    run_info = start()
    r = run(args)
    path = write_result(args, "Block-FP8 input, layer by layer", report(r, args), run_info)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
