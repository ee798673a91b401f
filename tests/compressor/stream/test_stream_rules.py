"""When a job goes layer by layer, and what it refuses there: plain arithmetic, checked by hand."""
from compressor.recipe import Recipe
from compressor.stream.rules import check_streamable, mode_streams, streaming_problems

import pytest


def _recipe(**kw):
    return Recipe.model_validate({"slimming": {"expert_keep_ratio": 0.5}, **kw})


def test_auto_streams_when_the_model_times_its_factor_exceeds_half_the_memory():
    kd = _recipe(distill={"steps": 10})                     # factor 5: 1e9 params x 4 B x 5 = 20 GB
    assert mode_streams(params=1e9, recipe=kd, available=int(39e9))[0] is True      # 20 > 19.5
    assert mode_streams(params=1e9, recipe=kd, available=int(41e9))[0] is False     # 20 < 20.5
    plain = _recipe(distill={"steps": 0}, stages=1)         # factor 2: 8 GB
    assert mode_streams(params=1e9, recipe=plain, available=int(15e9))[0] is True   # 8 > 7.5
    assert mode_streams(params=1e9, recipe=plain, available=int(17e9))[0] is False  # 8 < 8.5


def test_asked_modes_and_blockwise_recovery():
    assert mode_streams(params=1, recipe=_recipe(execution={"streaming": "on"}), available=10**12)[0]
    assert not mode_streams(params=1e12, recipe=_recipe(execution={"streaming": "off"}), available=1)[0]
    bw = _recipe(distill={"steps": 0, "blockwise_steps": 5}, stages=1)
    assert mode_streams(params=1, recipe=bw, available=10**12) == (True, "distill.blockwise_steps asks for "
                                                                         "layer-local recovery")


def test_problems_name_the_fields_to_change():
    problems = streaming_problems(_recipe(distill={"steps": 150}, stages=3))
    assert [p.split(" ")[0] for p in problems] == ["distill.steps", "stages"]
    assert streaming_problems(_recipe(distill={"steps": 0}, stages=1)) == []
    with pytest.raises(ValueError, match="runs layer by layer .because.*distill.steps is 150"):
        check_streamable(_recipe(distill={"steps": 150}, stages=1), "because")
