"""A scoring experts implementation: the routed experts' forward computed once, recording the calibration statistics.

The plain score hook (`ScoreCollector._experts_hook`) lets the experts module run and then recomputes every routed
expert on its tokens to read h = act(x Wg^T) * (x Wu^T) and f = h Wd^T, so a scoring pass pays the experts twice.
transformers 5 dispatches the forward of every `@use_experts_implementation` experts class through
`ExpertsInterface` by `config._experts_implementation` (transformers/integrations/moe.py); this module registers
one more implementation there, `moe_studio_scoring`, which computes the eager forward

    y_t = sum_{e in topk(t)} g_{t,e} f_e(x_t)       (pairs grouped by expert, experts ascending, `index_add_` per
                                                    expert into zeros: the eager loop's order of additions)

with `MoEBlock.expert_hidden` / `expert_output` (the views the hook recomputes with), and hands the same x_e, h_e,
f_e and g of the non-padding pairs to the collector's sums (`_BlockSums.add_outputs_`). The statistics are those
of the hook up to float rounding (the hook's matmuls see only the non-padding rows); the output is differentiable,
so the Taylor pass back-propagates through it.

A block is recorded this way when its experts module dispatches through `ExpertsInterface` and the implementation
reproduces the module's own eager forward on a probe (checked once per experts class and layout); otherwise the
collector keeps its hook. While recording, the block's config says `moe_studio_scoring`; the previous
implementation is restored when the hooks are removed.

    handle = record_experts(collector, l, blk)      # None when the block keeps the hook
    ...                                             # forward passes record into collector.sums[l]
    handle.remove()
"""
from __future__ import annotations

import threading

import torch
from torch import nn

from compressor.families import MoEBlock

SCORING_IMPLEMENTATION = "moe_studio_scoring"
_RECORDERS: dict[int, "_Recorder"] = {}          # id(experts module) -> its recorder while the collector is on
_CONFIGS: dict[int, list] = {}                   # id(config) -> [config, previous implementation, users]
_VERDICTS: dict[tuple, bool] = {}                # (experts class, layout) -> the probe matched eager
_LOCK = threading.Lock()


