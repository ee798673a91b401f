"""inspect_model: hand-counted parameters (total / active per token), structure fields, refusal of dense models, CLI."""
import json

import pytest
import torch
import transformers as tf

from compressor.cli import main
from compressor.families import UnsupportedModelError
from compressor.inspect import count_params, inspect_model
from compressor.testing import TINY_FAMILIES, tiny_moe


def test_mixtral_counts_by_hand():
    # H=32, vocab 128, E=8, I=16, top-2, 2 layers, kv 16:
    # per layer: attention 32*32*2 + 16*32*2 = 3072, router 8*32 = 256, experts 8*(2*16*32 + 32*16) = 12288, norms 64
    # total = 2 * 15680 + embed 4096 + lm_head 4096 + final norm 32 = 39584
    # active = total - 2 layers * (8 - 2) * 1536 = 21152
    info = inspect_model(tiny_moe("mixtral"))
    assert (info["params_total"], info["params_active"]) == (39584, 21152)
    assert info["family"] == "mixtral" and info["num_layers"] == 2 and info["moe_layers"] == [0, 1]
    assert (info["num_experts"], info["top_k"], info["expert_intermediate_size"]) == (8, 2, 16)
    assert info["shared_experts"] == {"count": 0, "width": 0} and info["dtype"] == "float32"


def test_deepseek_structure_and_buffers():
    model = tiny_moe("deepseek_v3")
    info = inspect_model(model)
    assert info["num_layers"] == 3 and info["moe_layers"] == [1, 2]         # layer 0 is dense
    assert info["shared_experts"] == {"count": 1, "width": 16}
    params = sum(p.numel() for p in model.parameters())
    assert info["params_total"] == params + 2 * 8                            # + e_score_correction_bias per layer


def test_qwen2_shared_expert_is_reported_and_always_active():
    info = inspect_model(tiny_moe("qwen2_moe"))
    assert info["shared_experts"] == {"count": 1, "width": 32}
    assert info["params_total"] - info["params_active"] == 2 * 6 * (2 * 16 * 32 + 32 * 16)


def test_tied_embeddings_are_counted_once():
    model = tiny_moe("qwen3_moe")
    untied = count_params(model).total
    model.lm_head.weight = model.model.embed_tokens.weight
    assert count_params(model).total == untied - 128 * 32


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_is_json_and_active_is_less_than_total(family):
    info = json.loads(json.dumps(inspect_model(tiny_moe(family))))
    assert info["family"] == family and 0 < info["params_active"] < info["params_total"]


def test_dense_models_are_refused_with_what_was_found():
    config = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(UnsupportedModelError, match="'llama' is a dense model"):
        inspect_model(tf.AutoModelForCausalLM.from_config(config))


def test_cli_prints_the_summary(tmp_path, capsys):
    model = tiny_moe("olmoe", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "olmoe" and info["dtype"] == "bfloat16"
    assert info["params_total"] == count_params(model).total
