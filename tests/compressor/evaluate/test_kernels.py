import pytest
import torch

from compressor.evaluate.kernels import (apply_kernel_, candidate_kernels, choose_experts_kernel, current_implementation,
                                         grouped_mm_aligned, safe_default_kernel_)
from compressor.families import resolve_adapter
from compressor.testing import tiny_inputs, tiny_moe


def test_chooser_times_eager_and_grouped_mm_and_never_batched_mm_on_cpu():
    model = tiny_moe("qwen3_moe")
    before = current_implementation(model)
    choice = choose_experts_kernel(model, sample_ids=tiny_inputs(batch=2, seq=16), repeats=1)
    assert choice.implementation in ("eager", "grouped_mm") and choice.device == "cpu"
    assert set(choice.probe_ms) >= {"eager/float32", "grouped_mm/float32"}
    assert not any(k.startswith("batched_mm") for k in choice.probe_ms)
    assert "batched_mm" in choice.skipped and current_implementation(model) == before
    pairs, _ = candidate_kernels(model)
    assert all(impl != "batched_mm" for impl, _ in pairs)
    apply_kernel_(model, choice)
    assert current_implementation(model) == choice.implementation
    with pytest.raises(ValueError, match="batched_mm is not used on CPU"):
        apply_kernel_(model, "batched_mm")


def test_unaligned_widths_fall_back_to_eager():
    model = tiny_moe("qwen3_moe")
    for blk in resolve_adapter(model).moe_blocks(model):
        blk.keep_neurons_(torch.arange(6).repeat(blk.num_experts, 1))      # 6 fp32 = 24 bytes, not a multiple of 16
    assert not grouped_mm_aligned(model)
    pairs, skipped = candidate_kernels(model)
    assert {p[0] for p in pairs} == {"eager"} and "grouped_mm" in skipped       # fp32, and bf16 where native
    model.set_experts_implementation("grouped_mm")
    assert safe_default_kernel_(model) == "eager"
    model(tiny_inputs())                                                  # runs
    choice = choose_experts_kernel(model, sample_ids=tiny_inputs(), repeats=1)
    assert choice.implementation == "eager"
