"""A model's vital statistics: family, layers, experts, top-k, widths, parameters (total and active per token), dtype.

Counts are taken from the modules themselves (what is in memory), not from the config, so they stay right after
slimming; the config only supplies top-k.

    info = inspect_model(tiny_moe("qwen3_moe"))
    info["params_active"] < info["params_total"]                  # routed experts not picked are inactive
    count_params(model)                                          # ParamCount(total=..., active=...)

Parameter rule (what `save_pretrained` writes, each stored tensor once):
    total  = sum numel over the state dict's unique tensors (parameters + persistent buffers such as DeepSeek's
             `e_score_correction_bias`; tied embeddings counted once)
    active = total - sum over MoE layers of  P_experts(l) * (E_l - k) / E_l
where P_experts(l) is every routed-expert tensor of layer l (weights and biases; router and shared experts stay
active) and k the router's top-k.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from compressor.families import resolve_adapter


@dataclass(frozen=True)
class ParamCount:
    total: int      # stored weights, each tensor once
    active: int     # weights one token touches: routed experts scaled by k / E

    def to_dict(self) -> dict:
        return asdict(self)


def _storage_key(t: torch.Tensor) -> tuple:
    """What identifies a tensor's storage. A tensor subclass (torchao's quantized weights) reports data_ptr() 0 for
    every weight, so it is identified by the storages of the tensors it is made of (`__tensor_flatten__`)."""
    data = t.data if isinstance(t, nn.Parameter) else t
    if type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__"):
        names, _ = data.__tensor_flatten__()
        return tuple(_storage_key(getattr(data, n)) for n in names)
    if not t.numel() or t.device.type == "meta":           # meta / empty tensors have no storage to share
        return ("meta", id(t))
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict tensors with tied / shared storage kept once (first name wins). Meta tensors have no storage:
    there a tensor shared by two names (tied embeddings) is the same Parameter object, so identity decides."""
    seen, out = set(), {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def count_params(model: nn.Module) -> ParamCount:
    """Total and per-token active parameters (rule in the module docstring)."""
    total = sum(t.numel() for t in stored_tensors(model).values())
    adapter = resolve_adapter(model)
    k = adapter.top_k(model.config)
    inactive = 0
    for blk in adapter.moe_blocks(model):
        E = blk.num_experts
        per_expert = blk.expert_param_count() // E
        inactive += per_expert * max(E - k, 0)
    return ParamCount(total=int(total), active=int(total - inactive))


def mlp_width(mlp: nn.Module) -> int:
    """Intermediate width of a (shared-expert) MLP: gate_proj / up_proj / w1 / fc1 Linear out_features, half a fused
    gate_up_proj Linear's, or the I of stacked [n, I, H] gate_proj / up_proj tensors."""
    for attr in ("gate_proj", "up_proj", "w1", "fc1"):
        lin = getattr(mlp, attr, None)
        if isinstance(lin, nn.Linear):
            return lin.out_features
        if isinstance(lin, torch.Tensor) and lin.dim() == 3:
            return lin.shape[1]
    fused = getattr(mlp, "gate_up_proj", None)
    if isinstance(fused, nn.Linear):
        return fused.out_features // 2
    raise ValueError(f"{type(mlp).__name__}: cannot find the shared expert's gate/up projection")


def _dtype_name(model: nn.Module) -> str:
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    return dtypes[0] if len(dtypes) == 1 else "mixed(" + ",".join(dtypes) + ")"


def inspect_model(model: nn.Module) -> dict:
    """JSON-able summary: family, num_layers, moe_layers, num_experts, top_k, expert_intermediate_size,
    shared_experts {count, width}, params_total, params_active, dtype (plus hidden_size, vocab_size).

    Raises `UnsupportedModelError` for dense or unknown models (message names what was found)."""
    adapter = resolve_adapter(model)
    adapter.verify(model)                  # canonical expert views == the module (skipped on meta tensors)
    config = model.config
    blocks = adapter.moe_blocks(model)
    experts = sorted({b.num_experts for b in blocks})
    widths = sorted({b.intermediate_size for b in blocks})
    shared = [b.shared for b in blocks if b.shared is not None]
    if shared:
        mult = adapter.shared_multiplier_field
        count = int(getattr(config, mult) or 1) if mult and getattr(config, mult, None) else 1
        shared_info = {"count": count, "width": mlp_width(shared[0])}
    else:
        shared_info = {"count": 0, "width": 0}
    params = count_params(model)
    return {
        "family": adapter.family,
        "model_type": config.model_type,
        "num_layers": len(adapter.decoder_layers(model)),
        "moe_layers": [b.layer for b in blocks],
        "num_experts": experts[0] if len(experts) == 1 else experts,
        "top_k": adapter.top_k(config),
        "expert_intermediate_size": widths[0] if len(widths) == 1 else widths,
        "shared_experts": shared_info,
        "hidden_size": blocks[0].hidden_size,
        "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
        "params_total": params.total,
        "params_active": params.active,
        "dtype": _dtype_name(model),
        "expert_groups": adapter.num_groups(config),          # routing groups and the groups a token uses: the
        "topk_group": adapter.topk_group(config),              # feasibility rules read them (compressor/feasibility)
        "refusals": {k: getattr(adapter.spec, k) for k in ("expert_pruning", "neuron_slimming", "layer_dropping")
                     if getattr(adapter.spec, k)},
    }
