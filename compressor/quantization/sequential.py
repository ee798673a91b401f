"""Quantize a causal LM in memory, one decoder layer at a time (the plumbing around `grid` / `gptq`).

GPTQ is sequential (Frantar et al. 2022, section 4; llm-compressor's sequential pipeline): every decoder layer's
inputs are captured once (`compressor.stream.sweep.capture_inputs`: the model's own forward builds them), then for
i = 0 .. L-1: forward layer i on the current hidden states with Hessian hooks on its nn.Linear inputs and on its
experts (each expert's tokens only, `compressor.quantization.experts.RoutedInputs`), quantize its weights in place,
and forward the quantized layer again to give layer i+1 its inputs (`advance_`). So the error of the layers
already quantized is what the next layer's Hessian sees, and only one layer's Hessians exist at a time: the same
per-layer step runs on the layer-by-layer driver's skeleton (`compressor.stream`). Within a layer every Hessian
comes from the layer's unquantized weights (llm-compressor's default, not IST-DASLab's "true sequential").

Round to nearest (`method="rtn"`) needs no data. Experts that saw fewer than `gptq.min_expert_tokens` routed tokens
are rounded to nearest and listed in the report. Weights are changed in place to their grid values w_hat; the
scales and zero points go into `QuantizedParams` for the export.

    report, params = quantize_model_(model, batches, QuantPlan.of({"experts": SCHEMES["W4A16"]}))
    save_compressed(model, params, "out/w4")
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from compressor.progress import Reporter
from compressor.quantization.experts import RoutedInputs, expert_matrices
from compressor.quantization.gptq import HessianSum, gptq_quantize
from compressor.quantization.grid import QuantizedWeight, rtn
from compressor.quantization.targets import QuantPlan, layer_targets


@dataclass
class Quantized:
    """One quantized 2-D weight: its class, scheme and grid parameters (scale, zero)."""

    klass: str
    scheme: object
    scale: torch.Tensor
    zero: torch.Tensor


@dataclass
class QuantizedParams:
    """Scales and zero points of every quantized weight: `linear[module name]` and, for fused experts,
    `experts[experts module name][e][projection]` (projection gate / up / down)."""

    linear: dict = field(default_factory=dict)
    experts: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)        # experts module name -> MoEBlock.layout

    def classes(self) -> dict:
        """{class: scheme} of what was quantized."""
        out = {q.klass: q.scheme for q in self.linear.values()}
        out.update({"experts": q.scheme for ex in self.experts.values() for per in ex.values() for q in per.values()})
        return out


@dataclass
class QuantReport:
    method: str
    schemes: dict                        # class -> label, or "kept"
    matrices: dict                       # class -> number of 2-D matrices quantized
    params_quantized: int
    gptq_matrices: int = 0
    rtn_matrices: int = 0
    experts_rtn_fallback: list = field(default_factory=list)    # "layer.expert" ids rounded to nearest (few tokens)
    expert_tokens_min: int | None = None
    gptq_loss: float = 0.0
    calibration_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _quantize(w: torch.Tensor, hs: HessianSum | None, scheme, plan: QuantPlan, scale_dtype, *, min_rows: int = 1
              ) -> tuple[QuantizedWeight, str]:
    g = plan.gptq
    if plan.method == "rtn" or hs is None or hs.n < min_rows:
        return rtn(w, scheme, scale_dtype=scale_dtype), "rtn"
    return gptq_quantize(w, hs.hessian(), scheme, block_size=g.block_size, percdamp=g.percdamp,
                         act_order=g.act_order, scale_dtype=scale_dtype), "gptq"


class _LinearInputs:
    """HessianSum of every targeted nn.Linear's input, filled by forward pre-hooks (removed by `remove`)."""

    def __init__(self, modules: dict[str, nn.Linear]):
        self.sums = {n: HessianSum(m.in_features, m.weight.device) for n, m in modules.items()}
        self._hooks = [m.register_forward_pre_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name):
        def hook(module, args):
            self.sums[name].add(args[0].detach())
        return hook

    def remove(self):
        for h in self._hooks:
            h.remove()


@torch.no_grad()
def quantize_layer_(model: nn.Module, adapter, i: int, plan: QuantPlan, params: QuantizedParams,
                    report: QuantReport, *, acts=None, scale_dtype=None, blocks=None) -> None:
    """Quantize decoder layer i in place; with `acts` (GPTQ) its Hessians come from forwarding layer i on them.
    Hooks are removed in a `finally`."""
    from compressor.stream.sweep import observe

    found = layer_targets(model, adapter, i, blocks=blocks)
    linears = {n: m for n, (k, m) in found.linears.items() if plan.scheme(k) is not None}
    blocks_q = found.blocks if plan.scheme("experts") is not None else []
    layer = adapter.decoder_layers(model)[i]
    sums, routed = None, []
    if plan.method == "gptq" and acts is not None:
        sums = _LinearInputs(linears)
        try:
            routed = [RoutedInputs(b) for b in blocks_q]
            observe(layer, acts, i)
        finally:
            sums.remove()
            for r in routed:
                r.remove()
    for name, mod in linears.items():
        klass = found.linears[name][0]
        res, how = _quantize(mod.weight, sums.sums[name] if sums else None, plan.scheme(klass), plan, scale_dtype)
        mod.weight.copy_(res.weight)
        params.linear[name] = Quantized(klass, plan.scheme(klass), res.scale, res.zero)
        _count(report, klass, how, res, mod.weight.numel())
    names = {id(m): n for n, m in model.named_modules()}
    for k, blk in enumerate(blocks_q):
        _quantize_experts_(blk, routed[k] if routed else None, names[id(blk.experts)], plan, params, report,
                           scale_dtype)


