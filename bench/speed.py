"""Speed benchmark: slimmed versus original prefill and decode tokens/s, expert kernels, and kernel efficiency.

Models: the demo (Qwen3-MoE, hidden 256, 8 experts, top-2, width 384, 4 layers, vocab 4096) and a synthetic
Qwen3-MoE with realistic layer shapes (hidden 2048, 64 experts, top-8, width 1024, 2 layers, random weights,
`compressor.testing.tiny_moe`). Each is slimmed with `slim_neurons_` to expert keep ratios 0.75 / 0.5 / 0.25
(speed depends only on the shapes, so the neurons kept are picked by a seeded random score).

For every (model, dtype) all four sizes x both CPU kernels (`eager`, `grouped_mm`) are timed round-robin, the order
reversed every other round, after an untimed warm-up round; figures are medians:
    prefill tokens/s = B * L / t(one forward over [B, L] building the KV cache)
    decode tokens/s  = new_tokens / t(new_tokens greedy single-token steps after a P-token prompt), batch 1
Theoretical speed-up = MACs per token of the original / MACs per token of the slimmed model, counting every matmul
a token touches (attention projections, attention scores over its causal context, router, its top-k experts,
lm_head; norms and activations are left out). Target (issue 3): measured prefill speed-up >= 80% of it, with each
model on its fastest kernel (what `choose_experts_kernel` would pick).

Kernel efficiency: the experts of layer 0 alone, fed the hidden states and routing captured from the prefill,
   achieved FLOP/s = 2 * T * k * 3 * H * I / t(experts forward)
divided by the FLOP/s of a dense matmul doing the same work as if all T * k rows went to one expert
([T*k, H] @ [H, 2I] then [T*k, I] @ [I, H]), timed in the same round-robin.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.speed             # about 8-10 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python -m bench.speed --quick     # smoke run, about 1 min
"""
from __future__ import annotations

import copy
import gc
import statistics
import time

import torch

from bench.common import interleaved_medians, log, parse_args, setup_threads, start, table, write_result
from bench.speed_lib import (KEEP_RATIOS, TARGET_SHARE, capture_experts_input, dense_references, expert_flops,
                             macs_per_token, slimmed_copies)

IMPLS = ("eager", "grouped_mm")


def _models(quick: bool):
    """(name, loader, plan) per model; plan per dtype: (prefill batch, prefill len, decode prompt, new tokens, rounds)."""
    from compressor.sources import load_model
    from compressor.testing import tiny_moe

    def demo():
        return load_model("demo", dtype=torch.float32).model

    def synthetic():
        if quick:
            return tiny_moe("qwen3_moe", hidden=512, experts=16, top_k=4, width=256, layers=2)
        return tiny_moe("qwen3_moe", hidden=2048, experts=64, top_k=8, width=1024, layers=2)

    if quick:
        plans = {"demo": {torch.float32: (1, 64, 8, 4, 1), torch.bfloat16: (1, 64, 8, 4, 1)},
                 "synthetic": {torch.float32: (1, 32, 8, 4, 1), torch.bfloat16: (1, 32, 8, 4, 1)}}
    else:
        plans = {"demo": {torch.float32: (2, 256, 32, 32, 21), torch.bfloat16: (2, 256, 32, 16, 9)},   # cheap: more rounds
                 "synthetic": {torch.float32: (1, 256, 32, 16, 5), torch.bfloat16: (1, 64, 32, 8, 3)}}
    return [("demo", demo, plans["demo"]), ("synthetic (H 2048, 64 experts, top-8, I 1024, 2 layers)"
                                            if not quick else "synthetic (quick: H 512, 16 experts, top-4, I 256)",
                                            synthetic, plans["synthetic"])]


def _set_impl(model, impl: str) -> None:
    if (getattr(model.config, "_experts_implementation", None) or "eager") != impl:
        model.set_experts_implementation(impl)


@torch.no_grad()
def _prefill(model, impl, ids):
    _set_impl(model, impl)
    model(input_ids=ids, use_cache=True)


