"""Block-wise distillation: the loss rule on hand-made tensors, and on a tiny model a recovered checkpoint whose
blocks reproduce the original blocks better than the plain cut, in the CLI and the recipe."""
import json

import pytest
import torch

from compressor import cli
from compressor.importance.analyze import AnalyzeConfig, analyze
from compressor.pipeline import run_recipe
from compressor.recipe import Recipe, SlimmingConfig
from compressor.stream.blockwise import BlockDistillConfig, block_loss
from compressor.stream.evaluate import stream_quality
from compressor.stream.slim import stream_slim
from compressor.testing import tiny_inputs
from tests.compressor.stream.models import padded_batches

pytestmark = pytest.mark.usefixtures("studio_cache")


def test_block_loss_is_the_mean_squared_error_over_real_tokens():
    target = torch.zeros(1, 3, 2)
    output = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: (1 + 1) / 2 = 1; token 1: (4 + 0) / 2 = 2; token 2 is padding
    assert block_loss(output=output, target=target, mask=mask).item() == pytest.approx(1.5)
    assert block_loss(output=output, target=target, mask=None).item() == pytest.approx((1 + 2 + 81) / 3)


def test_recovery_lowers_every_blocks_loss_and_the_kl_on_its_tokens(family_ckpt, tmp_path):
    family, folder, model = family_ckpt
    report = analyze(model, padded_batches(), config=AnalyzeConfig(taylor=False, want=("neurons",)))
    cut = SlimmingConfig(expert_keep_ratio=0.25, neuron_score="activation")
    plain = stream_slim(folder, report, cut, tmp_path / "plain", batches=padded_batches())
    rec = stream_slim(folder, report, cut, tmp_path / "rec", batches=padded_batches(),
                      block_distill=BlockDistillConfig(steps=30, lr=1e-3))
    assert plain.block_distill is None and rec.params_after == plain.params_after
    layers = [r for r in rec.block_distill["layers"] if "loss_before" in r]
    assert layers and all(r["loss_after"] < r["loss_before"] for r in layers), family
    # on random tiny models held-out gains are within noise; on the tokens it was fitted to the model must improve
    windows = padded_batches()[0]["input_ids"]
    kl = {k: stream_quality(tmp_path / k, folder, windows, batch_size=2).kl_to_baseline for k in ("plain", "rec")}
    assert kl["rec"] < kl["plain"], (family, kl)


def test_recovery_improves_held_out_quality_of_the_demo(tmp_path):
    """The trained demo model cut to half its expert width: 20 steps per block already lower held-out KL."""
    from compressor.data import calibration_batches, eval_windows
    from compressor.demo import demo_model_dir
    from compressor.sources import load_tokenizer
    from compressor.stream.analyze import stream_analyze

    demo = demo_model_dir()
    tok = load_tokenizer(demo)
    cal = calibration_batches(tok, tokens=2048, seq_len=128, batch_size=4)
    windows = eval_windows(tok, tokens=2048, seq_len=128)
    report = stream_analyze(demo, cal, config=AnalyzeConfig(taylor=False, want=("neurons",)))
    cut = SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation")
    stream_slim(demo, report, cut, tmp_path / "plain")
    stream_slim(demo, report, cut, tmp_path / "rec", batches=cal, block_distill=BlockDistillConfig(steps=20))
    q = {k: stream_quality(tmp_path / k, demo, windows) for k in ("plain", "rec")}
    assert q["rec"].kl_to_baseline < 0.9 * q["plain"].kl_to_baseline
    assert q["rec"].perplexity < q["plain"].perplexity


def test_block_distillation_refuses_sparsity(family_ckpt, tmp_path):
    _, folder, model = family_ckpt
    report = analyze(model, padded_batches(), config=AnalyzeConfig(taylor=False, want=("neurons", "wanda")))
    with pytest.raises(ValueError, match="cannot follow sparsity"):
        stream_slim(folder, report, SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation", sparsity=0.3),
                    tmp_path / "x", batches=padded_batches(), block_distill=BlockDistillConfig(steps=2))


def test_cli_and_recipe_recover_layer_by_layer(tiny_dir, tmp_path, capsys):
    assert cli.main(["slim", str(tiny_dir), "--out", str(tmp_path / "cli"), "--expert-keep-ratio", "0.5",
                     "--neuron-score", "activation", "--tokens", "256", "--seq-len", "32", "--no-cache",
                     "--block-distill-steps", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["streamed"] is True
    report = json.loads((tmp_path / "cli" / "slim_report.json").read_text())
    assert report["block_distill"]["config"] == {"steps": 5, "lr": 1e-4}
    recipe = Recipe.parse({"model": str(tiny_dir), "stages": 1, "calibration": {"tokens": 256, "seq_len": 32},
                           "slimming": {"expert_keep_ratio": 0.5, "neuron_score": "activation"},
                           "distill": {"steps": 0, "blockwise_steps": 5},
                           "evaluate": {"tokens": 256, "seq_len": 32, "speed": False}})
    result = run_recipe(recipe, tmp_path / "run")
    assert result.metrics["execution"]["reason"] == "distill.blockwise_steps asks for layer-local recovery"
    assert result.stages[0]["slimming"]["block_distill"]["config"]["steps"] == 5
    recipe.execution.streaming = "off"
    with pytest.raises(ValueError, match="blockwise_steps is layer-local recovery"):
        run_recipe(recipe, tmp_path / "off")


def test_a_block_that_training_made_worse_keeps_the_plain_cut(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    from compressor.sources import load_model
    model = load_model(str(tiny_dir)).model
    report = analyze(model, padded_batches(), config=AnalyzeConfig(taylor=False, want=("neurons",)))
    cut = SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation")
    stream_slim(tiny_dir, report, cut, tmp_path / "plain")
    wild = stream_slim(tiny_dir, report, cut, tmp_path / "wild", batches=padded_batches(),
                       block_distill=BlockDistillConfig(steps=5, lr=1.0))
    assert not any(r["trained_kept"] for r in wild.block_distill["layers"])
    for f in sorted((tmp_path / "plain").glob("*.safetensors")):
        a, b = load_file(f), load_file(tmp_path / "wild" / f.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
