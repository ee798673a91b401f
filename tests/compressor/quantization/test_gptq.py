"""GPTQ against a faithful re-implementation of the reference loop, and against round to nearest."""
import pytest
import torch

from compressor.quantization.gptq import HessianSum, gptq_quantize, reconstruction_error
from compressor.quantization.grid import rtn
from compressor.quantization.scheme import SCHEMES, WeightScheme


def reference_gptq(W, H, scheme, *, blocksize=128, percdamp=0.01, actorder=False):
    """llm-compressor's `quantize_weight` (src/llmcompressor/modifiers/quantization/gptq/gptq_quantize.py), written
    out with compressed-tensors' own qparams and fake_quantize: the minmax observer on W, dead columns, dampening,
    cholesky of the inverse, the column loop and the lazy block update; actorder 'weight' (groups fixed first)."""
    from copy import copy

    from compressed_tensors.quantization import QuantizationArgs, fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=scheme.bits, type=scheme.type, symmetric=scheme.symmetric,
                            strategy=scheme.strategy, group_size=scheme.group_size)
    W, H = W.clone().float(), H.clone().float()
    rows, cols = W.shape
    if scheme.strategy == "group":
        g = W.reshape(rows, -1, scheme.group_size)
        scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), args)
        g_idx = torch.arange(cols) // scheme.group_size
    else:
        scale, zp = calculate_qparams(W.amin(1, keepdim=True), W.amax(1, keepdim=True), args)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        if scheme.strategy == "group":
            g_idx = g_idx[perm]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if scheme.strategy == "group":
                a = copy(args)
                a.strategy = "channel"
                q = fake_quantize(w.clone(), scale[:, g_idx[i1 + i]], zp[:, g_idx[i1 + i]], a)
            else:
                q = fake_quantize(w.clone(), scale[:, 0], zp[:, 0], args)
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        W = W[:, torch.argsort(perm)]
    return W


def correlated(n, cols, seed, rank=32):
    """Inputs driven by `rank` shared factors plus a little noise, as a layer's activations are."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(n, rank, generator=g) @ torch.randn(rank, cols, generator=g)
    return factors + 0.1 * torch.randn(n, cols, generator=g)


@pytest.mark.parametrize("name,act_order,block", [("W4A16", False, 128), ("W4A16", True, 128),
                                                  ("W4A16_ASYM", False, 32), ("W8A16", False, 64),
                                                  ("W8A16", True, 128)])
def test_equals_reference(name, act_order, block):
    scheme = SCHEMES[name] if name in SCHEMES else WeightScheme(bits=4, symmetric=False)
    g = torch.Generator().manual_seed(3)
    x = correlated(512, 256, 4)
    w = torch.randn(48, 256, generator=g)
    x[:, 7] = 0                                              # a dead input column
    hs = HessianSum(256)
    hs.add(x)
    got = gptq_quantize(w, hs.hessian(), scheme, block_size=block, act_order=act_order)
    want = reference_gptq(w, hs.hessian(), scheme, blocksize=block, actorder=act_order)
    err_got, err_want = reconstruction_error(w, got.weight, x), reconstruction_error(w, want, x)
    assert abs(err_got - err_want) <= 1e-4 * err_want
    assert (got.weight != want).float().mean() < 0.002         # equal but for rounding ties of float noise
    assert torch.all(got.weight[:, 7] == 0)


def test_hessian_is_two_over_n_x_xt():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    hs = HessianSum(2)
    hs.add(x[:1])
    hs.add(x[1:])
    assert torch.allclose(hs.hessian(), torch.tensor([[10.0, -1.0], [-1.0, 5.0]]))    # 2/2 * x^T x: 1+9, 1*2+3*(-1), 4+1
    with pytest.raises(ValueError, match="no calibration rows"):
        HessianSum(2).hessian()


def test_gptq_beats_rtn_on_correlated_inputs():
    x = correlated(1024, 256, 5)
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(6))
    hs = HessianSum(256)
    hs.add(x)
    for scheme in (SCHEMES["W4A16"], SCHEMES["W8A16"], WeightScheme(bits=4, group_size=None)):
        e_gptq = reconstruction_error(w, gptq_quantize(w, hs.hessian(), scheme).weight, x)
        e_rtn = reconstruction_error(w, rtn(w, scheme).weight, x)
        assert e_gptq < 0.7 * e_rtn, (scheme, e_gptq, e_rtn)


def test_gptq_values_are_on_the_grid_and_identity_hessian_is_rtn():
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(7))
    res = gptq_quantize(w, torch.eye(128), SCHEMES["W4A16"], percdamp=0.0)
    q = res.weight / res.scale.repeat_interleave(128, 1)
    assert torch.allclose(q, q.round(), atol=1e-4) and q.min() >= -8 and q.max() <= 7
    assert torch.equal(res.weight, rtn(w, SCHEMES["W4A16"]).weight)   # no correlation: nothing to compensate


def test_shape_errors():
    with pytest.raises(ValueError, match="does not match"):
        gptq_quantize(torch.zeros(4, 128), torch.eye(64), SCHEMES["W4A16"])
