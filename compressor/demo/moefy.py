"""Rebuild the shipped MoEfication parts of `demo-smollm` (neuron partitions and routers) from the GGUF.

    python -m compressor.demo.moefy                      # measure the (E, k) candidates, write the chosen parts
    python -m compressor.demo.moefy --candidates 8x2 --choose 8x2 --out out/parts

Steps (one thread, a few minutes): SmolLM2-135M-Instruct from its GGUF (`smollm_weights`); every layer's MLP
input on `--cal-tokens` tokens of the sotu train split; per layer and per E, balanced k-means of the neurons'
|activation| profiles (on the first `--cluster-tokens` tokens) into E equal groups; per (E, k), a router trained
on MoEfication's target (the k groups with the largest sum of |activation|) and its recall on the last 10% of the
calibration tokens; each candidate assembled as a Mixtral and measured on held-out windows of the test split
(perplexity, top-1 agreement and KL against the dense model), with the trained router as is (`router_scale` 1)
and nearly flat (`FLAT_SCALE`: the same experts chosen, equal weights = MoEfication's unweighted sum).
The `--shared` neurons of largest output contribution are kept out of the clustering and copied into every expert.
Writes `<out>/moefication.safetensors` (the chosen candidate: `layers.<l>.perm` int16 [I - S] routed neurons in
expert order, `layers.<l>.shared` int16 [S], `layers.<l>.router`
float32 [E, H], settings in the metadata), `<out>/probe.json` (the assembled model's logits on a fixed prompt,
which `smollm.demo_smollm_dir` checks after assembling) and `<out>/MOEFICATION.md` (the measurements).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor.demo.moefication import (balanced_clusters, group_permutation, group_scores, mlp_activations,
                                         moefy, routed_neurons, router_recall, shared_neurons, train_router)
from compressor.demo.smollm import PARTS_DIR, PARTS_FILE, PROBE_FILE

PROBE_TEXT = "The Congress of the United States shall have the power to"
FLAT_SCALE = 1e-3
REBUILD_COMMAND = "python -m compressor.demo.moefy"


@dataclass
class MoefyConfig:
    candidates: tuple[tuple[int, int], ...] = ((8, 2), (8, 4), (8, 6))
    choose: tuple[int, int, float] = (8, 4, FLAT_SCALE)   # (E, k, router_scale) written to the parts file
    shared: int = 256                              # neurons copied into every expert (moefication.shared_neurons)
    cal_tokens: int = 16384
    cluster_tokens: int = 4096
    seq_len: int = 512
    eval_tokens: int = 4096
    router_steps: int = 300
    scales: tuple[float, ...] = (FLAT_SCALE,)         # router scales measured for every candidate
    seed: int = 0

    def __post_init__(self):
        if self.choose[:2] not in self.candidates:
            raise ValueError(f"the chosen {self.choose[0]}x{self.choose[1]} is not among the candidates")
        if self.cluster_tokens > self.cal_tokens or self.cal_tokens % self.seq_len:
            raise ValueError("cluster_tokens must be <= cal_tokens, and cal_tokens a multiple of seq_len")


@torch.no_grad()
def mlp_inputs(model, batches) -> list[torch.Tensor]:
    """Each decoder layer's MLP input (after its post-attention norm) over `batches`: L tensors [T, H]."""
    layers = model.model.layers
    got: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [layer.mlp.register_forward_hook(lambda m, a, o, i=i: got[i].append(a[0].reshape(-1, a[0].shape[-1])))
             for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            model.model(input_ids=batch["input_ids"], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(g) for g in got]


def partition_and_route(dense, inputs: list[torch.Tensor], cfg: MoefyConfig, log) -> dict:
    """{E: {"perms": [L], "shared": [L], "routers": {k: [L]}, "recall": {k: [L]}, "loss": {k: [(first, last)]}}}."""
    out: dict = {}
    cut = int(inputs[0].shape[0] * 0.9)
    for experts in sorted({e for e, _ in cfg.candidates}):
        ks = [k for e, k in cfg.candidates if e == experts]
        res = {"perms": [], "shared": [], "routers": {k: [] for k in ks}, "recall": {k: [] for k in ks},
               "loss": {k: [] for k in ks}}
        for i, (layer, x) in enumerate(zip(dense.model.layers, inputs)):
            mlp = layer.mlp
            acts = mlp_activations(x, gate=mlp.gate_proj.weight, up=mlp.up_proj.weight)     # [T, I]
            shared = shared_neurons(acts, down=mlp.down_proj.weight, count=cfg.shared)     # [S]
            routed = routed_neurons(acts.shape[1], shared)                                 # [I - S]
            acts = acts[:, routed]
            labels = balanced_clusters(acts[:cfg.cluster_tokens].abs().T, groups=experts, seed=cfg.seed)
            res["perms"].append(routed[group_permutation(labels, groups=experts)])
            res["shared"].append(shared)
            scores = group_scores(acts, labels, groups=experts)                            # [T, E]
            for k in ks:
                w, losses = train_router(x[:cut], scores[:cut], top_k=k, steps=cfg.router_steps, seed=cfg.seed)
                res["routers"][k].append(w)
                res["recall"][k].append(router_recall(x[cut:], w, scores[cut:], top_k=k))
                res["loss"][k].append((losses[0], sum(losses[-20:]) / 20))
            log(f"E={experts} layer {i}: recall " + ", ".join(f"k={k} {res['recall'][k][-1]:.3f}" for k in ks))
        out[experts] = res
    return out


def probe(model, tokenizer) -> dict:
    """The model's last-position top-10 logits on PROBE_TEXT (what an assembled checkpoint must reproduce)."""
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, -1].float()
    top = logits.topk(10)
    return {"text": PROBE_TEXT, "ids": ids[0].tolist(), "top_ids": top.indices.tolist(),
            "top_logits": [round(v, 5) for v in top.values.tolist()]}


