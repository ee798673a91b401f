"""Calibration hooks: one context manager adds them, and removes every one of them in a `finally`.

Hooks (all statistics float64, padding kept out through the mask set before each forward):
- on every MoE block's `experts` module: routing (counts, router weights), REAP / MAN sums, and per-neuron |h| sums,
  by recomputing each routed expert with `MoEBlock.expert_hidden` / `expert_output` under no_grad. The hook sees
  `args = (hidden [T, H], top_k_index [T, k], top_k_weights [T, k])` with T = batch x seq in batch-major order.
  Where the experts module dispatches through transformers' `ExpertsInterface`, the scoring experts implementation
  (`compressor.importance.recording`) takes the hook's place: it computes the experts once and records the same
  sums on the way (MOE_STUDIO_SCORING_EXPERTS=hooks keeps the hook everywhere);
- on every decoder layer: cos(h_in, h_out) per token, for block influence;
- on every nn.Linear inside a decoder layer except routers: sum of x^2 per input feature (Wanda ||X_j||^2).
After each batch's backward pass, `accumulate_taylor_` adds the expert gradients g_b into a float32 running sum
G = sum_b g_b (then clears them) and adds the per-batch saliency |w * g_b| per expert and per neuron; `result` scores
|w * G| (LLM-Pruner's rule, the default "taylor") beside sum_b |w * g_b| ("taylor_per_batch").

    with collect_scores(model, adapter) as col:
        for batch in batches:
            col.set_mask(batch["attention_mask"])
            model(**batch)
    experts, neurons, layers = col.result()
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from compressor.families import FamilyAdapter, MoEBlock
from compressor.importance import formulas as M
from compressor.importance.formulas import routed_pairs
from compressor.importance.scores import ExpertScores, LayerScores, NeuronScores
from compressor.importance.recording import record_experts
from compressor.importance.wanda_stats import layer_statistics, sparsifiable_maps, wanda_inputs_from_sums

F64 = torch.float64
WANT_ALL = frozenset({"experts", "neurons", "layers", "wanda"})


def wanda_targets(model: nn.Module, adapter: FamilyAdapter) -> dict[int, list[tuple[str, nn.Linear]]]:
    """The dense linear maps Wanda / DLP score, per decoder layer: every nn.Linear inside the layer except the
    routers and shared-expert gates (routing maps are never pruned). Names are the model's module names."""
    names = {id(m): n for n, m in model.named_modules()}
    skip = set()
    for blk in adapter.moe_blocks(model, required=False):
        for mod in (blk.router, blk.shared_gate):
            if mod is not None:
                skip.update(id(m) for m in mod.modules())
    out = {}
    for i, layer in enumerate(adapter.decoder_layers(model)):
        out[i] = [(names[id(m)], m) for m in layer.modules() if isinstance(m, nn.Linear) and id(m) not in skip]
    return out


