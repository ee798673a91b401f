"""Weight-only quantization (torchao): what is quantized, that stock transformers reloads it with finite logits close
to the unquantized ones, the pipeline's last stage, and the size estimate against the measured file."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.estimate import ModelShape, SlimSettings, estimate, quantized_checkpoint_bytes
from compressor.pipeline import run_recipe
from compressor.quantize import is_quantized_checkpoint, quantization_targets, quantize_checkpoint
from compressor.recipe import QuantizeConfig, Recipe
from compressor.testing import char_tokenizer, tiny_inputs, tiny_moe


def TORCHAO(scheme):
    return QuantizeConfig(scheme=scheme, method="rtn", format="torchao")


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))


def saved(tmp_path, family="qwen3_moe", dtype=torch.float32, **shape):
    folder = tmp_path / family
    char_tokenizer().save_pretrained(folder)
    tiny_moe(family, dtype=dtype, **shape).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("scheme, kind", [("W8A16", "Int8Tensor"), ("FP8", "Float8Tensor")])
def test_quantized_tiny_checkpoint_reloads_close_to_the_original(tmp_path, scheme, kind):
    src, out = saved(tmp_path), tmp_path / "q"
    ids = tiny_inputs()
    report = quantize_checkpoint(src, out, TORCHAO(scheme), check_ids=ids)
    assert is_quantized_checkpoint(out) and not is_quantized_checkpoint(src)
    model = AutoModelForCausalLM.from_pretrained(out, experts_implementation="eager")     # stock transformers
    experts = model.model.layers[0].mlp.experts
    assert type(experts.gate_up_proj.data).__name__ == kind and type(experts.down_proj.data).__name__ == kind
    assert type(model.model.layers[0].self_attn.q_proj.weight.data).__name__ == kind
    for kept in (model.model.layers[0].mlp.gate.weight, model.lm_head.weight, model.model.embed_tokens.weight):
        assert type(kept.data) is torch.Tensor                             # router, head, embeddings untouched
    ref = AutoModelForCausalLM.from_pretrained(src, experts_implementation="eager")
    with torch.no_grad():
        want, got = ref(ids).logits, model(ids).logits
    diff = (got - want).abs().max().item()
    assert torch.isfinite(got).all() and 0 < diff < 0.1 * want.abs().max().item()
    assert diff == pytest.approx(report.max_abs_logit_diff)
    assert report.quantized == {"linear": 8, "expert_tensors": 4}
    assert report.checkpoint_bytes_after < 0.75 * report.checkpoint_bytes_before       # fp32 -> 1 byte + scales


def test_targets_skip_routers_and_refuse_what_torchao_cannot_run():
    targets = quantization_targets(tiny_moe("qwen2_moe"), "W8A16")
    assert "model.layers.0.mlp.experts.gate_up_proj" in targets and "model.layers.0.mlp.shared_expert.up_proj.weight" in targets
    assert not any(".mlp.gate." in n or "shared_expert_gate" in n or "lm_head" in n for n in targets)
    with pytest.raises(ValueError, match="transposed.*use quantize.scheme FP8"):
        quantization_targets(tiny_moe("gpt_oss"), "W8A16")
    assert "model.layers.0.mlp.experts.down_proj" in quantization_targets(tiny_moe("gpt_oss"), "FP8")


def test_recipe_quantize_stage_ships_the_quantized_checkpoint(tmp_path):
    src = saved(tmp_path, dtype=torch.bfloat16, width=32)
    recipe = Recipe.parse({"model": str(src), "calibration": {"tokens": 256, "seq_len": 32, "batch_size": 4},
                           "slimming": {"expert_keep_ratio": 0.5, "neuron_score": "activation"}, "stages": 1,
                           "distill": {"steps": 0}, "evaluate": {"tokens": 256, "seq_len": 32, "speed": False},
                           "quantize": {"scheme": "W8A16", "method": "rtn", "format": "torchao"}})
    res = run_recipe(recipe, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint"
    assert is_quantized_checkpoint(ckpt) and (ckpt / "tokenizer.json").is_file()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["checkpoint_bytes"] == m["quantize"]["checkpoint_bytes_after"] < m["unquantized_checkpoint_bytes"]
    assert m["params_total"] == res.metrics["params_total"] < m["baseline_params_total"]    # counts survive wrappers
    assert 0 < m["top1_agreement"] <= 1 and m["perplexity"] > 0
    assert "Quantized W8A16" in (ckpt / "README.md").read_text() and "quantize" in m["timings"]


def test_recipe_gptq_w4a16_ships_a_compressed_tensors_checkpoint(tmp_path):
    from compressor.quantization.export import is_compressed_tensors_checkpoint
    src = saved(tmp_path, dtype=torch.bfloat16, width=32)
    recipe = Recipe.parse({"model": str(src), "calibration": {"tokens": 512, "seq_len": 32, "batch_size": 4},
                           "slimming": {"experts_keep": 6}, "stages": 1,
                           "distill": {"steps": 0}, "evaluate": {"tokens": 256, "seq_len": 32, "speed": False},
                           "quantize": {"scheme": "W4A16", "group_size": 16, "attention": "W8A16",
                                        "gptq": {"min_expert_tokens": 8}}})
    res = run_recipe(recipe, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint"
    assert is_compressed_tensors_checkpoint(ckpt) and (ckpt / "tokenizer.json").is_file()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    q = m["quantize"]
    assert q["format"] == "compressed-tensors" and q["details"]["gptq_matrices"] > 0
    assert q["quantized"] == {"linear": 8, "expert_tensors": 2 * 6 * 3}
    assert m["checkpoint_bytes"] == q["checkpoint_bytes_after"] < 0.6 * m["unquantized_checkpoint_bytes"]
    assert q["max_abs_logit_diff"] < 1e-2 and m["perplexity"] > 0
    assert m["params_total"] == res.metrics["params_total"] < m["baseline_params_total"]   # no scales counted
    assert q["params_quantized"] + q["params_kept"] == m["params_total"]
    model = AutoModelForCausalLM.from_pretrained(ckpt)                      # stock transformers
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 6
    with torch.no_grad():
        assert torch.isfinite(model(tiny_inputs()).logits).all()


def test_estimate_of_the_quantized_demo_matches_the_file(tmp_path):
    from compressor.inspect import inspect_model
    from compressor.sources import load_model
    demo = load_model("demo", dtype=torch.bfloat16)
    summary = inspect_model(demo.model) | {"tie_word_embeddings": demo.model.config.tie_word_embeddings}
    shape = ModelShape.from_summary(summary)
    est = estimate(shape, SlimSettings())
    report = quantize_checkpoint(demo.local_dir, tmp_path / "q", TORCHAO("W8A16"))
    assert quantized_checkpoint_bytes(shape, est, "W8A16") == pytest.approx(report.checkpoint_bytes_after, rel=0.03)


@pytest.mark.parametrize("fields", [{"scheme": "W4A16", "method": "rtn"},
                                    {"scheme": "W4A16", "attention": "W8A16", "method": "rtn"}])
def test_estimate_of_the_compressed_demo_matches_the_file(tmp_path, fields):
    from compressor.inspect import inspect_model
    from compressor.quantize import quantize_to_compressed
    from compressor.sources import load_model
    demo = load_model("demo", dtype=torch.float32)
    summary = inspect_model(demo.model) | {"tie_word_embeddings": demo.model.config.tie_word_embeddings,
                                           "dtype": "bfloat16"}
    shape = ModelShape.from_summary(summary)
    est = estimate(shape, SlimSettings())
    _, report = quantize_to_compressed(demo.model, None, QuantizeConfig(**fields), tmp_path / "q",
                                       dtype=torch.bfloat16)
    assert quantized_checkpoint_bytes(shape, est, fields) == pytest.approx(report.checkpoint_bytes_after, rel=0.03)


def test_groups_are_checked_against_the_config_before_any_work(tmp_path):
    from compressor.engine.checkpoint import Checkpoint
    from compressor.pipeline import check_feasible
    config = Checkpoint.open("demo").config
    demo = Recipe.parse({"model": "demo", "slimming": {"expert_keep_ratio": 0.5}, "quantize": {"scheme": "W4A16"}})
    with pytest.raises(ValueError, match=r"experts W4A16 groups of 128 .* expert width after slimming \(192\).* 64"):
        check_feasible(demo, config)
    check_feasible(Recipe.parse({"model": "demo", "slimming": {"expert_keep_ratio": 0.5},
                                 "quantize": {"scheme": "W4A16", "group_size": 64}}), config)
    check_feasible(Recipe.parse({"model": "demo", "quantize": {"scheme": "W4A16"}}), config)       # 256 and 384 divide
