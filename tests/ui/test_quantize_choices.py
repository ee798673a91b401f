"""The Compress tab's quantize choices: each is a valid recipe section, a recipe finds its choice back, and the
estimate card names the scheme (pure functions, no server)."""
from compressor.recipe import Recipe
from ui import recipe_form


def test_every_choice_is_a_recipe_and_comes_back():
    for label, section in recipe_form.QUANTIZE_PRESETS.items():
        recipe = Recipe.parse({"quantize": recipe_form.quantize_section(label)})
        assert recipe_form.quantize_choice(recipe) == label
        assert recipe_form.form_values(recipe, {"num_experts": 8})[21] == label       # control 21: quantize
    assert recipe_form.quantize_section("W8A16") == {"scheme": "W8A16"}            # a bare scheme: GPTQ
    odd = Recipe.parse({"quantize": {"scheme": "W4A16", "group_size": 64}})
    assert recipe_form.quantize_choice(odd) == "none"                               # listed as not in the form


def test_estimate_card_names_the_scheme_and_the_size():
    from ui.compress import estimate_card
    summary = {"num_layers": 4, "moe_layers": 4, "num_experts": 8, "top_k": 2, "expert_intermediate_size": 384,
               "hidden_size": 256, "vocab_size": 4096, "params_total": 11_290_880, "params_active": 4_210_432,
               "dtype": "bfloat16", "tie_word_embeddings": True}
    model = {"summary": summary}
    w4 = estimate_card(model, {}, recipe_form.quantize_section("GPTQ W4A16"))
    mixed = estimate_card(model, {}, recipe_form.quantize_section("GPTQ experts W4A16 / attention W8A16"))
    assert "GPTQ W4A16 checkpoint" in w4 and "GPTQ W4A16, attention W8A16 checkpoint" in mixed
    assert "(torchao)" in estimate_card(model, {}, recipe_form.quantize_section("W8A16 torchao (RTN)"))
