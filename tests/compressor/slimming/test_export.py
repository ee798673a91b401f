"""Every cut combined, saved, reloaded with stock transformers (eager and grouped_mm): same logits, counts match the
files, config.json names the expert count under every alias."""
import json

import pytest
import torch

from compressor.inspect import count_params
from compressor.slimming import (ExpertPruneConfig, LayerDropConfig, NeuronSlimConfig, SparsifyConfig,
                                 StructureMismatchError, collect_wanda_inputs, drop_layers_, prune_experts_,
                                 save_checkpoint, slim_neurons_, sparsify_, verify_reload)
from compressor.slimming.export import expert_count_aliases
from compressor.testing import TINY_FAMILIES, tiny_inputs, tiny_moe

KEEP = {"deepseek_v3": 4}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_all_cuts_save_and_reload_exactly(family, tmp_path, helpers):
    model = tiny_moe(family, layers=3)
    ids = tiny_inputs()
    neurons, experts, layers = helpers.scores(model, seed=4)
    slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=0.5))
    prune_experts_(model, experts, ExpertPruneConfig(experts_keep=KEEP.get(family, 6)))
    sparsify_(model, collect_wanda_inputs(model, [ids]), SparsifyConfig(sparsity=0.3, allocation="dlp"),
              batches=[ids])
    report = drop_layers_(model, layers, LayerDropConfig(layers_drop=1))
    nbytes = save_checkpoint(model, None, tmp_path, extra_card={"family": family})
    assert nbytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert helpers.safetensors_numel(tmp_path) == report.params_after.total == count_params(model).total
    for impl in ("eager", "grouped_mm"):
        assert verify_reload(tmp_path, model, ids, experts_implementation=impl) <= 1e-6
    config = json.loads((tmp_path / "config.json").read_text())
    n = KEEP.get(family, 6)
    for key in expert_count_aliases(model.config):
        assert config[key] == n, key
    assert "Compressed" in (tmp_path / "README.md").read_text()


def test_qwen3_writes_both_spellings_of_the_expert_count(tmp_path, helpers):
    model = tiny_moe("qwen3_moe")
    _, experts, _ = helpers.scores(model)
    prune_experts_(model, experts, ExpertPruneConfig(experts_keep=5))
    save_checkpoint(model, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_experts"] == config["num_local_experts"] == 5


def test_a_stale_config_is_refused_before_saving(tmp_path):
    model = tiny_moe("mixtral")
    model.config.intermediate_size = 8                      # the experts still hold width 16
    with pytest.raises(StructureMismatchError, match="gate_up_proj"):
        save_checkpoint(model, None, tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_existing_checkpoint_is_not_overwritten_by_accident(tmp_path):
    model = tiny_moe("olmoe")
    save_checkpoint(model, None, tmp_path)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        save_checkpoint(model, None, tmp_path)
    save_checkpoint(model, None, tmp_path, overwrite=True)


def test_verify_reload_catches_a_difference(tmp_path):
    model = tiny_moe("mixtral")
    save_checkpoint(model, None, tmp_path)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    with pytest.raises(RuntimeError, match="differ"):
        verify_reload(tmp_path, model, tiny_inputs())
