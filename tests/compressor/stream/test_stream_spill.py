"""Activations past the spill limit live in memory-mapped files: the same bytes, so streamed scores, slimmed tensors
and evaluation equal the in-RAM run bitwise, and no spill file is left afterwards (also after an error)."""
import os

import pytest
import torch
from safetensors.torch import load_file

from compressor.importance.analyze import AnalyzeConfig
from compressor.recipe import Recipe, SlimmingConfig
from compressor.stream.analyze import stream_analyze
from compressor.stream.evaluate import stream_quality
from compressor.stream.skeleton import Skeleton
from compressor.stream.slim import stream_slim
from compressor.stream.spill import Spill, spill_limit_bytes
from compressor.stream.sweep import capture_inputs
from compressor.testing import tiny_inputs
from tests.compressor.stream.models import padded_batches, saved_tiny

BIG = 2**40          # never spills


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return saved_tiny(tmp_path_factory, "qwen3_moe")


def _tensors(report):
    out = {}
    for part in ("experts", "neurons", "layers"):
        scores = getattr(report, part)
        for name in scores.__dataclass_fields__:
            value = getattr(scores, name)
            if torch.is_tensor(value):
                out[f"{part}.{name}"] = value
            elif isinstance(value, dict):
                out.update({f"{part}.{name}.{k}": v for k, v in value.items()})
    return out


def test_the_limit_comes_from_the_recipe_the_environment_or_the_memory(monkeypatch):
    assert spill_limit_bytes(3, env={}) == 3 * 2**20
    assert spill_limit_bytes(None, env={"MOE_STUDIO_SPILL_MB": "5"}) == 5 * 2**20
    assert spill_limit_bytes(0, env={"MOE_STUDIO_SPILL_MB": "5"}) == 0             # the recipe wins
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "8gb")
    assert spill_limit_bytes(None, env={}) == 2 * 2**30                            # a quarter of the machine's memory
    with pytest.raises(ValueError, match="MOE_STUDIO_SPILL_MB='lots' is not a whole number of megabytes"):
        spill_limit_bytes(None, env={"MOE_STUDIO_SPILL_MB": "lots"})
    assert Recipe.parse({"execution": {"spill_mb": 0}}).execution.spill_mb == 0
    with pytest.raises(ValueError, match="execution.spill_mb"):
        Recipe.parse({"execution": {"spill_mb": -1}})


def test_past_the_limit_a_tensor_is_a_mapped_copy_and_ram_is_counted_while_it_lives(tmp_path):
    spill = Spill(tmp_path / "spill", limit_bytes=4000)
    a = torch.randn(10, 50)                                  # 2000 bytes: fits
    kept = spill.keep(a)
    assert kept is a and spill.in_ram == 2000
    b = torch.randn(10, 50, dtype=torch.bfloat16).mul_(3)
    c = torch.randn(2, 3, 200)                               # 4800 bytes: over the limit
    on_disk = spill.keep(c)
    assert on_disk is not c and torch.equal(on_disk, c) and spill.spilled_tensors == 1
    assert torch.equal(spill.keep(b), b) and spill.in_ram == 3000
    del a, kept
    assert spill.in_ram == 1000                              # freed tensors give their share back
    assert list((tmp_path / "spill").iterdir()) == []        # unlinked as soon as mapped
    on_disk.add_(1)                                          # a mapped copy is an ordinary tensor
    assert torch.equal(on_disk, c + 1)
    spill.close()
    assert not (tmp_path / "spill").exists() and torch.equal(on_disk, c + 1)


@pytest.mark.parametrize("taylor", [False, True])
def test_spilled_scores_equal_the_in_ram_scores_bitwise(ckpt, taylor, tmp_path):
    folder, _ = ckpt
    cfg = AnalyzeConfig(taylor=taylor)
    want = stream_analyze(folder, padded_batches(), config=cfg, spill=Spill(None, BIG))
    with Spill(tmp_path / "spill", 0) as spill:
        got = stream_analyze(folder, padded_batches(), config=cfg, spill=spill)
        layers = len(Skeleton.open(folder).layers)
        # every batch's hidden states once per layer boundary (+ the first capture)
        assert spill.spilled_tensors == len(padded_batches()) * (layers + 1)
    a, b = _tensors(got), _tensors(want)
    assert a.keys() == b.keys()
    for k in b:
        assert torch.equal(a[k], b[k]), k
    assert got.meta["ce_loss"] == want.meta["ce_loss"]
    assert not (tmp_path / "spill").exists()


