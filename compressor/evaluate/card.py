"""The model-card section a pipeline run adds to its checkpoint's README.md: the recipe, the distillation objective
(with its T^2 factor, which TRL's GKD lacks), the headline figures against the original (lm-eval tasks included),
each stage, and the wall time per phase.

    text = pipeline_card(recipe, result.metrics, result.stages)      # markdown
"""
from __future__ import annotations

from compressor.recipe import Recipe
from compressor.result import RunResult

_HEADLINE = (("perplexity", "baseline_perplexity", "held-out perplexity"),
             ("top1_agreement", None, "next-token top-1 agreement with the original"),
             ("kl_to_baseline", None, "KL(original || compressed), nats/token"),
             ("params_total", "baseline_params_total", "parameters, total"),
             ("params_active", "baseline_params_active", "parameters, active per token"),
             ("prefill_tokens_per_s", None, "prefill tokens/s"),
             ("prefill_speedup", None, "prefill speed-up over the original"),
             ("decode_tokens_per_s", None, "decode tokens/s"),
             ("decode_speedup", None, "decode speed-up over the original"))


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _speed_spread(sp, which: str) -> str:
    """'prefill 1.29x (rounds 1.10-1.41)', with 'within the machine's noise' when the range holds 1.0."""
    ratio, rng = getattr(sp, f"{which}_speedup"), getattr(sp, f"{which}_speedup_range")
    if ratio is None:
        return f"{which} not compared"
    text = f"{which} {ratio:.2f}x" + (f" (rounds {rng[0]:.2f}-{rng[1]:.2f})" if rng else "")
    return text + (", within the machine's noise" if sp.within_noise(which) else "")


def _distill_loss_line(recipe: Recipe) -> str:
    """The distillation objective with its T^2 factor, and what that means for a TRL user reading `ce_weight`."""
    d = recipe.distill
    t2 = d.temperature ** 2
    return (f"Distillation loss: T^2 x {d.loss} on softmax(z / T) at T = {d.temperature:g} (Hinton et al. 2015), plus "
            f"{d.ce_weight:g} x next-token CE. TRL's GKD does not multiply by T^2, so here the KD term weighs "
            f"{t2:g}x what the same settings give in TRL: relative to it, ce_weight {d.ce_weight:g} weighs what "
            f"{d.ce_weight / t2:.3g} would next to TRL's unscaled KD term.")


def merge_lines(stages: list[dict]) -> list[str]:
    """Which experts were folded into which, per stage and MoE layer (original expert ids, centroid first), for
    runs whose slimming merged experts (`slimming.expert_merge`)."""
    lines = []
    for s in stages:
        for op in (s.get("slimming") or {}).get("operations", []):
            if op.get("operation") != "merge_experts":
                continue
            stage = s.get("index", s["stage"])
            lines += ["", f"### Merged experts (stage {stage}, {op['method']}: {op['experts_before']} -> "
                          f"{op['experts_after']} per layer)", "",
                      "Each group folded into its first expert (original ids; weights in brackets, mean similarity "
                      "to the centroid after the bar).", "", "| layer | groups |", "|---:|---|"]
            for layer in op["layers"]:
                groups = ", ".join(
                    "{" + " ".join(f"{e} ({w:.2f})" for e, w in zip(g, ws)) + f" | {sim:.2f}" + "}"
                    for g, ws, sim in zip(layer["groups"], layer["weights"], layer["similarity"]))
                lines.append(f"| {layer['layer']} | {groups} |")
    return lines


