"""stream_analyze gives the in-memory analyze's scores, with and without the Taylor backward sweep."""
import pytest
import torch

from compressor.importance.analyze import AnalyzeConfig, analyze
from compressor.stream.analyze import stream_analyze
from tests.compressor.stream.models import padded_batches


def _fields(scores):
    return {k: getattr(scores, k) for k in scores.__dataclass_fields__}


@pytest.mark.parametrize("taylor", [False, True])
def test_streamed_scores_equal_in_memory_scores(family_ckpt, taylor):
    family, folder, model = family_ckpt
    cfg = AnalyzeConfig(taylor=taylor)
    got = stream_analyze(folder, padded_batches(), config=cfg)
    want = analyze(model, padded_batches(), config=cfg)
    for part in ("experts", "neurons", "layers"):
        g, w = _fields(getattr(got, part)), _fields(getattr(want, part))
        assert g.keys() == w.keys()
        for name, value in w.items():
            if torch.is_tensor(value):
                # forward statistics are bitwise; Taylor sums go through a re-ordered backward (float tolerance)
                torch.testing.assert_close(g[name], value, rtol=1e-5, atol=1e-9, msg=f"{family} {part}.{name}")
            elif isinstance(value, dict):
                assert g[name].keys() == value.keys()
                for k in value:
                    torch.testing.assert_close(g[name][k], value[k], rtol=1e-6, atol=0, msg=f"{family} {k}")
            else:
                assert g[name] == value, f"{family} {part}.{name}"
    for key in ("num_layers", "moe_layers", "num_experts", "top_k", "expert_width", "tokens", "loss_tokens"):
        assert got.meta[key] == want.meta[key], key
    assert got.meta["ce_loss"] == pytest.approx(want.meta["ce_loss"], rel=1e-6)
    assert got.meta["streamed"] is True


def test_padding_only_batches_are_refused(family_ckpt):
    _, folder, _ = family_ckpt
    batch = padded_batches()[0]
    empty = {"input_ids": batch["input_ids"], "attention_mask": torch.zeros_like(batch["input_ids"])}
    with pytest.raises(ValueError, match="no \\(unmasked\\) tokens"):
        stream_analyze(folder, [empty], config=AnalyzeConfig(taylor=False, want=("experts",)))
