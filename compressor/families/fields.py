"""Config fields that hold the MoE sizes, found by name (every transformers-5 MoE family uses one of these).

A field may be dotted into a sub-config (DBRX keeps its MoE sizes in `ffn_config`). A spec's explicit field wins.

    expert_count_fields(config)   # ("num_experts", "num_local_experts")  every alias present, E first
    width_field(config)           # "moe_intermediate_size"
"""
from __future__ import annotations

EXPERT_COUNT_NAMES = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts",
                      "num_routed_experts", "ffn_config.moe_num_experts")
TOP_K_NAMES = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "moe_top_k",
               "ffn_config.moe_top_k", "top_k_experts", "top_k", "router_top_k")
WIDTH_NAMES = ("moe_intermediate_size", "expert_intermediate_size", "expert_ffn_hidden_size", "moe_ffn_hidden_size",
               "ffn_config.ffn_hidden_size", "intermediate_size")
SHARED_WIDTH_NAMES = ("shared_expert_intermediate_size", "shared_intermediate_size",
                      "moe_shared_expert_intermediate_size", "shared_experts_intermediate_size")
SHARED_COUNT_NAMES = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
GROUP_NAMES = ("n_group", "num_expert_group")
TOPK_GROUP_NAMES = ("topk_group",)
MOE_HINTS = EXPERT_COUNT_NAMES + ("moe_intermediate_size", "num_experts_per_tok")


def text_config(config):
    """The language-model config (a composite vision-language config's text part, or the config itself)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def get_field(config, name: str):
    obj = config
    for part in name.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def set_field(config, name: str, value) -> None:
    *path, leaf = name.split(".")
    obj = config
    for part in path:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if isinstance(obj, dict):
        obj[leaf] = value
    else:
        setattr(obj, leaf, value)


def _ints(config, names) -> list[str]:
    return [n for n in names if isinstance(get_field(config, n), int) and not isinstance(get_field(config, n), bool)]


def expert_count_fields(config) -> tuple[str, ...]:
    """Every field naming the routed-expert count with the same value as the first one found."""
    found = _ints(config, EXPERT_COUNT_NAMES)
    if not found:
        return ()
    first = get_field(config, found[0])
    return tuple(n for n in found if get_field(config, n) == first)


def first_field(config, names) -> str | None:
    found = _ints(config, names)
    return found[0] if found else None


def looks_moe(config) -> bool:
    """Has the config any MoE-sized field (a positive expert count or expert width)?"""
    return any(isinstance(get_field(config, n), int) and get_field(config, n) > 0 for n in MOE_HINTS)
