"""apply_slimming_ with an ImportanceReport, and `python -m compressor slim` end to end on a tiny saved model."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.cli import main
from compressor.importance import AnalyzeConfig, analyze
from compressor.recipe import SlimmingConfig
from compressor.slimming import SparsifyConfig, collect_wanda_inputs, sparsify_
from compressor.slimming.apply import apply_slimming_
from compressor.testing import char_tokenizer, tiny_inputs, tiny_moe

TEXT = ("We the people of the United States, in order to form a more perfect union, establish justice, insure "
        "domestic tranquility, provide for the common defence, promote the general welfare. ") * 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny DeepSeek-V3 (dense layer 0, group routing, shared expert) with a one-character-per-token tokenizer."""
    d = tmp_path_factory.mktemp("tiny-deepseek")
    char_tokenizer().save_pretrained(d)
    tiny_moe("deepseek_v3").save_pretrained(d)
    (d / "calib.txt").write_text(TEXT)
    return d


def test_apply_uses_the_named_scores_in_order(helpers):
    model = tiny_moe("qwen2_moe", layers=3)
    batches = [tiny_inputs(seq=16, seed=s) for s in range(2)]
    importance = analyze(model, batches, config=AnalyzeConfig(taylor=False))
    cfg = SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation", experts_keep=6, expert_score="reap",
                         layers_drop=1, sparsity=0.3, sparsity_allocation="owl")
    result = apply_slimming_(model, importance, cfg, batches=batches)
    neurons, experts, layers, sparse = result.reports
    for layer, row in zip(importance.experts.layers, importance.experts.reap):
        assert experts.kept[layer] == sorted(row.argsort(descending=True, stable=True)[:6].tolist())
    assert layers.dropped == [int(importance.layers.block_influence.argmin())]
    assert neurons.width == 8 and sparse.config.allocation == "owl" and len(sparse.layers) == 2
    assert result.scores_used == {"neurons": "activation", "experts": "reap", "layers": "block_influence",
                                  "sparsity": "wanda, sequential (each layer's norms measured with the layers below "
                                              "pruned); layer ratios: wanda (recollected on the slimmed model)"}
    data = json.loads(json.dumps(result.to_dict()))
    assert [op["operation"] for op in data["operations"]] == ["slim_neurons", "prune_experts", "drop_layers",
                                                              "sparsify"]


@pytest.mark.parametrize("score", ["ean_sum", "man"])
def test_apply_keeps_the_experts_with_the_highest_named_output_norm_score(score):
    model = tiny_moe("qwen2_moe")
    importance = analyze(model, [tiny_inputs(seq=16)], config=AnalyzeConfig(want=("experts",), taylor=False))
    report = apply_slimming_(model, importance, SlimmingConfig(experts_keep=4, expert_score=score)).reports[0]
    rows = importance.experts.score(score)
    for layer, row in zip(importance.experts.layers, rows):
        assert report.kept[layer] == sorted(row.argsort(descending=True, stable=True)[:4].tolist())


def test_sparsity_alone_reuses_the_reports_wanda_statistics():
    model = tiny_moe("olmoe")
    twin = tiny_moe("olmoe")
    batches = [tiny_inputs(seq=16)]
    importance = analyze(model, batches, config=AnalyzeConfig(want=("wanda",), taylor=False))
    result = apply_slimming_(model, importance, SlimmingConfig(sparsity=0.5, sparsity_allocation="dlp",
                                                               sparsity_calibration="dense"))
    assert result.scores_used == {"sparsity": "wanda (from the importance report)"}
    sparsify_(twin, collect_wanda_inputs(twin, batches), SparsifyConfig(sparsity=0.5, allocation="dlp",
                                                                        calibration="dense"))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("allocation, label", [
    ("uniform", "wanda, sequential (each layer's norms measured with the layers below pruned)"),
    ("dlp", "wanda, sequential (each layer's norms measured with the layers below pruned); layer ratios: wanda "
            "(from the importance report)"),
], ids=["uniform", "dlp"])
def test_sequential_sparsity_follows_the_recipe_fields(allocation, label):
    model, twin = tiny_moe("olmoe"), tiny_moe("olmoe")
    batches = [tiny_inputs(seq=16)]
    importance = analyze(model, batches, config=AnalyzeConfig(want=("wanda",), taylor=False))
    cfg = SlimmingConfig(sparsity=0.5, sparsity_allocation=allocation, sparsity_dlp_statistic="mean")
    result = apply_slimming_(model, importance, cfg, batches=batches)
    assert result.scores_used == {"sparsity": label}
    assert result.reports[0].config == SparsifyConfig(sparsity=0.5, allocation=allocation, dlp_statistic="mean",
                                                      calibration="sequential")
    sparsify_(twin, collect_wanda_inputs(twin, batches), result.reports[0].config, batches=batches)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_sequential_sparsity_without_batches_is_refused_before_any_cut():
    model = tiny_moe("olmoe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    importance = analyze(model, [tiny_inputs()], config=AnalyzeConfig(taylor=False))
    with pytest.raises(ValueError, match="sequential sparsity calibration .* pass calibration batches"):
        apply_slimming_(model, importance, SlimmingConfig(experts_keep=4, sparsity=0.5))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sparsity_after_cuts_without_batches_is_refused():
    model = tiny_moe("olmoe")
    importance = analyze(model, [tiny_inputs()], config=AnalyzeConfig(taylor=False))
    with pytest.raises(ValueError, match="pass calibration batches"):
        apply_slimming_(model, importance, SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation",
                                                          sparsity=0.5, sparsity_calibration="dense"))


