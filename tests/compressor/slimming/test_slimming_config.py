"""Slimming configs: JSON round-trip, validation messages, versions; reports serialise to JSON."""
import json

import pytest

from compressor.slimming import (ExpertPruneConfig, LayerDropConfig, NeuronSlimConfig, SparsifyConfig,
                                 config_from_dict, slim_neurons_)
from compressor.testing import tiny_moe

CONFIGS = [NeuronSlimConfig(keep_ratio=0.25), ExpertPruneConfig(experts_keep=6), LayerDropConfig(layers_drop=2),
           SparsifyConfig(sparsity=0.7, allocation="owl", owl_lambda=0.1),
           SparsifyConfig(sparsity=0.6, allocation="dlp", dlp_statistic="mean", calibration="dense")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.kind}-{getattr(c, 'calibration', '')}")
def test_configs_round_trip_through_json(cfg):
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["kind"] == cfg.kind and data["version"] == 1
    assert type(cfg).from_dict(data) == cfg
    assert config_from_dict(data) == cfg


@pytest.mark.parametrize("make, message", [
    (lambda: NeuronSlimConfig(keep_ratio=0.0), "keep_ratio must be in"),
    (lambda: NeuronSlimConfig(keep_ratio=1.5), "keep_ratio must be in"),
    (lambda: ExpertPruneConfig(experts_keep=0), "positive integer"),
    (lambda: LayerDropConfig(layers_drop=-1), "non-negative"),
    (lambda: SparsifyConfig(sparsity=1.0), r"sparsity must be in \[0, 1\)"),
    (lambda: SparsifyConfig(allocation="magic"), "allocation must be one of"),
    (lambda: SparsifyConfig(calibration="greedy"), "calibration must be one of"),
    (lambda: NeuronSlimConfig(keep_ratio=0.5, version=2), "version 2 is not supported"),
    (lambda: NeuronSlimConfig.from_dict({"keep_ratio": 0.5, "ratio": 1}), r"unknown field\(s\) \['ratio'\]"),
    (lambda: NeuronSlimConfig.from_dict({"kind": "sparsify"}), "expected 'slim_neurons'"),
])
def test_invalid_configs_say_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_target_width_rounds_to_nearest_and_keeps_one():
    assert NeuronSlimConfig(keep_ratio=0.5).target_width(16) == 8
    assert NeuronSlimConfig(keep_ratio=0.3).target_width(16) == 5        # 4.8 -> 5
    assert NeuronSlimConfig(keep_ratio=0.01).target_width(16) == 1


def test_report_is_json(helpers):
    model = tiny_moe("mixtral")
    neurons, _, _ = helpers.scores(model)
    report = slim_neurons_(model, neurons, NeuronSlimConfig(keep_ratio=0.5))
    data = json.loads(json.dumps(report.to_dict(with_ids=True)))
    assert data["operation"] == "slim_neurons" and data["width"] == 8
    assert data["params_after"]["total"] == report.params_after.total
    assert len(data["layers"]) == 2 and len(data["layers"][0]["kept"]) == 8
    assert 0.5 < data["layers"][0]["score_kept"] <= 1.0