def save_parts(folder: Path, *, perms, shared, routers, experts: int, top_k: int, router_scale: float, meta: dict) -> Path:
    from safetensors.torch import save_file

    from compressor.demo.smollm_weights import GGUF_SHA256
    tensors = {}
    for i, (p, sh, r) in enumerate(zip(perms, shared, routers)):
        tensors[f"layers.{i}.perm"] = p.to(torch.int16).contiguous()
        tensors[f"layers.{i}.shared"] = sh.to(torch.int16).contiguous()
        tensors[f"layers.{i}.router"] = r.float().contiguous()
    info = {"experts": experts, "top_k": top_k, "router_scale": router_scale, "layers": len(perms),
            "gguf_sha256": GGUF_SHA256, **meta}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PARTS_FILE
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in info.items()})
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compressor.demo.moefy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=PARTS_DIR, help="folder for the parts (default: the shipped one)")
    ap.add_argument("--candidates", default="8x2,8x4,8x6", help="E x k pairs to measure, e.g. 8x2,8x4,16x8")
    ap.add_argument("--choose", default=f"8x4@{FLAT_SCALE:g}",
                    help=f"E x k [@ router_scale, default {FLAT_SCALE:g}] written to the parts file")
    ap.add_argument("--shared", type=int, default=MoefyConfig.shared, help="neurons copied into every expert")
    ap.add_argument("--cal-tokens", type=int, default=MoefyConfig.cal_tokens)
    ap.add_argument("--eval-tokens", type=int, default=MoefyConfig.eval_tokens)
    ap.add_argument("--router-steps", type=int, default=MoefyConfig.router_steps)
    ap.add_argument("--scales", default=f"{FLAT_SCALE:g}", help="router scales to measure, e.g. 1,0.001")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        cands = tuple(tuple(int(v) for v in c.lower().split("x")) for c in args.candidates.split(","))
        ek, scale = args.choose.split("@") if "@" in args.choose else (args.choose, str(FLAT_SCALE))
        choose = (*[int(v) for v in ek.lower().split("x")], float(scale))
        cfg = MoefyConfig(candidates=cands, choose=choose, shared=args.shared, cal_tokens=args.cal_tokens, eval_tokens=args.eval_tokens,
                          router_steps=args.router_steps,
                          scales=tuple(float(v) for v in args.scales.split(",")))
    except ValueError as e:
        ap.error(f"{e} (candidates look like 8x2,8x4; choose like 8x4@0.001)")
    torch.set_num_threads(args.threads)
    build(cfg, args.out, log=lambda s: print(s, flush=True))
    return 0