@torch.no_grad()
def _decode_fn(model, impl, prompt, new_tokens):
    """A closure timing only the decode steps: the prompt's prefill runs untimed inside, before t0."""
    def run():
        _set_impl(model, impl)
        out = model(input_ids=prompt, use_cache=True)
        past, nxt = out.cache, out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, cache=past, use_cache=True)
            past, nxt = out.cache, out.logits[:, -1:].argmax(-1)
        run.last = time.perf_counter() - t0
    return run


def _timed_decode(fns: dict, rounds: int) -> dict[str, float]:
    """Medians of the decode closures' own timers (round-robin like `interleaved_medians`)."""
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds + 1):
        for n in (names if r % 2 == 0 else names[::-1]):
            fns[n]()
            if r:
                times[n].append(fns[n].last)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(name: str, model, plans: dict, vocab: int) -> dict:
    """All measurements of one model: {dtype: {"speed": rows, "kernels": rows}}."""
    out = {}
    for dtype, (B, L, P, new, rounds) in plans.items():
        base = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        sizes = {1.0: base, **slimmed_copies(base, KEEP_RATIOS)}
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, vocab, (B, L), generator=g)
        prompt = ids[:1, :P]
        dn = str(dtype).removeprefix("torch.")
        log(f"{name} {dn}: prefill {B}x{L}, decode {new} tokens after {P}, {rounds} rounds")
        pre = interleaved_medians({(r, i): (lambda m=m, i=i: _prefill(m, i, ids))
                                   for r, m in sizes.items() for i in IMPLS}, rounds=rounds)
        log(f"{name} {dn}: prefill done")
        dec = _timed_decode({(r, i): _decode_fn(m, i, prompt, new) for r, m in sizes.items() for i in IMPLS},
                            rounds=rounds)
        log(f"{name} {dn}: decode done")
        kern = _kernel_efficiency(sizes, ids, rounds=max(rounds, 3))
        log(f"{name} {dn}: kernel efficiency done")
        rows = []
        for r, m in sizes.items():
            macs_p = macs_per_token(m.config, ctx=(L + 1) / 2)
            macs_d = macs_per_token(m.config, ctx=P + new / 2)
            rows.append({"keep": r, "width": m.config.moe_intermediate_size, "macs_prefill": macs_p,
                         "macs_decode": macs_d,
                         **{f"pre_{i}": B * L / pre[(r, i)] for i in IMPLS},
                         **{f"dec_{i}": new / dec[(r, i)] for i in IMPLS}})
        out[dn] = {"rows": rows, "kernels": kern, "plan": (B, L, P, new, rounds)}
        del sizes, base
        gc.collect()
    return out


def _kernel_efficiency(sizes: dict, ids: torch.Tensor, *, rounds: int) -> list[dict]:
    fns, meta = {}, {}
    for r, m in sizes.items():
        experts, hidden, idx, w = capture_experts_input(m, ids)
        for impl in IMPLS:
            def run(m=m, impl=impl, experts=experts, hidden=hidden, idx=idx, w=w):
                _set_impl(m, impl)
                with torch.no_grad():
                    experts(hidden, idx, w)
            fns[(r, impl)] = run
        for layout, fn in dense_references(hidden, idx.shape[1], m.config.moe_intermediate_size).items():
            fns[(r, f"dense {layout}")] = fn
        meta[r] = expert_flops(tokens=hidden.shape[0], top_k=idx.shape[1], hidden=hidden.shape[1],
                               width=m.config.moe_intermediate_size)
    t = interleaved_medians(fns, rounds=rounds)
    rows = []
    for r in sizes:
        f = meta[r]
        dense = max(f / t[(r, "dense linear")], f / t[(r, "dense matmul")])
        rows.append({"keep": r, "flops": f, "dense_gflops": dense / 1e9,
                     "dense_linear_gflops": f / t[(r, "dense linear")] / 1e9,
                     "dense_matmul_gflops": f / t[(r, "dense matmul")] / 1e9,
                     **{f"{i}_gflops": f / t[(r, i)] / 1e9 for i in IMPLS},
                     **{f"{i}_eff": (f / t[(r, i)]) / dense for i in IMPLS}})
    return rows


