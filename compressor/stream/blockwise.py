"""Block-wise distillation (layer-local recovery): while a decoder layer is in memory, train its slimmed MoE block to
reproduce the original block's output on the calibration activations, then write it. No whole-model teacher, no
gradients beyond one block.

For MoE block B (original, before the cut) and B' (slimmed), on the block inputs x_t the original layer computes
(the post-attention-norm hidden states of the calibration tokens reaching this layer in the *slimmed* model, so
errors of earlier layers are part of what is corrected):

    L(B') = mean_t || B'(x_t) - B(x_t) ||^2 / H            (real tokens t only; H the hidden size)

minimised with AdamW (`lr`, no weight decay) for `steps` steps, one calibration batch per step (cycling), over every
parameter of B' (experts, router, shared experts), in float32; the result is cast back to the checkpoint dtype.
When training ends with a higher loss than it started (too high a learning rate), the plain cut is kept
(`trained_kept` False), so recovery never makes a block worse on its own calibration data.
The layer-local reconstruction objective follows the block-/layer-wise recovery of LLM-Pruner's and SparseGPT's
sequential schemes and the MSE-on-block-output stage of SlimMoE (docs/methods.md, "Distillation").

    captured = capture_block_io(layer, block, acts, j)        # run the original layer, keep (x, y) per batch
    stats = recover_block_(slim_block, captured, BlockDistillConfig(steps=50))
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compressor.stream.sweep import run_layer


@dataclass(frozen=True)
class BlockDistillConfig:
    steps: int = 50
    lr: float = 1e-4

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"block distillation steps must be a non-negative integer, got {self.steps!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 1):
            raise ValueError(f"block distillation lr must be in (0, 1], got {self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BlockIO:
    inputs: list[torch.Tensor]      # per batch [B, S, H]: what the MoE block received
    targets: list[torch.Tensor]     # per batch [B, S, H]: what the original block returned
    masks: list[torch.Tensor | None]


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_io(layer: nn.Module, block: nn.Module, acts, layer_index: int) -> BlockIO:
    """Run the (original) layer on every batch's hidden states and keep its MoE block's inputs and outputs."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    home = acts.hidden[0].device if acts.hidden else torch.device("cpu")     # kept where the activations live
    handle = block.register_forward_hook(
        lambda m, args, out: seen.append((args[0].detach().to(home), _first(out).detach().to(home))))
    try:
        for b, h in enumerate(acts.hidden):
            run_layer(layer, h, acts.kwargs(layer_index, b))
    finally:
        handle.remove()
    if len(seen) != len(acts.hidden):
        raise RuntimeError(f"the MoE block ran {len(seen)} times for {len(acts.hidden)} batches")
    return BlockIO([x for x, _ in seen], [y for _, y in seen], list(acts.masks))


def block_loss(*, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """mean over real tokens of ||output - target||^2 / H; output / target [B, S, H], mask [B, S] or None."""
    err = (output.float() - target.float()).square().mean(-1)          # [B, S]
    if mask is None:
        return err.mean()
    keep = mask.to(err.device).bool()
    return err[keep].mean() if keep.any() else err.sum() * 0.0


def recover_block_(block: nn.Module, io: BlockIO, cfg: BlockDistillConfig) -> dict:
    """Train `block` in place (rule in the module docstring); returns loss before / after over all batches and
    whether the trained weights were kept."""
    t0 = time.perf_counter()
    dtype, dev = next(block.parameters()).dtype, next(block.parameters()).device    # inputs come from the CPU
    block.float()
    params = [p for p in block.parameters()]
    for p in params:
        p.requires_grad_(True)

    def total_loss() -> float:
        with torch.no_grad():
            return sum(float(block_loss(output=_first(block(x.to(dev).float())), target=y.to(dev), mask=m))
                       for x, y, m in zip(io.inputs, io.targets, io.masks)) / max(len(io.inputs), 1)

    before = total_loss()
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    for step in range(cfg.steps):
        b = step % len(io.inputs)
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = block_loss(output=_first(block(io.inputs[b].to(dev).float())), target=io.targets[b].to(dev),
                              mask=io.masks[b])
            loss.backward()
        opt.step()
    del opt
    after, kept = total_loss(), True
    if not after < before:                     # never hand back a block worse on its own data than the plain cut
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        after, kept = before, False
    del start
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    block.to(dtype)
    return {"loss_before": before, "loss_after": after, "steps": cfg.steps, "trained_kept": kept,
            "seconds": time.perf_counter() - t0}