def test_slim_cli_writes_a_checkpoint_and_report(model_dir, tmp_path, capsys, helpers):
    out = tmp_path / "out"
    args = ["slim", str(model_dir), "--expert-keep-ratio", "0.5", "--experts-keep", "4", "--layers-drop", "1",
            "--out", str(out), "--tokens", "128", "--seq-len", "32", "--batch-size", "2",
            "--text", str(model_dir / "calib.txt"), "--no-cache"]
    assert main(args) == 0
    digest = json.loads(capsys.readouterr().out)
    report = json.loads((out / "slim_report.json").read_text())
    ckpt = out / "checkpoint"
    assert digest["params_after"] == report["params_after"]
    assert helpers.safetensors_numel(ckpt) == report["params_after"]["total"] < report["params_before"]["total"]
    assert report["checkpoint"]["reload_max_abs_logit_diff"] <= 1e-6
    assert report["scores_used"] == {"neurons": "taylor", "experts": "reap", "layers": "block_influence"}
    assert report["scores"]["tokens"] == 128 and report["scores"]["analyze"]["taylor"] is True
    assert [op["operation"] for op in report["operations"]] == ["slim_neurons", "prune_experts", "drop_layers"]
    reloaded = AutoModelForCausalLM.from_pretrained(ckpt)
    assert reloaded.config.moe_intermediate_size == 8 and reloaded.config.n_routed_experts == 4
    assert reloaded.config.num_hidden_layers == 2
    assert (ckpt / "tokenizer.json").is_file()
    assert main(args) == 1                                                       # refuses to overwrite
    assert "already holds a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("calibration", ["sequential", "dense"])
def test_slim_cli_passes_the_sparsity_calibration_and_dlp_statistic(model_dir, tmp_path, capsys, calibration):
    out = tmp_path / "out"
    assert main(["slim", str(model_dir), "--sparsity", "0.5", "--allocation", "dlp", "--dlp-statistic", "mean",
                 "--calibration", calibration, "--out", str(out), "--tokens", "128", "--seq-len", "32",
                 "--text", str(model_dir / "calib.txt"), "--no-cache"]) == 0
    report = json.loads((out / "slim_report.json").read_text())
    assert report["slimming"]["sparsity_calibration"] == calibration
    assert report["slimming"]["sparsity_dlp_statistic"] == "mean"
    config = report["operations"][0]["config"]
    assert (config["calibration"], config["dlp_statistic"], config["allocation"]) == (calibration, "mean", "dlp")
    assert report["scores_used"]["sparsity"].startswith("wanda, sequential" if calibration == "sequential"
                                                        else "wanda (from the importance report)")


def test_slim_cli_reports_bad_settings_without_a_traceback(model_dir, tmp_path, capsys):
    assert main(["slim", str(model_dir), "--expert-keep-ratio", "1.5", "--out", str(tmp_path)]) == 1
    assert "--expert-keep-ratio" in capsys.readouterr().err


def test_slim_after_analyze_reuses_its_scores(model_dir, tmp_path, capsys):
    """`analyze` computes every kind (with --taylor), so `slim` on the same model and calibration finds them under the
    same cache key instead of running its own calibration pass."""
    cal = ["--tokens", "128", "--seq-len", "32", "--batch-size", "2", "--text", str(model_dir / "calib.txt"),
           "--cache-dir", str(tmp_path / "cache")]
    assert main(["analyze", str(model_dir), "--out", str(tmp_path / "scores"), "--taylor", *cal]) == 0
    capsys.readouterr()
    assert main(["slim", str(model_dir), "--expert-keep-ratio", "0.5", "--experts-keep", "4", "--out",
                 str(tmp_path / "out"), *cal]) == 0
    report = json.loads((tmp_path / "out" / "slim_report.json").read_text())
    assert report["scores"]["cache"]["hit"] is True