def _speed_section(name: str, res: dict) -> str:
    parts = [f"## {name}"]
    verdicts = []
    for dn, d in res.items():
        B, L, P, new, rounds = d["plan"]
        rows, base = d["rows"], d["rows"][0]
        best0 = max(base[f"pre_{i}"] for i in IMPLS)
        body = []
        for r in rows:
            theo = base["macs_prefill"] / r["macs_prefill"]
            theo_d = base["macs_decode"] / r["macs_decode"]
            best = max(r[f"pre_{i}"] for i in IMPLS)
            sp = best / best0
            body.append([f"{r['keep']:.2f}", r["width"], *[r[f"pre_{i}"] for i in IMPLS],
                         *[r[f"pre_{i}"] / base[f"pre_{i}"] for i in IMPLS], sp, theo, f"{sp / theo:.0%}",
                         *[r[f"dec_{i}"] for i in IMPLS], max(r[f"dec_{i}"] for i in IMPLS) /
                         max(base[f"dec_{i}"] for i in IMPLS), theo_d])
            if r["keep"] < 1.0 and dn == "float32":
                verdicts.append((r["keep"], sp, theo))
        parts.append(f"### {dn}: prefill {B} x {L} tokens, decode {new} tokens after a {P}-token prompt "
                     f"(batch 1), median of {rounds} interleaved rounds\n" + table(
                         ["keep", "width", "prefill tok/s eager", "prefill tok/s grouped_mm", "speed-up eager",
                          "speed-up grouped_mm", "speed-up (best kernel each)", "theoretical", "share of theory",
                          "decode tok/s eager", "decode tok/s grouped_mm", "decode speed-up (best)",
                          "decode theoretical"], body))
        kb = [[f"{k['keep']:.2f}", k["flops"] / 1e9, k["dense_linear_gflops"], k["dense_matmul_gflops"],
               *[k[f"{i}_gflops"] for i in IMPLS], *[f"{k[f'{i}_eff']:.0%}" for i in IMPLS]] for k in d["kernels"]]
        parts.append(f"Kernel efficiency ({dn}, experts of layer 0 on the prefill's {B * L} tokens):\n" + table(
            ["keep", "expert GFLOP", "dense GFLOP/s (F.linear)", "dense GFLOP/s (x @ W)", "eager GFLOP/s", "grouped_mm GFLOP/s",
             "eager efficiency", "grouped_mm efficiency"], kb) +
            "\n\nEfficiency = expert GFLOP/s / the faster dense layout's GFLOP/s.")
    return "\n\n".join(parts), verdicts


def main() -> None:
    args = parse_args("speed", __doc__)
    setup_threads(args.threads)
    run = start()
    sections, verdict_lines = [], []
    for name, loader, plans in _models(args.quick):
        model = loader()
        vocab = model.config.vocab_size
        res = bench_model(name, model, plans, vocab)
        del model
        gc.collect()
        text, verdicts = _speed_section(name, res)
        sections.append(text)
        for keep, sp, theo in verdicts:
            ok = sp >= TARGET_SHARE * theo
            verdict_lines.append(f"- {name.split(' (')[0]}, keep {keep:.2f}: prefill speed-up {sp:.2f}x vs "
                                 f"theoretical {theo:.2f}x = {sp / theo:.0%} of theory (target >= "
                                 f"{TARGET_SHARE:.0%}): **{'met' if ok else 'missed'}**")
    head = ("## Target (float32, the dtype the studio runs on this CPU; best kernel for each model)\n" +
            "\n".join(verdict_lines))
    write_result(args, "Speed: slimmed vs original, expert kernels, fp32 vs bf16", [head, *sections], run)


if __name__ == "__main__":
    main()
