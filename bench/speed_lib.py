"""The arithmetic and model surgery behind `bench.speed`: MAC counts, slimmed copies, expert-input capture.

    macs_per_token(model.config, ctx=128.5)              # matmul multiply-adds one token costs at that context
    small = slimmed_copies(model, (0.75, 0.5, 0.25))     # {0.75: model', 0.5: model'', 0.25: model'''}
    experts, hidden, idx, w = capture_experts_input(model, ids)
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

KEEP_RATIOS = (0.75, 0.5, 0.25)
TARGET_SHARE = 0.80          # measured prefill speed-up must reach 80% of the theoretical active-FLOP ratio


def macs_per_token(config, *, ctx: float) -> float:
    """Multiply-adds per token of a Qwen3-MoE-style decoder at an average causal context of `ctx` tokens:

        per layer: H*(n_h*d) + 2*H*(n_kv*d) + (n_h*d)*H      q, k, v, o projections
                 + 2 * n_h * d * ctx                          scores q.k and the weighted sum of v
                 + H * E                                      router
                 + k * 3 * H * I                              the token's top-k experts (gate, up, down)
        + H * V                                               lm_head
    """
    H, E, k, I = config.hidden_size, config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size
    nh, nkv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or H // nh
    layer = H * nh * d + 2 * H * nkv * d + nh * d * H + 2 * nh * d * ctx + H * E + k * 3 * H * I
    return config.num_hidden_layers * layer + H * config.vocab_size


def expert_flops(*, tokens: int, top_k: int, hidden: int, width: int) -> float:
    """FLOPs of one MoE layer's experts over `tokens` tokens: 2 * T * k * 3 * H * I (matmuls only)."""
    return 2.0 * tokens * top_k * 3 * hidden * width


def slimmed_copies(model, ratios=KEEP_RATIOS, *, seed: int = 0) -> dict[float, torch.nn.Module]:
    """Copies of `model` with every expert slimmed to round(r * I) neurons, by `slim_neurons_` with seeded random
    scores (speed depends on the widths, not on which neurons stay). Built in a chain, largest first, so that only
    one copy of the next-larger model is in flight at a time."""
    from compressor.families import resolve_adapter
    from compressor.slimming import NeuronSlimConfig, slim_neurons_

    width0 = model.config.moe_intermediate_size
    out, prev, prev_r = {}, model, 1.0
    g = torch.Generator().manual_seed(seed)
    for r in sorted(ratios, reverse=True):
        m = copy.deepcopy(prev)
        blocks = resolve_adapter(m).moe_blocks(m)
        scores = {b.layer: torch.rand(b.num_experts, b.intermediate_size, generator=g) for b in blocks}
        target = round(r * width0)
        slim_neurons_(m, scores, NeuronSlimConfig(keep_ratio=target / m.config.moe_intermediate_size))
        if m.config.moe_intermediate_size != target:
            raise RuntimeError(f"slimming to {r} gave width {m.config.moe_intermediate_size}, expected {target}")
        out[r], prev, prev_r = m.eval(), m, r
    return out


@torch.no_grad()
def capture_experts_input(model, ids: torch.Tensor):
    """(experts module of the first MoE layer, hidden [T, H], top_k_index [T, k], top_k_weights [T, k]) as that
    module received them during one forward over `ids`."""
    from compressor.families import resolve_adapter
    experts = resolve_adapter(model).moe_blocks(model)[0].experts
    got = {}

    def hook(mod, args, kwargs):
        names = ("hidden_states", "top_k_index", "top_k_weights")
        vals = list(args) + [kwargs[n] for n in names[len(args):]]
        got["args"] = [v.detach().clone() for v in vals]

    h = experts.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        h.remove()
    return (experts, *got["args"])


def dense_references(hidden: torch.Tensor, top_k: int, width: int, *, seed: int = 0) -> dict:
    """Closures doing the experts' matmuls as plain dense ones, as if all T * k rows went to a single expert:
    gate and up [T*k, H] -> [T*k, I], then down [T*k, I] -> [T*k, H]: 2 * T * k * 3 * H * I FLOPs. Two weight layouts,
    because CPU kernels differ a lot between them (bf16 `x @ W` with W [in, out] is ~10x slower than `F.linear` with
    W [out, in] here): "linear" (nn.Linear's layout) and "matmul" (x @ W). The faster is the reference."""
    g = torch.Generator().manual_seed(seed)
    T, H = hidden.shape
    x = torch.randn(T * top_k, H, generator=g).to(hidden.dtype)
    wg, wu = (torch.randn(width, H, generator=g).to(hidden.dtype) * H ** -0.5 for _ in range(2))   # [out, in]
    wd = torch.randn(H, width, generator=g).to(hidden.dtype) * width ** -0.5
    wg_t, wu_t, wd_t = (w.t().contiguous() for w in (wg, wu, wd))                                  # [in, out]

    def linear():
        return F.linear(F.linear(x, wg) * F.linear(x, wu), wd)

    def matmul():
        return ((x @ wg_t) * (x @ wu_t)) @ wd_t
    return {"linear": linear, "matmul": matmul}
