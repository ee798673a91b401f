"""GPTQ (Frantar et al. 2022, arXiv 2210.17323) for one weight matrix W [R, C] given its Hessian H [C, C].

    H = 2/n * sum over the n calibration rows x [C] that reach the layer of x x^T    (`HessianSum`)
    dead columns (H_jj = 0): H_jj = 1, W[:, j] = 0
    H += percdamp * mean(diag H) * I;   U = cholesky(H^-1, upper)
    for each block of `block_size` columns, for each column j in it:
        q_j = round_to_grid(w_j);   e_j = (w_j - q_j) / U_jj
        W[:, j:block end] -= e_j U[j, j:block end]               (within the block)
    then W[:, block end:] -= E_block U[block, block end:]         (lazy batch update of the rest)

Scales and zero points are the min / max ones of W before the sweep (`grid.qparams`), as llm-compressor does
(src/llmcompressor/modifiers/quantization/gptq/gptq_quantize.py `quantize_weight`); the sweep follows it and
IST-DASLab/gptq `gptq.py` `fasterquant` line for line. With `act_order` the columns are visited in order of
decreasing H_jj, with the groups fixed beforehand on the original column order (llm-compressor's
`actorder="weight"`, IST-DASLab's `static_groups=True`), so the checkpoint needs no g_idx. The result does not
depend on the scale of H (e_j grows by sqrt(c) and U by 1/sqrt(c)), so 2/n is kept only to match the paper.

    hs = HessianSum(C); hs.add(x)                    # x [n, C], float64 sum
    res = gptq_quantize(w, hs.hessian(), SCHEMES["W4A16"])
    res.weight, res.scale, res.zero, res.loss
"""
from __future__ import annotations

import torch

from compressor.quantization.grid import QuantizedWeight, check_shape, column_params, qparams, round_to_grid
from compressor.quantization.scheme import WeightScheme


class HessianSum:
    """sum x x^T (float64) and the row count n of the inputs of one weight; `hessian()` = 2/n * sum (float32)."""

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(columns, columns, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """x [..., C]: every row is one token's input."""
        x = x.reshape(-1, x.shape[-1]).to(self.sum.device, torch.float64)
        self.sum.addmm_(x.T, x)
        self.n += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no calibration rows reached this weight; its Hessian is undefined (use RTN)")
        return (2.0 / self.n * self.sum).float()


def inverse_hessian_factor(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """U = cholesky((H + percdamp * mean(diag H) * I)^-1, upper): the rows GPTQ updates with. `h` is changed."""
    diag = torch.arange(h.shape[0], device=h.device)
    h[diag, diag] += percdamp * torch.mean(torch.diag(h))
    lower = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, scheme: WeightScheme, *, block_size: int = 128,
                  percdamp: float = 0.01, act_order: bool = False, scale_dtype: torch.dtype | None = None
                  ) -> QuantizedWeight:
    """GPTQ of `w` [R, C] with Hessian `h` [C, C] (module docstring). Returns w_hat in `w`'s dtype with its scale
    and zero point (grid layout of `compressor.quantization.grid`) and the reference's loss. Raises
    torch.linalg.LinAlgError when the damped Hessian is not positive definite (raise percdamp or add data)."""
    check_shape(w, scheme)
    if h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"Hessian {tuple(h.shape)} does not match a weight with {w.shape[1]} input columns")
    if block_size < 1 or not 0 <= percdamp:
        raise ValueError("block_size must be >= 1 and percdamp >= 0")
    W = w.detach().float().clone()
    H = h.detach().float().clone()
    R, C = W.shape
    scale, zero = qparams(W, scheme, scale_dtype=scale_dtype)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(C, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    U = inverse_hessian_factor(H, percdamp)
    losses = torch.zeros(R, dtype=torch.float32, device=W.device)
    for i1 in range(0, C, block_size):
        i2 = min(i1 + block_size, C)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            col, d = W1[:, i], U1[i, i]
            s, z = column_params(scale, zero, scheme, int(perm[i1 + i]), R)
            q = round_to_grid(col, s, z, scheme)
            Q1[:, i] = q
            losses += (col - q) ** 2 / d ** 2 / 2
            err = (col - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    W = W[:, torch.argsort(perm)]
    return QuantizedWeight(W.to(w.dtype), scale, zero, float(losses.sum()))


def reconstruction_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """||X W^T - X W_hat^T||_F for inputs x [n, C]: the layer-output error GPTQ minimises."""
    return float(torch.linalg.matrix_norm(x.float() @ (w.float() - w_hat.float()).T))
