"""Helpers for the slimming tests: logits, seeded random scores, and a router mask that sets dropped experts' logits
to -inf inside the router call (the reference that expert pruning must equal)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from compressor.families import resolve_adapter
from compressor.slimming.export import stored_numel


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def random_scores(model, seed: int = 0):
    """(neuron scores {layer: [E, I]}, expert scores {layer: [E]}, layer scores [L]) from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    adapter = resolve_adapter(model)
    blocks = adapter.moe_blocks(model)
    neurons = {b.layer: torch.rand(b.num_experts, b.intermediate_size, generator=g) for b in blocks}
    experts = {b.layer: torch.rand(b.num_experts, generator=g) for b in blocks}
    layers = torch.rand(len(adapter.decoder_layers(model)), generator=g)
    return neurons, experts, layers


@contextmanager
def masked_router(model, dropped: dict[int, list[int]]):
    """Within the block, every MoE router adds -inf to the logits of `dropped[layer]`: the router's
    torch.nn.functional.linear output gets a -inf column mask during the router call. A score-correction bias
    (DeepSeek) is set to -inf on those experts too, since sigmoid(-inf) = 0 would still let the bias pick them."""
    blocks = resolve_adapter(model).moe_blocks(model)
    real_linear = torch.nn.functional.linear
    saved = []
    try:
        for blk in blocks:
            r = blk.router
            mask = torch.zeros(blk.num_experts)
            mask[dropped[blk.layer]] = float("-inf")
            orig = r.forward

            def forward(*args, _orig=orig, _mask=mask, **kw):
                def linear(*a, **k):
                    return real_linear(*a, **k) + _mask.to(a[0].device)
                torch.nn.functional.linear = linear
                try:
                    return _orig(*args, **kw)
                finally:
                    torch.nn.functional.linear = real_linear
            r.forward = forward
            bias = getattr(r, "e_score_correction_bias", None)
            saved.append((r, None if bias is None else bias.clone()))
            if bias is not None:
                bias[dropped[blk.layer]] = float("-inf")
        yield
    finally:
        torch.nn.functional.linear = real_linear
        for r, bias in saved:
            del r.forward
            if bias is not None:
                r.e_score_correction_bias.copy_(bias)


@pytest.fixture
def helpers():
    class H:
        logits = staticmethod(logits_of)
        scores = staticmethod(random_scores)
        masked_router = staticmethod(masked_router)
        safetensors_numel = staticmethod(stored_numel)
    return H