def _quantize_experts_(blk, rec: RoutedInputs | None, name: str, plan: QuantPlan, params: QuantizedParams,
                       report: QuantReport, scale_dtype) -> None:
    scheme = plan.scheme("experts")
    params.layouts[name] = blk.layout
    per_expert = params.experts.setdefault(name, {})
    min_tokens = plan.gptq.min_expert_tokens
    for e in range(blk.num_experts):
        if rec is not None:
            n = rec.tokens[e]
            report.expert_tokens_min = n if report.expert_tokens_min is None else min(report.expert_tokens_min, n)
            if n < min_tokens:
                report.experts_rtn_fallback.append(f"{blk.layer}.{e}")
        per_expert[e] = {}
        for proj, w in expert_matrices(blk, e).items():
            hs = None if rec is None else (rec.hidden[e] if proj == "down" else rec.inputs[e])
            res, how = _quantize(w, hs, scheme, plan, scale_dtype, min_rows=min_tokens)
            w.copy_(res.weight)
            per_expert[e][proj] = Quantized("experts", scheme, res.scale, res.zero)
            _count(report, "experts", how, res, w.numel())


def _count(report: QuantReport, klass: str, how: str, res: QuantizedWeight, numel: int) -> None:
    report.matrices[klass] = report.matrices.get(klass, 0) + 1
    report.params_quantized += numel
    if how == "gptq":
        report.gptq_matrices += 1
        report.gptq_loss += res.loss or 0.0
    else:
        report.rtn_matrices += 1


def check_plan(model: nn.Module, plan: QuantPlan, *, adapter=None, blocks=None) -> None:
    """Refuse, before any work, a plan whose groups do not divide a targeted weight's input size (naming it)."""
    from compressor.families import resolve_adapter
    from compressor.quantization.grid import check_shape

    adapter = adapter or resolve_adapter(model)
    blocks = blocks if blocks is not None else adapter.moe_blocks(model)
    names = {id(m): n for n, m in model.named_modules()}
    for i in range(len(adapter.decoder_layers(model))):
        found = layer_targets(model, adapter, i, blocks=blocks)
        for name, (klass, mod) in found.linears.items():
            if plan.scheme(klass) is not None:
                check_shape(mod.weight, plan.scheme(klass), name=f"{name} ({klass})")
        if plan.scheme("experts") is not None:
            for blk in found.blocks:
                for proj, w in expert_matrices(blk, 0).items():
                    check_shape(w, plan.scheme("experts"), name=f"{names[id(blk.experts)]} {proj} (experts)")


@torch.no_grad()
def quantize_model_(model: nn.Module, batches: list | None, plan: QuantPlan, *, scale_dtype: torch.dtype | None = None,
                    reporter: Reporter | None = None) -> tuple[QuantReport, QuantizedParams]:
    """Quantize `model` in place by `plan` (module docstring); `batches` (dicts with input_ids / attention_mask, as
    `compressor.data.calibration_for` gives) are needed for GPTQ. `scale_dtype` = the checkpoint's dtype the
    scales will be stored in. Returns the report and the parameters the export needs."""
    from compressor.families import resolve_adapter
    from compressor.stream.sweep import advance_, capture_inputs

    if plan.method == "gptq" and not batches:
        raise ValueError("GPTQ needs calibration batches (compressor.data.calibration_for); none were given")
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    adapter = resolve_adapter(model)
    blocks = adapter.moe_blocks(model)
    check_plan(model, plan, adapter=adapter, blocks=blocks)
    report = QuantReport(method=plan.method, matrices={}, params_quantized=0,
                         schemes={k: (s.label() if s is not None else "kept") for k, s in plan.schemes.items()})
    params = QuantizedParams()
    acts = None
    if plan.method == "gptq":
        dev = next(model.parameters()).device
        batches = [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()} if isinstance(b, dict) else b
                   for b in batches]                      # the batches on the model's device (a GPU run)
        acts = capture_inputs(model, batches)
        report.calibration_tokens = int(sum(ids.numel() for ids in acts.input_ids))
    layers = adapter.decoder_layers(model)
    for i, layer in enumerate(layers):
        reporter.report("quantize", i, len(layers), message=f"layer {i + 1}/{len(layers)}: {plan.method}")
        quantize_layer_(model, adapter, i, plan, params, report, acts=acts, scale_dtype=scale_dtype, blocks=blocks)
        if acts is not None and i + 1 < len(layers):
            advance_(layer, acts, i)
    report.seconds = time.perf_counter() - t0
    return report, params
