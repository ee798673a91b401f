"""Can this recipe's slimming be done on this model? One torch-free rule set, checked once, before any work.

Used by the Compress tab's live estimate and its Enqueue (`ui.services.estimate_slimming`, from the model's summary),
`python -m compressor recipe validate FILE` (from the model's config.json when it is local) and the pipeline right
after it reads config.json (`pipeline.run_recipe`, before the weights are loaded). The slimming code keeps its own
guards, which now only ever fire on direct library calls.

Rules (E experts, k = top-k, G routing groups with g selected per token, L decoder layers, every stage's target of
`distill.schedule.plan_stages`, so a multi-stage recipe is checked at each of its cuts):
    experts kept E':   k <= E' <= E;  with G > 1 (DeepSeek-V3, GLM-4.5 `n_group`): E' % G == 0,
                       E' / G >= 2 (a group is scored by its top-2 experts), g * E' / G >= k
    layers dropped d:  d <= L - 1 (one layer stays)
    the family's refusals (`families.spec.FamilySpec`: expert_pruning, neuron_slimming, layer_dropping) for a cut
    the recipe makes

    limits = ModelLimits.from_config(json.load(open("model/config.json")))
    check_slimming(limits, recipe.slimming, stages=recipe.stages)      # FeasibilityError naming each problem
"""
from __future__ import annotations

from dataclasses import dataclass, field

from compressor.distill.schedule import plan_stages
from compressor.families import fields as F
from compressor.families.spec import spec_for

REFUSAL_FIELDS = ("expert_pruning", "neuron_slimming", "layer_dropping")


class FeasibilityError(ValueError):
    """The recipe asks for a cut this model cannot take; the message lists every problem and what to do."""


@dataclass(frozen=True)
class ModelLimits:
    family: str
    num_experts: int
    top_k: int
    width: int
    num_layers: int
    groups: int = 1
    topk_group: int = 1
    refusals: dict = field(default_factory=dict)       # cut -> why the family refuses it

    @classmethod
    def from_config(cls, config: dict) -> "ModelLimits":
        """From a config.json dict (the text config of a composite one), with the fields found by name
        (`families.fields`) unless the family's spec names them."""
        cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        model_type = cfg.get("model_type") or config.get("model_type") or "unknown"
        spec = spec_for(model_type)

        def first(explicit, names, default=None):
            """The spec's fields first (any alias present in the dict), then the usual names."""
            for name in (*(explicit if isinstance(explicit, tuple) else (explicit,) if explicit else ()), *names):
                value = F.get_field(cfg, name)
                if isinstance(value, (list, tuple)):
                    value = max((v for v in value if isinstance(v, int)), default=None)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
            return default

        return cls(family=spec.name, num_experts=first(spec.expert_count_fields, F.EXPERT_COUNT_NAMES, 0),
                   top_k=first(spec.top_k_field, F.TOP_K_NAMES, 1), width=first(spec.width_field, F.WIDTH_NAMES, 0),
                   num_layers=first(None, ("num_hidden_layers", "num_layers", "n_layers", "n_layer"), 0),
                   groups=first(spec.group_field, F.GROUP_NAMES, 1) or 1,
                   topk_group=first(spec.topk_group_field, F.TOPK_GROUP_NAMES, 1) or 1,
                   refusals={k: getattr(spec, k) for k in REFUSAL_FIELDS if getattr(spec, k)})

    @classmethod
    def from_summary(cls, summary: dict) -> "ModelLimits":
        """From an inspect summary (`compressor.inspect.inspect_model`: the Model tab's and the estimate's)."""
        def one(v):
            return max(v) if isinstance(v, (list, tuple)) else int(v)
        return cls(family=summary.get("family", "unknown"), num_experts=one(summary["num_experts"]),
                   top_k=int(summary["top_k"]), width=one(summary["expert_intermediate_size"]),
                   num_layers=int(summary["num_layers"]), groups=int(summary.get("expert_groups") or 1),
                   topk_group=int(summary.get("topk_group") or 1), refusals=dict(summary.get("refusals") or {}))


def expert_count_problems(limits: ModelLimits, n: int) -> list[str]:
    """Why the router could not use `n` kept experts (empty when it can)."""
    k, E, G = limits.top_k, limits.num_experts, limits.groups
    if n > E:
        return [f"cannot keep {n} experts: the model has only {E}"]
    if n < k:
        return [f"cannot keep {n} experts: the router picks top-{k}, so keep at least {k}"]
    if G <= 1:
        return []
    if n % G:
        return [f"{limits.family} routes in {G} expert groups: keep a multiple of {G} experts "
                f"(e.g. {max(G * 2, (n // G) * G)})"]
    if n // G < 2:
        return [f"{limits.family} scores each group by its top-2 experts: keep at least {2 * G} experts "
                f"({G} groups x 2)"]
    if limits.topk_group * (n // G) < k:
        return [f"{limits.family}: {limits.topk_group} selected groups x {n // G} experts per group is fewer than "
                f"top-{k}: keep at least {G * -(-k // limits.topk_group)} experts"]
    return []


def slimming_problems(limits: ModelLimits, slimming, *, stages: int = 1) -> list[str]:
    """Every problem of `slimming` (a recipe SlimmingConfig) on this model over `stages` stages (module rules)."""
    out: list[str] = []
    cuts = {"expert_pruning": slimming.experts_keep is not None and slimming.experts_keep < limits.num_experts,
            "neuron_slimming": slimming.expert_keep_ratio < 1.0, "layer_dropping": slimming.layers_drop > 0}
    for cut, made in cuts.items():
        if made and cut in limits.refusals:
            out.append(f"{limits.family}: {cut.replace('_', ' ')} is not possible: {limits.refusals[cut]}")
    if slimming.experts_keep is not None:
        out += expert_count_problems(limits, slimming.experts_keep)
        if not out and cuts["expert_pruning"] and stages > 1:
            plan = plan_stages(slimming, stages=stages, num_experts=limits.num_experts, width=max(limits.width, 1),
                               expert_multiple=limits.groups)
            for t in plan[:-1]:
                for p in expert_count_problems(limits, t.experts):
                    out.append(f"stage {t.index} of {stages} (keeps {t.experts} experts): {p}; use fewer stages")
    if slimming.layers_drop > max(limits.num_layers - 1, 0):
        out.append(f"cannot drop {slimming.layers_drop} of {limits.num_layers} decoder layers: keep at least one "
                   f"(layers_drop <= {limits.num_layers - 1})")
    return out


def check_slimming(limits: ModelLimits, slimming, *, stages: int = 1) -> None:
    """Raise `FeasibilityError` listing every problem of `slimming_problems`."""
    problems = slimming_problems(limits, slimming, stages=stages)
    if problems:
        raise FeasibilityError("; ".join(problems))
