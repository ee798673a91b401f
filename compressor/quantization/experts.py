"""Routed experts one at a time: 2-D matrices of fused 3-D expert tensors, and each expert's own inputs.

transformers 5 stores an MoE layer's experts fused (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I]); the block's
canonical views (`compressor.families.block.MoEBlock`: gate / up [E, I, H], down [E, H, I]) are views into that
storage, so expert e's gate, up and down are the 2-D matrices gate[e] [I, H], up[e] [I, H], down[e] [H, I], and
writing a quantized matrix into the view writes the stored tensor. No library slices fused experts for GPTQ; this
file does (MoE-Quant, IST-DASLab, quantizes per expert the same way on its own expert modules).

Each expert's Hessians come only from the tokens routed to it (MoE-Quant): gate and up share
H_in[e] = 2/n_e * sum over x routed to e of x x^T, and down takes H_down[e] from h_e(x) = act(x Wg^T) * (x Wu^T)
of the same tokens (the family's own activation, `MoEBlock.expert_hidden`).

    rec = RoutedInputs(blk)            # hooks blk.experts; call rec.remove() (or use `with`)
    ... forward the layer ...
    rec.tokens[e], rec.inputs[e].hessian(), rec.hidden[e].hessian()
"""
from __future__ import annotations

import torch

from compressor.quantization.gptq import HessianSum

PROJECTIONS = ("gate", "up", "down")


def expert_matrices(blk, e: int) -> dict[str, torch.Tensor]:
    """{"gate": [I, H] (absent for up-only experts), "up": [I, H], "down": [H, I]}: views into expert e's storage."""
    gate, up, down = blk.canonical()
    out = {"up": up[e], "down": down[e]}
    if gate is not None:
        out["gate"] = gate[e]
    return {p: out[p] for p in PROJECTIONS if p in out}


class RoutedInputs:
    """Per-expert Hessian sums of the tokens routed to each expert, filled by a forward pre-hook on the experts
    module, whose call is experts(hidden [T, H], top_k_index [T, k], top_k_weights [T, k])."""

    def __init__(self, blk):
        if not blk.routed_call:
            raise ValueError(f"{blk.name}: the experts module is not called with (hidden, top_k_index, "
                             "top_k_weights), so the tokens routed to each expert cannot be read; quantize this "
                             "family with method rtn")
        E, I, H = blk.num_experts, blk.intermediate_size, blk.hidden_size
        dev = blk.device
        self.blk = blk
        self.inputs = [HessianSum(H, dev) for _ in range(E)]
        self.hidden = [HessianSum(I, dev) for _ in range(E)]
        self.tokens = [0] * E
        self._hook = blk.experts.register_forward_pre_hook(self._collect, with_kwargs=True)

    @torch.no_grad()
    def _collect(self, module, args, kwargs):
        values = list(args) + [kwargs[k] for k in ("hidden_states", "top_k_index", "top_k_weights") if k in kwargs]
        hidden, index = values[0], values[1]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        index = index.reshape(hidden.shape[0], -1)
        for e in torch.unique(index).tolist():
            if not 0 <= e < len(self.tokens):
                continue                                        # zero / null experts carry no weights
            x = hidden[(index == e).any(-1)].float()
            self.tokens[e] += x.shape[0]
            self.inputs[e].add(x)
            self.hidden[e].add(self.blk.expert_hidden(x.to(hidden.dtype), e).float())

    def remove(self) -> None:
        self._hook.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