class ScoreCollector:
    """Holds the running sums and the hook handles. Build it through `collect_scores`."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, *, want=WANT_ALL, outlier_m: float = 5.0,
                 recording: bool | None = None):
        unknown = set(want) - WANT_ALL
        if unknown:
            raise ValueError(f"unknown score kinds {sorted(unknown)}; choose from {sorted(WANT_ALL)}")
        self.model, self.adapter, self.want, self.outlier_m = model, adapter, frozenset(want), outlier_m
        # True: experts computed once by the scoring implementation where the family allows it (recording.py);
        # False: the hook that recomputes them; None: True unless MOE_STUDIO_SCORING_EXPERTS=hooks
        self.recording = recording if recording is not None else scoring_experts_mode() == "record"
        self.blocks: list[MoEBlock] = adapter.moe_blocks(model, required=False)   # [] for a dense one-layer view
        self.num_layers = len(adapter.decoder_layers(model))
        self.top_k = adapter.top_k(model.config)
        self._handles: list = []
        self._valid: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}
        self.sums = [_BlockSums(blk, neurons="neurons" in self.want, wanda="wanda" in self.want)
                     for blk in self.blocks]
        self.cos_sum = [None] * self.num_layers        # per decoder layer: 0-d float64 on the layer's device
        self.layer_tokens = [0] * self.num_layers
        self.linear_sq: dict[str, torch.Tensor] = {}
        self.taylor_tokens = 0

    # -- padding -----------------------------------------------------------------------------------------------
    def set_mask(self, attention_mask: torch.Tensor | None) -> None:
        """The current batch's attention mask [B, S] (1 = real token), or None when every token counts.
        Hooks see tokens flattened batch-major, so row t of a hook's [T, H] input is mask.reshape(-1)[t]."""
        if attention_mask is None:
            self._valid = None
            return
        valid = attention_mask.reshape(-1).bool()
        self._valid = None if bool(valid.all()) else valid

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [T', D]: the non-padding rows of the flattened tokens."""
        flat = x.reshape(-1, x.shape[-1])
        if self._valid is None:
            return flat
        if self._valid.numel() != flat.shape[0]:
            raise RuntimeError(f"the attention mask set on the collector covers {self._valid.numel()} tokens but a "
                               f"hook saw {flat.shape[0]}; call set_mask(batch['attention_mask']) before every forward")
        return flat[self._valid.to(flat.device)]

    # -- hooks -------------------------------------------------------------------------------------------------
    def register_hooks(self) -> None:
        if self.want & {"experts", "neurons", "wanda"}:
            for blk in self.blocks:
                if not blk.routed_call:
                    raise ValueError(f"{self.adapter.family}: the experts module of {blk.name} "
                                     f"({type(blk.experts).__name__}) is not called with the routed token indices "
                                     "and weights, so per-expert and per-neuron scores cannot be collected; "
                                     "score layers only (want=('layers',)) or slim by layer dropping")
            for l, blk in enumerate(self.blocks):           # experts computed once where the family allows it
                recorded = record_experts(self, l, blk) if self.recording else None
                self._handles.append(recorded or blk.experts.register_forward_hook(self._experts_hook(l, blk)))
        if "layers" in self.want:
            for i, layer in enumerate(self.adapter.decoder_layers(self.model)):
                self._handles.append(layer.register_forward_pre_hook(self._layer_in_hook(i), with_kwargs=True))
                self._handles.append(layer.register_forward_hook(self._layer_out_hook(i)))
        if "wanda" in self.want:
            for maps in wanda_targets(self.model, self.adapter).values():
                for name, lin in maps:
                    self.linear_sq[name] = torch.zeros(lin.in_features, dtype=F64, device=lin.weight.device)
                    self._handles.append(lin.register_forward_pre_hook(self._linear_hook(name)))

    def remove_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._pending.clear()

    def _experts_hook(self, l: int, blk: MoEBlock):
        def hook(module, args, output):
            hidden, top_idx, top_w = args[0], args[1], args[2]
            with torch.no_grad():
                T = hidden.reshape(-1, hidden.shape[-1]).shape[0]
                x = self._rows(hidden.detach())                                   # [T', H]
                idx = self._rows(top_idx.reshape(T, -1))                          # [T', k]
                w = self._rows(top_w.detach().reshape(T, -1))                     # [T', k]
                self.sums[l].add_tokens_(blk, x, idx, w)
        return hook

    def _layer_in_hook(self, i: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            if h is not None:
                self._pending[i] = h.detach()
        return hook

    def _layer_out_hook(self, i: int):
        def hook(module, args, output):
            h_in = self._pending.pop(i, None)
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            if h_in is None or not torch.is_tensor(h_out):
                return
            with torch.no_grad():
                a, b = self._rows(h_in), self._rows(h_out.detach())
                c = M.cosine_sum(h_in=a, h_out=b)
                self.cos_sum[i] = c if self.cos_sum[i] is None else self.cos_sum[i] + c
                self.layer_tokens[i] += a.shape[0]
        return hook

    def _linear_hook(self, name: str):
        def hook(module, args):
            with torch.no_grad():
                x = self._rows(args[0].detach())
                self.linear_sq[name] += x.float().square().sum(0, dtype=F64)
        return hook

    # -- Taylor ------------------------------------------------------------------------------------------------
    def expert_parameters(self) -> list[nn.Parameter]:
        """Every tensor of every routed expert (the ones the Taylor pass needs gradients for)."""
        return [p for blk in self.blocks for p in blk.expert_parameters().values()]

    @torch.no_grad()
    def accumulate_taylor_(self, *, tokens: int) -> None:
        """Take in one batch's gradients g_b of a summed loss over `tokens` loss tokens: G += g_b (float32, one
        buffer per expert tensor), per-batch sums += |w * g_b| per expert and per neuron; then clear the gradients
        (set to None). Raises if a gradient is missing."""
        for blk, sums in zip(self.blocks, self.sums):
            params = blk.expert_parameters()
            if any(p.grad is None for p in params.values()):
                raise RuntimeError(f"{blk.name}: expert parameters have no gradient; the Taylor pass needs "
                                   "requires_grad on them and a backward() before accumulate_taylor_")
            grads = {name: p.grad for name, p in params.items()}
            sums.add_taylor_(_expert_taylor(blk, grads), _neuron_taylor(blk, grads))
            sums.add_grads_(grads)
            for p in params.values():
                p.grad = None
        self.taylor_tokens += int(tokens)

    # -- result ------------------------------------------------------------------------------------------------
    def result(self) -> tuple[ExpertScores | None, NeuronScores | None, LayerScores | None]:
        """Scores from the sums so far, on the CPU (copies; the collector may keep collecting)."""
        layer_ids = [b.layer for b in self.blocks]
        st = lambda name: _stack([getattr(s, name) for s in self.sums])  # noqa: E731  [L, ...] float64 on CPU
        experts = neurons = layers = None
        tokens = max((s.tokens for s in self.sums), default=0)
        taylor = self.taylor_tokens > 0
        with torch.no_grad():               # LLM-Pruner's rule: |w * G| per expert [E] and per neuron [E, I]
            acc = [(_expert_taylor(b, s.grad_sum), _neuron_taylor(b, s.grad_sum))
                   for b, s in zip(self.blocks, self.sums)] if taylor else []
        if "experts" in self.want and self.blocks:
            experts = ExpertScores(layers=layer_ids, tokens=tokens, top_k=self.top_k, counts=st("counts"),
                                   gate_sum=st("gate_sum"), reap_sum=st("reap_sum"), man_sum=st("man_sum"),
                                   max_abs=st("max_abs"), taylor_sum=_stack([a[0] for a in acc]) if taylor else None,
                                   taylor_per_batch_sum=st("taylor_expert") if taylor else None,
                                   taylor_tokens=self.taylor_tokens)
        if "neurons" in self.want and self.blocks:
            down_norm = _stack([M.down_column_norms(down=b.down_weight()) for b in self.blocks])
            neurons = NeuronScores(layers=layer_ids, counts=st("counts"), abs_sum=st("abs_sum"), down_norm=down_norm,
                                   taylor_sum=_stack([a[1] for a in acc]) if taylor else None,
                                   taylor_per_batch_sum=st("taylor_neuron") if taylor else None,
                                   taylor_tokens=self.taylor_tokens)
        if self.want & {"layers", "wanda"}:
            cos = torch.tensor([0.0 if c is None else float(c) for c in self.cos_sum], dtype=F64)
            layers = LayerScores(layers=list(range(self.num_layers)), cos_sum=cos,
                                 tokens=torch.tensor(self.layer_tokens, dtype=F64), outlier_m=self.outlier_m)
            if "wanda" in self.want:
                layers.wanda_inputs, layers.dlp, layers.owl = self._wanda()
        return experts, neurons, layers

    @torch.no_grad()
    def _wanda(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(sum_t x_t^2 per map input, DLP's median Wanda score per layer, OWL's outlier share per layer). The layer
        statistics are `wanda_stats.layer_statistics` over `sparsifiable_maps`, the very function and maps
        `sparsify_` allocates with, so Explore shows what a sparsity run uses."""
        inputs = {name: sq.detach().cpu().clone() for name, sq in self.linear_sq.items()}
        for blk, sums in zip(self.blocks, self.sums):
            inputs[f"{blk.name}.experts.gate_up"], inputs[f"{blk.name}.experts.down"] = sums.x_sq.cpu(), sums.h_sq.cpu()
        dlp, owl, _ = layer_statistics(sparsifiable_maps(self.model), wanda_inputs_from_sums(inputs), self.num_layers,
                                       owl_m=self.outlier_m, dlp_statistic="median")
        return inputs, dlp, owl


class _BlockSums:
    """Running float64 sums of one MoE block, kept on the block's device (no host sync per expert)."""

    def __init__(self, blk: MoEBlock, *, neurons: bool, wanda: bool):
        E, I, H = blk.num_experts, blk.intermediate_size, blk.hidden_size
        z = lambda *shape: torch.zeros(*shape, dtype=F64, device=blk.device)  # noqa: E731
        self.tokens = 0
        self.counts, self.gate_sum, self.reap_sum, self.man_sum, self.max_abs = (z(E) for _ in range(5))
        self.abs_sum = z(E, I) if neurons else None
        self.x_sq = z(E, H) if wanda else None               # sum x^2 over the inputs routed to each expert
        self.h_sq = z(E, I) if wanda else None               # sum h^2 over their intermediate activations
        self.taylor_expert, self.taylor_neuron = z(E), z(E, I)     # per-batch rule: sum_b |w * g_b|
        self.grad_sum: dict[str, torch.Tensor] = {}                  # G = sum_b g_b per expert tensor, float32

    def add_tokens_(self, blk: MoEBlock, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> None:
        """x [T, H] non-padding tokens, idx / w [T, k] their experts and router weights: recompute each routed
        expert on its tokens and add counts, gate / REAP / MAN sums, max |f|, and per-neuron sums. (The scoring
        experts implementation, `compressor.importance.recording`, adds the outputs it computed anyway instead.)"""
        tok, eid, gate, per_expert = routed_pairs(idx, w, blk.num_experts)
        self.tokens += x.shape[0]
        xs = x[tok]                                                               # [P, H]
        parts, start = [], 0
        for e, n in enumerate(per_expert):
            if n:
                xe = xs[start:start + n]                                          # [n, H]
                h = blk.expert_hidden(xe, e)                                      # [n, I]
                parts.append((e, xe, h, blk.expert_output(h, e)))
            start += n
        self.add_outputs_(parts, eid=eid, gate=gate, num_experts=blk.num_experts)

    def add_outputs_(self, parts: list, *, eid: torch.Tensor, gate: torch.Tensor, num_experts: int) -> None:
        """parts: (e, x_e [n, H], h_e [n, I], f_e(x_e) [n, H]) per expert, for the routed pairs grouped by expert
        in the order of eid / gate [P] (`routed_pairs`); adds every sum (under no_grad, from detached values)."""
        E = num_experts
        norms, peaks = [], []
        for e, xe, h, out in parts:
            norm, peak = M.output_norm_and_peak(output=out)                       # [n], [n]
            norms.append(norm)
            peaks.append(peak)
            if self.abs_sum is not None:
                self.abs_sum[e] += h.abs().sum(0, dtype=F64)
            if self.x_sq is not None:
                self.x_sq[e] += xe.float().square().sum(0, dtype=F64)
                self.h_sq[e] += h.float().square().sum(0, dtype=F64)
        if not norms:
            return
        s = M.routed_expert_sums(expert=eid, gate=gate, out_norm=torch.cat(norms), out_peak=torch.cat(peaks),
                                 num_experts=E)
        self.counts += s["count"]
        self.gate_sum += s["gate_sum"]
        self.reap_sum += s["reap_sum"]
        self.man_sum += s["man_sum"]
        torch.maximum(self.max_abs, s["max_abs"], out=self.max_abs)

    def add_taylor_(self, expert: torch.Tensor, neuron: torch.Tensor) -> None:
        self.taylor_expert += expert.to(self.taylor_expert.device)
        self.taylor_neuron += neuron.to(self.taylor_neuron.device)

    def add_grads_(self, grads: dict[str, torch.Tensor]) -> None:
        """G += g_b. Float32, not float64: the sum is as large as the experts themselves (a float64 copy would cost 4x
        a bf16 model's expert bytes), and a few dozen batch gradients, each already rounded to the model's dtype,
        lose < 1e-6 relative in a float32 sum."""
        for name, g in grads.items():
            if name in self.grad_sum:
                self.grad_sum[name] += g
            else:
                self.grad_sum[name] = g.detach().to(torch.float32, copy=True)


def scoring_experts_mode() -> str:
    """$MOE_STUDIO_SCORING_EXPERTS: "record" (default; `compressor.importance.recording`) or "hooks"."""
    import os
    mode = os.environ.get("MOE_STUDIO_SCORING_EXPERTS", "").strip() or "record"
    if mode not in ("record", "hooks"):
        raise ValueError(f"MOE_STUDIO_SCORING_EXPERTS={mode!r} must be 'record' (experts computed once while "
                         "scoring) or 'hooks' (recomputed by a hook)")
    return mode


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach().to("cpu", F64) for t in ts])


def _expert_taylor(blk: MoEBlock, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-expert Taylor [E] of one block: sum over every expert tensor P of |P[e] * grads[P][e]| (every stored
    form is expert-major, so P.reshape(E, -1)[e] is expert e's part)."""
    E = blk.num_experts
    params = [(p.reshape(E, -1), grads[n].reshape(E, -1)) for n, p in blk.expert_parameters().items()]
    return torch.cat([M.taylor_expert_scores(params=[(p[e:e + 1], g[e:e + 1]) for p, g in params])
                      for e in range(E)])                                         # one expert at a time


def _neuron_taylor(blk: MoEBlock, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-neuron Taylor [E, I] of one block from `grads` (parameter name -> a gradient of its shape), in the
    canonical layout: the gradients go through the same views as the weights (a copy of the block whose 'experts'
    hold the gradients)."""
    gate, up, down = blk.canonical()
    gate_g, up_g, down_g = blk.canonical(grads)                                # views, no copies
    w = dict(gate=gate, up=up, down=down, gate_grad=gate_g, up_grad=up_g, down_grad=down_g)
    bias_name = blk.layout.gate_up_bias
    if bias_name:
        g_pos, u_pos = blk.gate_up_positions(torch.arange(blk.intermediate_size, device=blk.device))
        b, gb = blk.tensors()[bias_name], grads[bias_name]
        w.update(gate_bias=b[:, g_pos], up_bias=b[:, u_pos], gate_bias_grad=gb[:, g_pos], up_bias_grad=gb[:, u_pos])
    return torch.cat([M.taylor_neuron_scores(**{k: None if v is None else v[e:e + 1] for k, v in w.items()})
                      for e in range(blk.num_experts)])                          # one expert at a time


@contextmanager
def collect_scores(model: nn.Module, adapter: FamilyAdapter, *, want=WANT_ALL, outlier_m: float = 5.0
                   ) -> Iterator[ScoreCollector]:
    """Register the calibration hooks on `model`, yield the collector, remove every hook on exit (also on error).

    want: subset of {"experts", "neurons", "layers", "wanda"}; outlier_m: OWL's M for the outlier ratio."""
    collector = ScoreCollector(model, adapter, want=want, outlier_m=outlier_m)
    try:
        collector.register_hooks()
        yield collector
    finally:
        collector.remove_hooks()
