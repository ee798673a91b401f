"""The pipeline model card states the distillation objective with its T^2 factor (absent from TRL's GKD)."""
from compressor.evaluate.card import pipeline_card
from compressor.recipe import Recipe


def test_card_states_the_t_squared_factor_and_what_ce_weight_means_in_trl_terms():
    recipe = Recipe.model_validate({"distill": {"temperature": 2.0, "ce_weight": 1.0, "steps": 10}})
    card = pipeline_card(recipe, {}, [])
    assert "T^2 x forward_kl" in card and "T = 2" in card
    assert "weighs 4x what the same settings give in TRL" in card and "ce_weight 1 weighs what 0.25" in card


def test_card_without_distillation_has_no_loss_line():
    assert "Distillation loss" not in pipeline_card(Recipe.model_validate({"distill": {"steps": 0}}), {}, [])


def test_card_names_the_one_kernel_and_says_when_the_speed_up_is_noise():
    speed = {"prefill_speedup": 1.29, "prefill_speedup_range": [1.1, 1.41], "decode_speedup": 1.02,
             "decode_speedup_range": [0.95, 1.08], "settings": {"kernel": "eager/float32", "interleaved": True,
                                                                 "device": "cpu", "threads": 2}}
    card = pipeline_card(Recipe.model_validate({}), {"evaluation": {"speed": speed}}, [])
    assert "both models in eager/float32, interleaved with" in card
    assert "prefill 1.29x (rounds 1.10-1.41); decode 1.02x (rounds 0.95-1.08), within the machine's noise" in card


def test_card_of_a_compressed_tensors_checkpoint_says_where_it_loads():
    q = {"format": "compressed-tensors", "scheme": "W4A16", "method": "gptq", "library": "compressed-tensors 0.20.1",
         "quantized": {"linear": 16, "expert_tensors": 96}, "params_quantized": 1000, "checkpoint_bytes_before": 10,
         "checkpoint_bytes_after": 4, "experts_implementation": "eager"}
    card = pipeline_card(Recipe.model_validate({}), {"quantize": q}, [])
    assert "compressed-tensors format" in card and "vLLM" in card and "torchao installed" not in card
    old = pipeline_card(Recipe.model_validate({}), {"quantize": {**q, "format": "torchao"}}, [])
    assert "torchao installed" in old and "fused expert tensors" in old
    assert "config.json sets `experts_implementation: eager`" in old and "cannot run `grouped_mm`" in old
