"""stream_slim writes exactly the tensors the in-memory slimming gives, for every cut and every tiny family."""
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.importance.analyze import AnalyzeConfig, analyze
from compressor.recipe import SlimmingConfig
from compressor.slimming.apply import apply_slimming_
from compressor.stream.shards import INDEX_FILE
from compressor.stream.slim import stream_slim
from compressor.testing import tiny_inputs
from tests.compressor.stream.models import padded_batches

CUTS = {
    "neurons": SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation"),
    "experts": SlimmingConfig(experts_keep=4, expert_score="reap"),
    "layers": SlimmingConfig(layers_drop=1),
    "sparsity": SlimmingConfig(sparsity=0.5, sparsity_allocation="owl"),                 # sequential calibration
    "sparsity_dense": SlimmingConfig(sparsity=0.5, sparsity_allocation="owl", sparsity_calibration="dense"),
    "dlp_mean": SlimmingConfig(experts_keep=4, expert_score="reap", sparsity=0.6, sparsity_allocation="dlp",
                               sparsity_dlp_statistic="mean"),
    "uniform": SlimmingConfig(layers_drop=1, sparsity=0.5, sparsity_allocation="uniform"),  # no statistics sweep
    "all": SlimmingConfig(expert_keep_ratio=0.5, neuron_score="taylor", experts_keep=4, expert_score="frequency",
                          layers_drop=1, sparsity=0.4, sparsity_allocation="dlp"),
}


@pytest.fixture(scope="module")
def scored(family_ckpt):
    family, folder, model = family_ckpt
    return family, folder, model, analyze(model, padded_batches(), config=AnalyzeConfig(taylor=True))


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_streamed_slimming_is_bitwise_the_in_memory_one(scored, cut, tmp_path):
    family, folder, model, report = scored
    cfg = CUTS[cut]
    result = stream_slim(folder, report, cfg, tmp_path / "out", batches=padded_batches())
    want = copy.deepcopy(model)
    expected = apply_slimming_(want, report, cfg, batches=padded_batches())
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                               experts_implementation=model.config._experts_implementation)
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys(), family
    for k in b:
        assert torch.equal(a[k], b[k]), f"{family} {cut}: {k}"
    assert result.params_after == expected.params_after
    ignore = ("_name_or_path", "dtype")
    assert {k: v for k, v in got.config.to_dict().items() if k not in ignore} == \
        {k: v for k, v in want.config.to_dict().items() if k not in ignore}
    with torch.no_grad():
        ids = tiny_inputs(batch=1, seq=10)
        # same tensors; a freshly built module may sum in another order than the one cut in place (export's
        # verify_reload uses the same tolerance)
        torch.testing.assert_close(got(input_ids=ids).logits, want(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    if cfg.sparsity:
        assert result.sparsity["achieved"] == pytest.approx(expected.reports[-1].achieved)
        assert result.sparsity["layers"] == [vars(s) for s in expected.reports[-1].layers]   # targets, statistics
        assert result.scores_used == expected.scores_used


def test_output_is_one_shard_per_layer_with_an_index(scored, tmp_path):
    family, folder, model, report = scored
    result = stream_slim(folder, report, CUTS["experts"], tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    L = model.config.num_hidden_layers
    assert len(files) == L + 1 and files[0] == f"model-00001-of-{L + 1:05d}.safetensors"
    assert (tmp_path / "out" / INDEX_FILE).is_file()
    assert result.bytes_written == sum((tmp_path / "out" / f).stat().st_size for f in files)
    assert not list((tmp_path / "out").glob(".part-*"))


def test_a_non_empty_output_folder_is_refused_and_kept(scored, tmp_path):
    _, folder, _, report = scored
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty"):
        stream_slim(folder, report, CUTS["neurons"], out)
    assert (out / "mine.txt").read_text() == "keep me"


MERGES = {
    "ream": SlimmingConfig(experts_keep=4, expert_merge="ream", merge_group_size=4),
    "merge_all": SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation", experts_keep=5,
                                expert_merge="m_smoe", layers_drop=1),
}


@pytest.mark.parametrize("cut", sorted(MERGES))
def test_streamed_merging_is_bitwise_the_in_memory_one(scored, cut, tmp_path):
    """Expert merging layer by layer: each loaded layer calibrated on the activations of the layers merged below,
    as `merge_experts_` does in memory; routing groups (deepseek_v3) refused by both before any work."""
    family, folder, model, report = scored
    cfg = MERGES[cut]
    want = copy.deepcopy(model)
    if family == "deepseek_v3":
        for run in (lambda: stream_slim(folder, report, cfg, tmp_path / "out", batches=padded_batches()),
                    lambda: apply_slimming_(want, report, cfg, batches=padded_batches())):
            with pytest.raises(ValueError, match="groups"):
                run()
        assert not (tmp_path / "out").exists()
        return
    result = stream_slim(folder, report, cfg, tmp_path / "out", batches=padded_batches())
    expected = apply_slimming_(want, report, cfg, batches=padded_batches())
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                               experts_implementation=model.config._experts_implementation)
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in b:
        assert torch.equal(a[k], b[k]), f"{family} {cut}: {k}"
    merged = [r for r in result.reports if r.config.kind == "merge_experts"][0]
    assert merged.groups == [r for r in expected.reports if r.config.kind == "merge_experts"][0].groups
    assert result.params_after == expected.params_after
