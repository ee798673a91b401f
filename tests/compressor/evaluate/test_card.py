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
