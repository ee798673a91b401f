"""Streamed perplexity, agreement and KL equal the in-memory figures for the same windows."""
import pytest
import torch

from compressor.evaluate.quality import compare_quality
from compressor.importance.analyze import AnalyzeConfig, analyze
from compressor.recipe import SlimmingConfig
from compressor.sources import load_model
from compressor.stream.evaluate import ReplayLM, final_hidden, stream_quality
from compressor.stream.slim import stream_slim
from compressor.testing import tiny_inputs
from tests.compressor.stream.models import padded_batches


def test_streamed_quality_equals_in_memory_quality(family_ckpt, tmp_path):
    family, folder, model = family_ckpt
    report = analyze(model, padded_batches(), config=AnalyzeConfig(taylor=False))
    stream_slim(folder, report, SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation"), tmp_path / "s")
    windows = tiny_inputs(batch=5, seq=16, seed=3)
    got = stream_quality(tmp_path / "s", folder, windows, batch_size=2)
    want = compare_quality(load_model(str(tmp_path / "s")).model, load_model(str(folder)).model, windows,
                           batch_size=2)
    assert got.tokens == want.tokens == 5 * 15
    assert got.perplexity == pytest.approx(want.perplexity, rel=1e-6), family
    assert got.baseline_perplexity == pytest.approx(want.baseline_perplexity, rel=1e-6)
    assert got.agreement == want.agreement and got.kl_to_baseline == pytest.approx(want.kl_to_baseline, rel=1e-5)
    assert got.perplexity != got.baseline_perplexity            # the cut changed the model


def test_replay_refuses_another_batch(family_ckpt):
    _, folder, _ = family_ckpt
    batches = [tiny_inputs(batch=1, seq=8, seed=0)]
    sk, hidden = final_hidden(folder, batches)
    sk.load_globals_()
    lm = ReplayLM(sk, batches, hidden)
    with pytest.raises(RuntimeError, match="another batch"):
        lm(input_ids=tiny_inputs(batch=1, seq=8, seed=9))
