"""Helpers for the slimming tests: logits, seeded random scores, and the conformance suite's router mask that sets
dropped experts' logits to -inf inside the router call (the reference that expert pruning must equal)."""
from __future__ import annotations

import pytest
import torch

from compressor.families import resolve_adapter
from compressor.conformance import masked_router
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


@pytest.fixture
def helpers():
    class H:
        logits = staticmethod(logits_of)
        scores = staticmethod(random_scores)
        masked_router = staticmethod(masked_router)
        safetensors_numel = staticmethod(stored_numel)
    return H
