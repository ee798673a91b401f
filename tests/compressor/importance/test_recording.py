"""The scoring experts implementation: the experts' forward computed once while recording, scores equal to the hook
that recomputes them, the model's eager output unchanged, and the previous implementation restored."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compressor.families import resolve_adapter
from compressor.importance.analyze import AnalyzeConfig, analyze
from compressor.importance.collect import ScoreCollector, collect_scores, scoring_experts_mode
from compressor.importance.recording import SCORING_IMPLEMENTATION, record_experts
from compressor.testing import TINY_FAMILIES, tiny_moe
from tests.compressor.stream.models import padded_batches


def _scores(model, taylor, recording, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_SCORING_EXPERTS", "record" if recording else "hooks")
    return analyze(model, padded_batches(), config=AnalyzeConfig(taylor=taylor))


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("taylor", [False, True])
def test_recorded_scores_equal_the_hooks_scores(family, taylor, monkeypatch):
    model = tiny_moe(family)
    got, want = _scores(model, taylor, True, monkeypatch), _scores(model, taylor, False, monkeypatch)
    for part in ("experts", "neurons", "layers"):
        g, w = getattr(got, part), getattr(want, part)
        for name in w.__dataclass_fields__:
            a, b = getattr(g, name), getattr(w, name)
            if torch.is_tensor(b):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9, msg=f"{family} {part}.{name}")
            elif isinstance(b, dict):
                for k in b:
                    torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-9, msg=f"{family} {k}")
            else:
                assert a == b, f"{family} {part}.{name}"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_tiny_family_records_and_gives_the_eager_output(family):
    model = tiny_moe(family)
    adapter = resolve_adapter(model)
    blk = adapter.moe_blocks(model)[0]
    with collect_scores(model, adapter, want=("experts",)) as col:
        assert model.config._experts_implementation == SCORING_IMPLEMENTATION, family
        x = torch.randn(6, blk.hidden_size)
        idx = torch.stack([torch.randperm(blk.num_experts)[:2] for _ in range(6)])
        w = torch.rand(6, 2)
        got = blk.experts(x, idx, w)
        assert col.sums[0].tokens == 6 and float(col.sums[0].counts.sum()) == 12
    before = model.config._experts_implementation
    assert before != SCORING_IMPLEMENTATION
    model.set_experts_implementation("eager")
    want = blk.experts(x, idx, w)
    torch.testing.assert_close(got, want[0] if isinstance(want, tuple) else want, rtol=1e-6, atol=1e-7)


def test_a_grouped_mm_model_records_with_two_grouped_matmuls():
    from compressor.importance.recording import _RECORDERS
    model = tiny_moe("qwen3_moe")
    model.set_experts_implementation("grouped_mm")
    adapter = resolve_adapter(model)
    with collect_scores(model, adapter, want=("experts",)):
        assert all(_RECORDERS[id(b.experts)].grouped for b in adapter.moe_blocks(model))
    model.set_experts_implementation("eager")
    with collect_scores(model, adapter, want=("experts",)):
        assert not any(_RECORDERS[id(b.experts)].grouped for b in adapter.moe_blocks(model))


def test_the_previous_implementation_comes_back_also_after_an_error():
    model = tiny_moe("qwen3_moe")
    model.set_experts_implementation("eager")
    with pytest.raises(RuntimeError, match="stop"):
        with collect_scores(model, resolve_adapter(model)):
            assert model.config._experts_implementation == SCORING_IMPLEMENTATION
            raise RuntimeError("stop")
    assert model.config._experts_implementation == "eager"
    blk = resolve_adapter(model).moe_blocks(model)[0]
    model.config._experts_implementation = SCORING_IMPLEMENTATION        # outside a collector: a clear refusal
    with pytest.raises(RuntimeError, match="outside a score collector"):
        blk.experts(torch.randn(2, blk.hidden_size), torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2))


def test_the_experts_are_computed_once_while_scoring():
    """Counted matmul flops: the recorded pass costs what a plain eager forward costs; the hook pass pays the
    routed experts a second time."""
    model = tiny_moe("qwen3_moe", layers=2)
    model.set_experts_implementation("eager")
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    adapter = resolve_adapter(model)
    blk = adapter.moe_blocks(model)[0]
    experts = 2 * 16 * model.config.num_experts_per_tok * 3 * 2 * blk.hidden_size * blk.intermediate_size * 2

    def flops(recording):                               # None: no collector at all
        counter = FlopCounterMode(display=False)
        col = ScoreCollector(model, adapter, want=("experts", "neurons"), recording=recording)
        if recording is not None:
            col.register_hooks()
        try:
            with torch.no_grad(), counter:
                model(input_ids=ids)
        finally:
            col.remove_hooks()
        return counter.get_total_flops()

    plain = flops(None)
    assert flops(True) == plain
    assert flops(False) == plain + experts          # 2 layers x (gate, up, down) over every routed pair


def test_a_block_the_probe_rejects_keeps_the_hook(monkeypatch):
    import compressor.importance.recording as R
    model = tiny_moe("mixtral")
    monkeypatch.setattr(R, "_VERDICTS", {})
    monkeypatch.setattr(R, "_probe_matches_eager", lambda blk, grouped=False: False)
    adapter = resolve_adapter(model)
    col = ScoreCollector(model, adapter, want=("experts",))
    assert record_experts(col, 0, adapter.moe_blocks(model)[0]) is None
    previous = model.config._experts_implementation
    with collect_scores(model, adapter, want=("experts",)):
        assert model.config._experts_implementation == previous       # hooks only


def test_the_mode_setting_is_checked(monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_SCORING_EXPERTS", "twice")
    with pytest.raises(ValueError, match="MOE_STUDIO_SCORING_EXPERTS='twice' must be 'record'"):
        scoring_experts_mode()
    monkeypatch.delenv("MOE_STUDIO_SCORING_EXPERTS")
    assert scoring_experts_mode() == "record"
