import time

import pytest
import torch
from torch import nn

from compressor.evaluate.size import checkpoint_bytes, forward_peak_bytes, size_metrics
from compressor.evaluate.speed import measure_speed
from compressor.inspect import count_params
from compressor.testing import tiny_inputs, tiny_moe


def test_peak_memory_of_a_known_allocation():
    class Blob(nn.Module):
        """Holds 4 MB and 1 MB at once, then frees the 4 MB: the peak is 5 MB."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, use_cache=False):
            big = torch.ones(1 << 20)                    # 4 MB
            small = torch.ones(1 << 18)                  # 1 MB while big is alive
            del big
            return small

    peak, method = forward_peak_bytes(Blob(), torch.zeros(1, 1, dtype=torch.long))
    assert method == "torch_profiler" and peak == 5 << 20


def test_size_counts_bytes_and_peak(tmp_path):
    model = tiny_moe("qwen3_moe")
    s = size_metrics(model, sample_ids=tiny_inputs(batch=2, seq=16))
    counts = count_params(model)
    assert (s.params_total, s.params_active) == (counts.total, counts.active)
    assert s.checkpoint_bytes == s.weight_bytes == counts.total * 4 and s.checkpoint_bytes_from == "state_dict"
    assert s.peak_memory_method == "torch_profiler"
    logits = 2 * 16 * 128 * 4                                  # the [2, 16, 128] fp32 logits are alive at the end
    assert s.peak_memory_bytes >= s.weight_bytes + logits
    model.save_pretrained(tmp_path / "ck")
    on_disk = sum(f.stat().st_size for f in (tmp_path / "ck").glob("*.safetensors"))
    assert checkpoint_bytes(tmp_path / "ck") == on_disk
    assert size_metrics(model, checkpoint_dir=tmp_path / "ck").checkpoint_bytes_from == "files"
    assert checkpoint_bytes(tmp_path / "missing") is None


class Slowed(nn.Module):
    """The same model, 30 ms slower per forward call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kw):
        time.sleep(0.03)
        return self.inner(**kw)


def test_speed_ratio_points_the_right_way():
    model = tiny_moe("qwen3_moe")
    s = measure_speed(model, Slowed(model), prompt_ids=tiny_inputs(batch=2, seq=16), new_tokens=3, rounds=1)
    assert s.prefill_tokens_per_s > 0 and s.decode_tokens_per_s > 0
    assert s.prefill_speedup > 1.0 and s.decode_speedup > 1.0
    assert s.prefill_speedup == pytest.approx(s.prefill_tokens_per_s / s.baseline_prefill_tokens_per_s)
    assert s.settings["prefill_batch"] == 2 and s.settings["new_tokens"] == 3 and s.settings["threads"] >= 1
    alone = measure_speed(model, prompt_ids=tiny_inputs(batch=2, seq=16), new_tokens=2, rounds=1)
    assert alone.prefill_speedup is None and alone.baseline_decode_tokens_per_s is None