def scoring_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                            top_k_weights: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The `ExpertsInterface` entry: the recorder registered for this experts module computes and records."""
    recorder = _RECORDERS.get(id(self))
    if recorder is None or args or kwargs:
        raise RuntimeError(f"{type(self).__name__} runs the '{SCORING_IMPLEMENTATION}' experts implementation "
                           "outside a score collector (or with extra arguments); set the model's experts "
                           "implementation back (model.set_experts_implementation('eager'))")
    return recorder(hidden_states, top_k_index, top_k_weights)


def _register() -> None:
    from transformers.integrations.moe import ExpertsInterface
    if SCORING_IMPLEMENTATION not in ExpertsInterface._global_mapping:
        ExpertsInterface.register(SCORING_IMPLEMENTATION, scoring_experts_forward)


class _Recorder:
    """Computes one block's routed experts (eager order) and adds the non-padding pairs to the collector's sums."""

    def __init__(self, collector, l: int, blk: MoEBlock, *, record: bool = True):
        self.collector, self.l, self.blk, self.record = collector, l, blk, record

    def __call__(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        from compressor.importance.collect import routed_pairs

        blk, shape = self.blk, hidden.shape
        x = hidden.reshape(-1, shape[-1])                                         # [T, H]
        T = x.shape[0]
        idx, w = top_k_index.reshape(T, -1), top_k_weights.reshape(T, -1)       # [T, k]
        tok, eid, gate, per_expert = routed_pairs(idx, w, blk.num_experts)       # [P] each, grouped by expert
        out = torch.zeros_like(x)
        xs, parts, start = x[tok], [], 0
        for e, n in enumerate(per_expert):
            if n:
                rows = slice(start, start + n)
                h = blk.expert_hidden(xs[rows], e)                                # [n, I]
                f = blk.expert_output(h, e)                                       # [n, H]
                out.index_add_(0, tok[rows], (f * gate[rows, None]).to(out.dtype))
                parts.append((e, rows, h, f))
            start += n
        if self.record:
            self._add(xs, parts, tok, eid, gate, T)
        return out.reshape(shape)

    @torch.no_grad()
    def _add(self, xs, parts, tok, eid, gate, T: int) -> None:
        col = self.collector
        valid = col._valid
        if valid is not None and valid.numel() != T:
            raise RuntimeError(f"the attention mask set on the collector covers {valid.numel()} tokens but the "
                               f"experts saw {T}; call set_mask(batch['attention_mask']) before every forward")
        keep = None if valid is None else valid.to(tok.device)[tok]               # [P] non-padding pairs
        stats = []
        for e, rows, h, f in parts:
            xe, h, f = xs[rows].detach(), h.detach(), f.detach()
            if keep is not None:
                k = keep[rows]
                xe, h, f = xe[k], h[k], f[k]
            if h.shape[0]:
                stats.append((e, xe, h, f))
        sums = col.sums[self.l]
        sums.tokens += T if valid is None else int(valid.sum())
        eid, gate = (eid, gate.detach()) if keep is None else (eid[keep], gate.detach()[keep])
        sums.add_outputs_(stats, eid=eid, gate=gate, num_experts=self.blk.num_experts)


class _Handle:
    def __init__(self, experts: nn.Module, config):
        self.experts, self.config = experts, config

    def remove(self) -> None:
        with _LOCK:
            _RECORDERS.pop(id(self.experts), None)
            entry = _CONFIGS.get(id(self.config))
            if entry is not None:
                entry[2] -= 1
                if entry[2] == 0:
                    del _CONFIGS[id(self.config)]
                    entry[0]._experts_implementation = entry[1]


def dispatches_through_interface(blk: MoEBlock) -> bool:
    """The experts module is a `@use_experts_implementation` class called as (hidden, top_k_index, top_k_weights),
    without zero-expert entries (indices past E that the eager loop would treat specially)."""
    ex = blk.experts
    return (blk.routed_call and getattr(ex, "config", None) is not None and hasattr(ex, "has_gate")
            and hasattr(type(ex).forward, "__wrapped__") and not getattr(ex, "has_post_expert_norm", False)
            and not any(ix.extra for ix in blk.indexed))


@torch.no_grad()
def _probe_matches_eager(blk: MoEBlock) -> bool:
    """Run the module's eager forward and this implementation on 16 random tokens with random routing; True when
    they agree to float rounding."""
    ex, cfg = blk.experts, blk.experts.config
    E, k = blk.num_experts, min(2, blk.num_experts)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, blk.hidden_size, generator=gen).to(blk.device, blk.down_weight().dtype)
    idx = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(16)]).to(blk.device)
    w = torch.rand(16, k, generator=gen).to(blk.device, x.dtype)
    previous = cfg._experts_implementation
    try:
        cfg._experts_implementation = "eager"
        want = ex(x, idx, w)
    except Exception:                    # noqa: BLE001 - a module that does not run this way keeps the hook
        return False
    finally:
        cfg._experts_implementation = previous
    want = want[0] if isinstance(want, (tuple, list)) else want
    got = _Recorder(None, 0, blk, record=False)(x, idx, w)
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    return torch.is_tensor(want) and want.shape == got.shape and torch.allclose(got, want, rtol=tol, atol=tol)


def record_experts(collector, l: int, blk: MoEBlock):
    """Switch block `blk` (collector.sums[l]) to the scoring implementation; returns a handle whose `remove()`
    switches it back, or None when the block keeps the collector's hook."""
    if blk.device.type == "meta" or not dispatches_through_interface(blk):
        return None
    key = (type(blk.experts), repr(blk.layout), blk.device.type, blk.down_weight().dtype)
    if key not in _VERDICTS:
        _VERDICTS[key] = _probe_matches_eager(blk)
    if not _VERDICTS[key]:
        return None
    _register()
    cfg = blk.experts.config
    with _LOCK:
        _RECORDERS[id(blk.experts)] = _Recorder(collector, l, blk)
        entry = _CONFIGS.setdefault(id(cfg), [cfg, cfg._experts_implementation, 0])
        entry[2] += 1
        cfg._experts_implementation = SCORING_IMPLEMENTATION
    return _Handle(blk.experts, cfg)
