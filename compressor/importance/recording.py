"""A scoring experts implementation: the routed experts' forward computed once, recording the calibration statistics.

The plain score hook (`ScoreCollector._experts_hook`) lets the experts module run and then recomputes every routed
expert on its tokens to read h = act(x Wg^T) * (x Wu^T) and f = h Wd^T, so a scoring pass pays the experts twice.
transformers 5 dispatches the forward of every `@use_experts_implementation` experts class through
`ExpertsInterface` by `config._experts_implementation` (transformers/integrations/moe.py); this module registers
one more implementation there, `moe_studio_scoring`, which computes the eager forward

    y_t = sum_{e in topk(t)} g_{t,e} f_e(x_t)       (pairs grouped by expert, experts ascending, `index_add_` per
                                                    expert into zeros: the eager loop's order of additions)

with `MoEBlock.expert_hidden` / `expert_output` (the views the hook recomputes with), and hands the same x_e, h_e,
f_e and g of the non-padding pairs to the collector's sums (`_BlockSums.add_outputs_`). When the model ran the
`grouped_mm` implementation, the up and down projections are instead two grouped matmuls over all pairs (the calls of
transformers' `grouped_mm_experts_forward`, keeping h and f), so scoring costs what the model's own forward costs. The statistics are those
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
from compressor.importance.formulas import routed_pairs

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

    def __init__(self, collector, l: int, blk: MoEBlock, *, record: bool = True, grouped: bool = False):
        self.collector, self.l, self.blk, self.record, self.grouped = collector, l, blk, record, grouped

    def __call__(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:

        blk, shape = self.blk, hidden.shape
        x = hidden.reshape(-1, shape[-1])                                         # [T, H]
        T = x.shape[0]
        idx, w = top_k_index.reshape(T, -1), top_k_weights.reshape(T, -1)       # [T, k]
        tok, eid, gate, per_expert = routed_pairs(idx, w, blk.num_experts)       # [P] each, grouped by expert
        out = torch.zeros_like(x)
        xs, parts, start = x[tok], [], 0
        if self.grouped:
            h_all, f_all = _grouped_experts(blk.experts, xs, eid, per_expert)   # [P, I], [P, H]
            out.index_add_(0, tok, (f_all * gate[:, None]).to(out.dtype))
        for e, n in enumerate(per_expert):
            if n:
                rows = slice(start, start + n)
                if self.grouped:
                    h, f = h_all[rows], f_all[rows]
                else:
                    h = blk.expert_hidden(xs[rows], e)                            # [n, I]
                    f = blk.expert_output(h, e)                                   # [n, H]
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


def _grouped_experts(ex: nn.Module, xs: torch.Tensor, eid: torch.Tensor, per_expert: list[int]):
    """h = act(up projections) and f = down projection of every pair, pairs grouped by expert (xs [P, H], eid [P]),
    as transformers' `grouped_mm_experts_forward` computes them (its `_grouped_linear` and the module's gate)."""
    from transformers.integrations.moe import _grouped_linear

    offsets = torch.cumsum(torch.tensor(per_expert, device=xs.device), 0, dtype=torch.int32)
    up = ex.gate_up_proj if ex.has_gate else ex.up_proj
    up_bias = (ex.gate_up_proj_bias if ex.has_gate else ex.up_proj_bias)[eid] if ex.has_bias else None
    proj = _grouped_linear(xs, up, offsets, bias=up_bias, is_transposed=ex.is_transposed)
    h = ex._apply_gate(proj) if ex.has_gate else ex.act_fn(proj)
    down_bias = ex.down_proj_bias[eid] if ex.has_bias else None
    return h, _grouped_linear(h, ex.down_proj, offsets, bias=down_bias, is_transposed=ex.is_transposed)


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
def _probe_matches_eager(blk: MoEBlock, grouped: bool = False) -> bool:
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
    try:
        got = _Recorder(None, 0, blk, record=False, grouped=grouped)(x, idx, w)
    except Exception:                    # noqa: BLE001 - e.g. a layout without the grouped attributes
        return False
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    return torch.is_tensor(want) and want.shape == got.shape and torch.allclose(got, want, rtol=tol, atol=tol)


def record_experts(collector, l: int, blk: MoEBlock):
    """Switch block `blk` (collector.sums[l]) to the scoring implementation; returns a handle whose `remove()`
    switches it back, or None when the block keeps the collector's hook."""
    if blk.device.type == "meta" or not dispatches_through_interface(blk):
        return None
    cfg = blk.experts.config
    grouped = _CONFIGS[id(cfg)][1] if id(cfg) in _CONFIGS else cfg._experts_implementation
    grouped = grouped == "grouped_mm" and blk.layout.form == "fused"
    key = (type(blk.experts), repr(blk.layout), blk.device.type, blk.down_weight().dtype, grouped)
    if key not in _VERDICTS:
        _VERDICTS[key] = _probe_matches_eager(blk, grouped)
    if not _VERDICTS[key] and grouped:                  # the per-expert loop may still match
        grouped = False
        key = key[:-1] + (False,)
        if key not in _VERDICTS:
            _VERDICTS[key] = _probe_matches_eager(blk, False)
    if not _VERDICTS[key]:
        return None
    _register()
    with _LOCK:
        _RECORDERS[id(blk.experts)] = _Recorder(collector, l, blk, grouped=grouped)
        entry = _CONFIGS.setdefault(id(cfg), [cfg, cfg._experts_implementation, 0])
        entry[2] += 1
        cfg._experts_implementation = SCORING_IMPLEMENTATION
    return _Handle(blk.experts, cfg)
