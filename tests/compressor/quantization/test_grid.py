"""Round to nearest on the scheme grids, against hand-computed values and compressed-tensors' own quantizer."""
import pytest
import torch

from compressor.quantization.grid import fake_quantize, qparams, rtn
from compressor.quantization.scheme import SCHEMES, WeightScheme, scheme_named

W = torch.tensor([[1.0, -2.0, 0.5, 3.5]])


def test_int4_symmetric_per_channel_by_hand():
    # s = 3.5 / 7.5; w / s = [2.14, -4.29, 1.07, 7.5] -> [2, -4, 1, 8 clamped to 7]
    res = rtn(W, WeightScheme(bits=4, group_size=None))
    s = 3.5 / 7.5
    assert torch.allclose(res.scale, torch.tensor([[s]]))
    assert torch.allclose(res.weight, torch.tensor([[2 * s, -4 * s, 1 * s, 7 * s]]))
    assert res.zero.abs().sum() == 0


def test_int4_asymmetric_per_channel_by_hand():
    # s = 5.5 / 15; z = round(-8 + 2 / s) = -3; w_hat = s * (clamp(round(w / s) + z, -8, 7) - z)
    res = rtn(W, WeightScheme(bits=4, symmetric=False, group_size=None))
    s = 5.5 / 15
    assert res.zero.item() == -3
    assert torch.allclose(res.weight, torch.tensor([[3 * s, -5 * s, 1 * s, 10 * s]]))


def test_int8_symmetric_by_hand():
    s = 3.5 / 127.5                                  # 3.5 / s = 127.5 rounds to 128, clamped to 127
    res = rtn(W, SCHEMES["W8A16"])
    assert torch.allclose(res.weight, torch.tensor([[36 * s, -73 * s, 18 * s, 127 * s]]))


def test_groups_have_their_own_scales():
    w = torch.tensor([[1.0, -1.0, 100.0, 50.0]])
    scale, _ = qparams(w, WeightScheme(bits=4, group_size=2))
    assert torch.allclose(scale, torch.tensor([[1 / 7.5, 100 / 7.5]]))
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        qparams(torch.zeros(2, 6), WeightScheme(bits=4, group_size=4))


def test_fp8_block_scales_and_values():
    w = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    scheme = WeightScheme(type="float", bits=8, group_size=None, block=(2, 4))
    scale, zero = qparams(w, scheme)
    assert scale.shape == (3, 2)
    assert torch.allclose(scale[0, 0], w[:2, :4].abs().max() / 448)
    w_hat = fake_quantize(w, scale, zero, scheme)
    assert (w_hat - w).abs().max() < 0.07 * w.abs().max()


ASYM = {"W4A16_ASYM": WeightScheme(bits=4, symmetric=False), "W8A16_ASYM": WeightScheme(bits=8, symmetric=False,
                                                                                    group_size=None)}


@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM", "W8A16", "W8A16_ASYM", "FP8", "FP8_BLOCK"])
def test_same_grid_as_compressed_tensors(name):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization import fake_quantize as ct_fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = {**SCHEMES, **ASYM}[name]
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    args = QuantizationArgs(num_bits=scheme.bits, type=scheme.type, symmetric=scheme.symmetric,
                            strategy=scheme.strategy, group_size=scheme.group_size,
                            block_structure=list(scheme.block) if scheme.block else None)
    scale, zero = qparams(w, scheme)
    if scheme.strategy == "block":
        ct_scale = scale                             # block min/max needs an observer; compare the rounding only
        ct_zero = torch.zeros_like(scale)
    else:
        lo, hi = (w.amin(1, keepdim=True), w.amax(1, keepdim=True)) if scheme.strategy == "channel" else \
            (w.reshape(256, -1, 128).amin(-1), w.reshape(256, -1, 128).amax(-1))
        ct_scale, ct_zero = calculate_qparams(lo, hi, args)
        assert torch.allclose(scale, ct_scale) and torch.equal(zero, ct_zero.float())
    want = ct_fake_quantize(w, ct_scale, ct_zero.to(torch.int8 if scheme.type == "int" else w.dtype), args)
    assert torch.allclose(fake_quantize(w, scale, zero, scheme), want, atol=1e-6)


def test_scheme_round_trip_and_validation():
    for s in SCHEMES.values():
        assert WeightScheme.from_dict(s.to_dict()) == s
    assert scheme_named("W4A16", group_size="channel").group_size is None
    assert scheme_named("W4A16", group_size=32).group_size == 32
    with pytest.raises(ValueError, match="only FP8"):
        WeightScheme(type="float", bits=4, group_size=None)
    with pytest.raises(ValueError, match="use 4 or 8"):
        WeightScheme(bits=3)
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        scheme_named("W2A16")
    with pytest.raises(ValueError, match="takes no group_size"):
        scheme_named("FP8", group_size=64)