def build(cfg: MoefyConfig, out: Path, *, log=lambda s: None) -> dict:
    """Measure every candidate and write the chosen parts, probe and report into `out`; returns the measurements."""
    from compressor.data import calibration_batches, eval_windows
    from compressor.demo.smollm_weights import dense_from_gguf, smollm_gguf
    from compressor.evaluate.quality import baseline_reference, compare_quality

    t0 = time.perf_counter()
    dense, tok = dense_from_gguf(smollm_gguf())
    for p in dense.parameters():
        p.requires_grad_(False)
    batches = calibration_batches(tok, tokens=cfg.cal_tokens, seq_len=cfg.seq_len, batch_size=4, seed=cfg.seed)
    inputs = mlp_inputs(dense, batches)
    log(f"calibration: {inputs[0].shape[0]} tokens x {len(inputs)} layers ({time.perf_counter() - t0:.0f} s)")
    t1 = time.perf_counter()
    parts = partition_and_route(dense, inputs, cfg, log)
    del inputs
    t_parts = time.perf_counter() - t1
    windows = eval_windows(tok, tokens=cfg.eval_tokens, seq_len=cfg.seq_len, split="test")
    ref = baseline_reference(dense, windows, batch_size=4)
    rows = [{"name": "dense", "perplexity": ref.perplexity}]
    log(f"dense perplexity {ref.perplexity:.3f}")
    chosen = None
    for experts, k in cfg.candidates:
        p = parts[experts]
        for scale in cfg.scales:
            moe = moefy(dense, perms=p["perms"], shared=p["shared"], routers=p["routers"][k], top_k=k,
                        router_scale=scale)
            t = time.perf_counter()
            q = compare_quality(moe, ref, windows, batch_size=4)
            rows.append({"name": f"{experts}x{k}", "experts": experts, "top_k": k, "router_scale": scale,
                         "perplexity": q.perplexity, "agreement": q.agreement, "kl": q.kl_to_baseline,
                         "recall": sum(p["recall"][k]) / len(p["recall"][k]), "eval_s": time.perf_counter() - t})
            log(f"{experts}x{k} scale {scale:g}: ppl {q.perplexity:.3f} agreement {q.agreement:.3f} "
                f"KL {q.kl_to_baseline:.4f}")
            if (experts, k, scale) == cfg.choose:
                chosen = (moe, probe(moe, tok))
    experts, k, scale = cfg.choose
    if chosen is None:   # a scale other than the two measured
        chosen_moe = moefy(dense, perms=parts[experts]["perms"], shared=parts[experts]["shared"],
                           routers=parts[experts]["routers"][k], top_k=k, router_scale=scale)
        chosen = (chosen_moe, probe(chosen_moe, tok))
    meta = {"shared": cfg.shared, "cal_tokens": cfg.cal_tokens, "cluster_tokens": cfg.cluster_tokens, "seq_len": cfg.seq_len,
            "router_steps": cfg.router_steps, "seed": cfg.seed, "calibration": "sotu train split"}
    save_parts(out, perms=parts[experts]["perms"], shared=parts[experts]["shared"],
               routers=parts[experts]["routers"][k], experts=experts, top_k=k, router_scale=scale, meta=meta)
    (out / PROBE_FILE).write_text(json.dumps(chosen[1], indent=1) + "\n")
    report = {"config": cfg.__dict__, "rows": rows, "parts_s": t_parts, "total_s": time.perf_counter() - t0,
              "recall": {f"{e}x{k}": parts[e]["recall"][k] for e, k in cfg.candidates},
              "loss": {f"{e}x{k}": parts[e]["loss"][k] for e, k in cfg.candidates}}
    (out / "MOEFICATION.md").write_text(render_report(report))
    log(f"wrote {out} ({report['total_s']:.0f} s)")
    return report


def render_report(r: dict) -> str:
    import transformers
    cfg = r["config"]
    e, k, s = cfg["choose"]
    lines = [
        "# demo-smollm: how the MoE was made (written by `python -m compressor.demo.moefy`)", "",
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised) with each of its 30 MLPs split into E experts by balanced "
        "k-means of neuron co-activations, and a router per layer trained on MoEfication's target; the attention, "
        f"norms and embeddings are the dense model's. The {cfg['shared']} neurons of largest output contribution per "
        "layer are copied into every expert (always on). Stored as a stock `MixtralForCausalLM`.", "",
        f"Calibration: {cfg['cal_tokens']:,} tokens of the sotu train split (windows of {cfg['seq_len']}); clustering "
        f"on the first {cfg['cluster_tokens']:,}; routers trained {cfg['router_steps']} Adam steps (BCE on the "
        "top-k groups) on 90% of them, recall measured on the other 10%. Held-out: "
        f"{cfg['eval_tokens']:,} tokens of the test split. router scale 1 = the trained router's renormalised "
        f"softmax weights; {FLAT_SCALE:g} = the same experts with nearly equal weights (MoEfication's plain sum).", "",
        "| model | router scale | held-out perplexity | vs dense | top-1 agreement | KL to dense (nats) | router "
        "recall | eval s |", "|---|---|---|---|---|---|---|---|"]
    dense = r["rows"][0]["perplexity"]
    lines.append(f"| dense | | {dense:.3f} | | | | | |")
    for row in r["rows"][1:]:
        mark = "**" if (row["experts"], row["top_k"], row["router_scale"]) == (e, k, s) else ""
        lines.append(f"| {mark}{row['name']}{mark} | {row['router_scale']:g} | {row['perplexity']:.3f} | "
                     f"{100 * (row['perplexity'] / dense - 1):+.1f}% | {row['agreement']:.3f} | {row['kl']:.4f} | "
                     f"{row['recall']:.3f} | {row['eval_s']:.0f} |")
    lines += ["", f"Shipped: **{e} experts, top-{k}, router scale {s:g}** (bold). Partitions and routers took "
              f"{r['parts_s']:.0f} s, the whole build {r['total_s']:.0f} s on {platform.machine()} with 1 thread "
              f"(torch {torch.__version__}, transformers {transformers.__version__}).", "",
              "Router recall per layer (share of the target top-k groups the router picks):", ""]
    for name, rec in r["recall"].items():
        lines.append(f"- {name}: " + " ".join(f"{v:.2f}" for v in rec))
    lines += ["", f"Rebuild: `{REBUILD_COMMAND}` (defaults reproduce this file).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
