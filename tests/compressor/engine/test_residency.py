"""In memory or layer by layer, and what a layer-by-layer run refuses: one torch-free rule, checked by hand."""
import pytest

from compressor.engine.residency import (check_layered, decide_residency, layered_problems, machine_memory,
                                         residency_of_recipe)
from compressor.recipe import Recipe


def _recipe(**kw):
    return Recipe.model_validate({"slimming": {"expert_keep_ratio": 0.5}, **kw})


def test_auto_goes_layer_by_layer_when_the_model_times_its_factor_exceeds_half_the_memory():
    kd = _recipe(distill={"steps": 10})                     # factor 5: 1e9 params x 4 B x 5 = 20 GB
    assert residency_of_recipe(kd, params=1e9, memory=int(39e9))[0] is True       # 20 > 19.5
    assert residency_of_recipe(kd, params=1e9, memory=int(41e9))[0] is False      # 20 < 20.5
    plain = _recipe(distill={"steps": 0}, stages=1)         # factor 2: 8 GB
    assert residency_of_recipe(plain, params=1e9, memory=int(15e9))[0] is True    # 8 > 7.5
    assert residency_of_recipe(plain, params=1e9, memory=int(17e9))[0] is False   # 8 < 8.5


def test_asked_modes_and_blockwise_recovery():
    assert residency_of_recipe(_recipe(execution={"streaming": "on"}), params=1, memory=10**12)[0]
    assert not residency_of_recipe(_recipe(execution={"streaming": "off"}), params=1e12, memory=1)[0]
    bw = _recipe(distill={"steps": 0, "blockwise_steps": 5}, stages=1)
    assert residency_of_recipe(bw, params=1, memory=10**12) == (True, "distill.blockwise_steps asks for "
                                                                      "layer-local recovery")
    with pytest.raises(ValueError, match="blockwise_steps is layer-local recovery.*streaming to on"):
        residency_of_recipe(bw.model_copy(update={"execution": bw.execution.model_copy(update={"streaming": "off"})}),
                            params=1, memory=10**12)
    with pytest.raises(ValueError, match="one of auto, on, off, got 'sometimes'"):
        decide_residency("sometimes", model_bytes=1, factor=2, blockwise=False, memory=10)


def test_the_rule_plans_for_the_machines_total_memory_not_what_is_free_now(monkeypatch):
    import psutil
    monkeypatch.delenv("MOE_STUDIO_MEMORY", raising=False)
    total = psutil.virtual_memory().total
    assert machine_memory() == total
    # a model whose float32 copy x 2 is just under half the total stays in memory however busy the machine is
    plain = _recipe(distill={"steps": 0})                   # factor 2: params x 4 B x 2 against total / 2
    assert residency_of_recipe(plain, params=total / 16 * 0.99)[0] is False
    assert residency_of_recipe(plain, params=total / 16 * 1.01)[0] is True
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "1gb")
    assert machine_memory() == 2**30
    assert residency_of_recipe(plain, params=2**30 / 16 * 1.01)[1].endswith("more than half of this machine's 1.00 GB: layer by layer")


def test_problems_name_the_fields_to_change():
    problems = layered_problems(_recipe(distill={"steps": 150}, stages=3))
    assert [p.split(" ")[0] for p in problems] == ["distill.steps", "stages"]
    assert layered_problems(_recipe(distill={"steps": 0}, stages=1)) == []
    with pytest.raises(ValueError, match="runs layer by layer .because.*distill.steps is 150"):
        check_layered(_recipe(distill={"steps": 150}, stages=1), "because")