@pytest.mark.parametrize("cut", ["sparsity", "experts_dense", "neurons_sparsity"])
def test_spilled_slimming_writes_the_same_tensors(ckpt, cut, tmp_path):
    folder, _ = ckpt
    cfg = {"sparsity": SlimmingConfig(sparsity=0.5),
           "experts_dense": SlimmingConfig(experts_keep=4, sparsity=0.5, sparsity_calibration="dense",
                                           sparsity_allocation="dlp"),              # a statistics sweep first
           "neurons_sparsity": SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation", sparsity=0.4)}[cut]
    report = stream_analyze(folder, padded_batches(), config=AnalyzeConfig(taylor=False))
    stream_slim(folder, report, cfg, tmp_path / "ram", batches=padded_batches(), spill=Spill(None, BIG))
    with Spill(tmp_path / "spill", 0) as spill:
        stream_slim(folder, report, cfg, tmp_path / "disk", batches=padded_batches(), spill=spill)
        assert spill.spilled_tensors > 0
    shards = sorted(p.name for p in (tmp_path / "ram").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "disk").glob("*.safetensors"))
    for name in shards:
        a, b = load_file(tmp_path / "disk" / name), load_file(tmp_path / "ram" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), name
    assert not (tmp_path / "spill").exists()


def test_spilled_evaluation_equals_the_in_ram_one(ckpt, tmp_path):
    folder, _ = ckpt
    windows = tiny_inputs(128, batch=4, seq=12, seed=5)
    with Spill(tmp_path / "spill", 0) as spill:
        got = stream_quality(folder, folder, windows, batch_size=2, spill=spill)
        assert spill.spilled_tensors > 0
    assert got == stream_quality(folder, folder, windows, batch_size=2, spill=Spill(None, BIG))


def test_no_spill_file_is_left_after_an_error(ckpt, tmp_path):
    folder, _ = ckpt
    sk = Skeleton.open(folder)
    sk.load_globals_()
    spill = Spill(tmp_path / "spill", 0)
    with pytest.raises(RuntimeError, match="boom"), spill:
        acts = capture_inputs(sk, padded_batches(), spill=spill)
        assert spill.spilled_tensors == 2 and os.listdir(tmp_path / "spill") == []
        raise RuntimeError("boom")
    assert not (tmp_path / "spill").exists()
    assert torch.isfinite(acts.hidden[0]).all()              # the mapped tensors stay readable while referenced


def test_a_streamed_recipe_spills_into_its_staging_folder_and_leaves_nothing(tiny_dir, tmp_path, studio_cache):
    from compressor.pipeline import run_recipe
    recipe = Recipe.parse({"model": str(tiny_dir), "stages": 1, "distill": {"steps": 0},
                           "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
                           "evaluate": {"tokens": 256, "seq_len": 32, "speed": False},
                           "slimming": {"sparsity": 0.5},
                           "execution": {"streaming": "on", "spill_mb": 0, "device": "cpu"}})
    result = run_recipe(recipe, tmp_path / "run")
    spill = result.metrics["execution"]["spill"]
    assert spill["limit_bytes"] == 0 and spill["spilled_tensors"] > 0
    assert result.metrics["execution"]["device"] == "cpu"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint", "metrics.json", "recipe.yaml"]


def test_the_layer_budget_counts_only_the_activations_kept_in_memory(tiny_dir, monkeypatch):
    from compressor.engine.plan import LayerTooLargeError, plan_execution
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "64mb")
    tokens = 1_000_000                              # 1e6 x hidden 32 x 4 bytes x (layers + 1) = 512 MB with Taylor
    with pytest.raises(LayerTooLargeError, match=r"MB of activations in memory for 1000000 calibration tokens\)"):
        plan_execution(tiny_dir, "on", tokens=tokens, taylor=True, spill_mb=1024)
    plan = plan_execution(tiny_dir, "on", tokens=tokens, taylor=True, spill_mb=8)
    assert plan.streaming and plan.activation_bytes == tokens * 32 * 4 * 4
    assert plan_execution(tiny_dir, "on", tokens=tokens, taylor=True).streaming     # default: a quarter = 16 MB