def pipeline_card(recipe: Recipe, metrics: dict, stages: list[dict]) -> str:
    lines = ["## How this model was made", "",
             f"Compressed from `{recipe.model}` with `python -m compressor run recipe.yaml`, in {recipe.stages} "
             f"stage(s) of scoring, slimming and distillation. Recipe:", "", "```yaml", recipe.to_yaml().rstrip(),
             "```"]
    if recipe.distill.steps > 0:
        lines += ["", _distill_loss_line(recipe)]
    lines += ["", "## Results", "", "| metric | this model | original |", "|---|---:|---:|"]
    for key, base, label in _HEADLINE:
        if metrics.get(key) is not None:
            lines.append(f"| {label} | {_num(metrics[key])} | {_num(metrics.get(base)) if base else '-'} |")
    lm = (metrics.get("evaluation") or {}).get("lm_eval") or {}
    for task, row in lm.get("tasks", {}).items():
        mine, base = row.get("model", {}), row.get("baseline", {})
        lines.append(f"| lm-eval {task} acc ({mine.get('n')} examples) | {_num(mine.get('acc'))} | "
                     f"{_num(base.get('acc'))} |")
    if lm:
        lines += ["", f"lm-eval {lm.get('num_fewshot') or 0}-shot on the `{lm.get('backend')}` backend."]
    q = metrics.get("quantize")
    if q and q.get("format") == "compressed-tensors":
        lines += ["", f"Quantized {q['scheme']} ({q['method']}, {q['library']}, compressed-tensors format): "
                      f"{q['quantized']['linear']} linear weights and {q['quantized']['expert_tensors']} expert "
                      f"matrices ({q['params_quantized']:,} parameters); embeddings, LM head, routers and norms kept. "
                      f"Checkpoint {q['checkpoint_bytes_before']:,} -> {q['checkpoint_bytes_after']:,} bytes. Loads "
                      "in stock `from_pretrained` (with the compressed-tensors package) and vLLM."]
    elif q:
        lines += ["", f"Quantized {q['scheme']} ({q['method']}, {q['library']}): {q['quantized']['linear']} linear "
                      f"weights and {q['quantized']['expert_tensors']} fused expert tensors "
                      f"({q['params_quantized']:,} parameters); embeddings, LM head, routers and norms kept. "
                      f"Checkpoint {q['checkpoint_bytes_before']:,} -> {q['checkpoint_bytes_after']:,} bytes. Load "
                      f"with stock `from_pretrained` (torchao installed). The experts must run transformers' "
                      f"`{q['experts_implementation']}` kernel (torchao's tensors cannot run `grouped_mm`): config.json "
                      f"sets `experts_implementation: {q['experts_implementation']}`, so `from_pretrained(path)` "
                      f"needs no argument; pass `experts_implementation=\"{q['experts_implementation']}\"` if you "
                      f"override the config."]
    sp = RunResult.read(metrics).speed
    if sp is not None:
        st = ((metrics.get("evaluation") or {}).get("speed") or {}).get("settings", {})
        lines += ["", f"Speed measured on {st.get('device')} with {st.get('threads')} threads, both models in "
                      f"{sp.kernel}, {'interleaved with' if sp.interleaved else 'after'} the original's measurement; "
                      + "; ".join(_speed_spread(sp, k) for k in ("prefill", "decode")) + "."]
    if stages:
        lines += ["", "### Stages", "", "| stage | expert width | experts | perplexity | top-1 agreement | "
                  "distil loss (first -> last) |", "|---|---:|---:|---:|---:|---|"]
        for s in stages:
            tgt, dist = s.get("target", {}), s.get("distill") or {}
            loss = (f"{_num(dist.get('first_loss'))} -> {_num(dist.get('last_loss'))}" if dist else "-")
            lines.append(f"| {s['stage']} | {_num(tgt.get('width'))} | {_num(tgt.get('experts'))} | "
                         f"{_num(s.get('perplexity'))} | {_num(s.get('top1_agreement'))} | {loss} |")
    lines += merge_lines(stages)
    timings = metrics.get("timings") or {}
    if timings:
        lines += ["", "### Wall time (s)", "", " · ".join(f"{k} {v:.1f}" for k, v in timings.items())]
    return "\n".join(lines) + "\n"
