"""A run's result in words, without Gradio: speed-ups with their spread and whether they beat the machine's noise,
and the groups an expert merge folded. Shared by Runs, Compare (both views) and Download, so a figure reads the same
wherever it is shown.

    speed_text(result.speed, "decode")          # "0.39x (0.31–1.42), within noise"
    ratio_text(speed_a, speed_b, "prefill")     # "1.12 (0.91–1.40), within noise": B / A with the range of B / A
    merge_lines(result)                         # ["REAM, 8 → 4 experts per layer", "layer 0: {5 2 7} {1 0} ..."]

A speed-up's range is its lowest and highest round (`compressor.evaluate.speed`); it is within noise when that range
holds 1.0. Two speed-ups are within noise of each other when their ranges overlap.
"""
from __future__ import annotations

from compressor.methods import EXPERT_MERGES
from compressor.result import RunResult, Speed

NOISE = "within noise"


def _range(speed: Speed | None, which: str) -> tuple[float | None, tuple[float, float] | None]:
    if speed is None:
        return None, None
    ratio, rng = getattr(speed, f"{which}_speedup"), getattr(speed, f"{which}_speedup_range")
    return ratio, (tuple(rng) if rng else None)


def speed_text(speed: Speed | None, which: str) -> str | None:
    """'1.29x (1.10–1.41)' with ', within noise' when the range holds 1.0; None when not measured."""
    ratio, rng = _range(speed, which)
    if ratio is None:
        return None
    text = f"{ratio:.2f}x" + (f" ({rng[0]:.2f}–{rng[1]:.2f})" if rng else "")
    return text + (f", {NOISE}" if speed.within_noise(which) else "")


def overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    """Whether two ranges overlap (None when either is unknown)."""
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def ratio_text(a: Speed | None, b: Speed | None, which: str) -> str:
    """B / A of two runs' speed-ups, with the range of the quotient (B's lowest over A's highest round to B's
    highest over A's lowest) and ', within noise' when the two ranges overlap; '' when either is missing."""
    (ra, rng_a), (rb, rng_b) = _range(a, which), _range(b, which)
    if not ra or rb is None:
        return ""
    text = f"{rb / ra:.2f}"
    if rng_a and rng_b and rng_a[0] > 0:
        text += f" ({rng_b[0] / rng_a[1]:.2f}–{rng_b[1] / rng_a[0]:.2f})"
    return text + (f", {NOISE}" if overlap(rng_a, rng_b) else "")


def merge_label(method: str) -> str:
    """'REAM' for 'ream' (the registry's label), the name itself for a method the registry does not know."""
    m = EXPERT_MERGES.get(method)
    return m.label if m else method


def merge_summary(result: RunResult) -> str:
    """One line per merge: 'REAM merge, 8 → 4 experts per layer' ('' for a run that merged nothing)."""
    return "; ".join(f"{merge_label(m.method)} merge, {m.experts_before} → {m.experts_after} experts per layer"
                     + (f" (stage {m.stage})" if len(result.merges) > 1 else "") for m in result.merges)


def group_text(group: list[int], similarity: float | None = None) -> str:
    """'{5 ← 2 7}' (the centroid first, then what folded into it), with the mean similarity when known."""
    head, rest = group[0], " ".join(str(e) for e in group[1:])
    inner = f"{head} ← {rest}" if rest else f"{head}"
    return "{" + inner + (f" · {similarity:.2f}" if similarity is not None else "") + "}"


def merge_lines(result: RunResult, *, max_layers: int = 64) -> list[str]:
    """The summary, then one line per merged layer: its groups, the expert that stays first (original ids)."""
    lines = []
    for m in result.merges:
        lines.append(f"{merge_label(m.method)}, {m.experts_before} → {m.experts_after} experts per layer "
                     f"(stage {m.stage}; each group folded into its first expert, · mean similarity)")
        for layer in m.layers[:max_layers]:
            sims = layer.similarity or [None] * len(layer.groups)
            lines.append(f"layer {layer.layer}: " + " ".join(group_text(g, s) for g, s in zip(layer.groups, sims)))
        if len(m.layers) > max_layers:
            lines.append(f"… {len(m.layers) - max_layers} more layers (all of them in the model card)")
    return lines
