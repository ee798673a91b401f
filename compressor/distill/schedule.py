"""Multi-stage schedule: reach the recipe's target in N stages, each one a geometric step of the one before.

Stage i of N (i = 1..N) keeps the share r_i = r^(i/N) of what the original had, so every stage cuts by the same
factor r^(1/N): a keep ratio of 0.5 in 3 stages gives 0.794, 0.630, 0.5, and one stage is one-shot. Counts (experts
kept, expert width) follow the same curve rounded to integers; dropped layers are spread evenly; sparsity follows
the kept density: s_i = 1 - (1 - s)^(i/N).

    geometric_ratios(final=0.5, stages=3)              # [0.7937, 0.6300, 0.5]
    plan_stages(SlimmingConfig(expert_keep_ratio=0.5, experts_keep=4), stages=2, num_experts=8, width=512)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from compressor.recipe import SlimmingConfig

WIDTH_MULTIPLE = 8


def geometric_ratios(*, final: float, stages: int) -> list[float]:
    """r_i = final^(i / stages) for i = 1..stages; the last one is exactly `final`."""
    _check_stages(stages)
    if not 0.0 < final <= 1.0:
        raise ValueError(f"a keep ratio must be in (0, 1], got {final}")
    return [final ** (i / stages) if i < stages else final for i in range(1, stages + 1)]


def geometric_counts(*, start: int, final: int, stages: int, multiple: int = 1) -> list[int]:
    """round(start * (final / start)^(i / stages)) for i = 1..stages, never increasing, ending at `final`.

    With `multiple` > 1 the intermediate counts are rounded to a multiple of it (DeepSeek-style expert groups)."""
    if not 1 <= final <= start:
        raise ValueError(f"cannot step from {start} down to {final}")
    counts, prev = [], start
    for r in geometric_ratios(final=final / start, stages=stages):
        c = min(prev, max(final, multiple * int(math.floor(start * r / multiple + 0.5))))
        counts.append(c)
        prev = c
    counts[-1] = final
    return counts


def linear_counts(*, total: int, stages: int) -> list[int]:
    """Cumulative share of `total` done after stage i: round(total * i / stages)."""
    _check_stages(stages)
    return [int(math.floor(total * i / stages + 0.5)) for i in range(1, stages + 1)]


@dataclass(frozen=True)
class StageTarget:
    """Where the model stands after stage `index` (1-based), measured against the original model."""

    index: int
    width: int | None            # expert width (intermediate neurons per expert); None = unchanged
    experts: int | None          # routed experts per MoE layer; None = unchanged
    layers_dropped: int          # decoder layers removed so far
    sparsity: float              # unstructured sparsity of the remaining linear maps
    keep_ratio: float            # r_i of the expert width (1.0 when neurons are not slimmed)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_stages(slimming: SlimmingConfig, *, stages: int, num_experts: int, width: int,
                expert_multiple: int = 1, width_multiple: int = WIDTH_MULTIPLE) -> list[StageTarget]:
    """The cumulative target of every stage for a model with `num_experts` experts of `width` neurons.

    Width: round(width * r^(i/N)); the intermediate widths are rounded to multiples of `width_multiple` (grouped_mm
    kernels want 16-byte rows; 8 covers fp32 and bf16), the last is round(width * r), what one-shot slimming uses.
    Expert counts in between are multiples of `expert_multiple` (the routing groups of DeepSeek-style models).
    """
    _check_stages(stages)
    ratios = geometric_ratios(final=slimming.expert_keep_ratio, stages=stages)
    final_width = max(1, int(math.floor(slimming.expert_keep_ratio * width + 0.5)))
    widths = None
    if final_width < width:
        multiple = width_multiple if final_width >= width_multiple else 1
        widths = geometric_counts(start=width, final=final_width, stages=stages, multiple=multiple)
    experts = None
    if slimming.experts_keep is not None and slimming.experts_keep < num_experts:
        experts = geometric_counts(start=num_experts, final=slimming.experts_keep, stages=stages,
                                   multiple=expert_multiple)
    layers = linear_counts(total=slimming.layers_drop, stages=stages)
    density = geometric_ratios(final=1.0 - slimming.sparsity, stages=stages)
    return [StageTarget(index=i + 1,
                        width=widths[i] if widths else None,
                        experts=experts[i] if experts else None,
                        layers_dropped=layers[i],
                        sparsity=0.0 if slimming.sparsity == 0.0 else 1.0 - density[i],
                        keep_ratio=ratios[i] if widths else 1.0)
            for i in range(stages)]


def split_steps(*, total: int, stages: int, final_share: float | None = 0.8) -> list[int]:
    """Distillation steps of each stage: the last stage gets F = round(total * final_share) (all of them for one
    stage), the N - 1 earlier stages split the remaining total - F as evenly as possible (cumulative counts rounded).
    final_share=None splits all N stages evenly (recipe version 1).

    The last stage's model is the one that ships, and its recovery is what limits quality at a fixed budget (see
    bench/results/quality.md), so it gets the most steps; the earlier stages only have to carry knowledge over to
    the neurons that survive the next cut.

        split_steps(total=300, stages=3)                     # [30, 30, 240]
        split_steps(total=300, stages=3, final_share=None)   # [100, 100, 100]
    """
    _check_stages(stages)
    if final_share is None:
        cum = linear_counts(total=total, stages=stages)
        return [b - a for a, b in zip([0] + cum[:-1], cum)]
    if not 0.0 < final_share <= 1.0:
        raise ValueError(f"final_share must be in (0, 1], got {final_share}")
    if stages == 1:
        return [total]
    last = int(math.floor(total * final_share + 0.5))
    cum = linear_counts(total=total - last, stages=stages - 1)
    return [b - a for a, b in zip([0] + cum[:-1], cum)] + [last]


def _check_stages(stages: int) -> None:
    if not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be a positive integer, got {stages!r}")


def lr_at(step: int, *, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Learning rate of 0-based optimizer `step` of `total`: linear warm-up peak * (step + 1) / W for step < W, then
    cosine peak * (f + (1 - f) * (1 + cos(pi * t)) / 2), t = (step - W) / (total - W - 1), reaching f * peak at the
    last step (W is capped at total - 1). The one schedule of distillation and of the demo model's training."""
    warmup = min(warmup, max(total - 1, 0))
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))

