"""The calibration pass, layer by layer: the same hooks and sums as `compressor.importance.analyze`, with only one
decoder layer's weights in memory at a time.

Forward sweep: for each layer i, load it, register the score hooks on a one-layer view (`Skeleton.layer_view`), run
every batch's hidden states through it, read the layer's scores, free it. With `taylor=True` the inputs of every
layer are kept and a backward sweep follows: the gradient of the summed next-token loss with respect to the last
hidden states is taken through norm + lm_head, then for i = L-1 .. 0 layer i is reloaded, recomputed on its stored
inputs with gradients on its routed experts only, back-propagated with the incoming gradient (per batch, as the
in-memory pass does), and its Taylor sums read: the collector adds every batch's expert gradients into one sum G and
scores |w * G| (LLM-Pruner's rule, "taylor") beside sum_b |w * g_b| ("taylor_per_batch"), exactly as in memory.
The result is the `ImportanceReport` `analyze` gives for the same model and batches (equal up to float summation
order; bitwise for the statistics of the forward sweep).

    report = stream_analyze(Path("big-model"), batches, config=AnalyzeConfig(taylor=False))
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from compressor.families import resolve_adapter
from compressor.importance.analyze import AnalyzeConfig, next_token_loss_sum
from compressor.importance.collect import ScoreCollector
from compressor.importance.scores import SCORES_VERSION, ExpertScores, ImportanceReport, LayerScores, NeuronScores
from compressor.progress import Reporter
from compressor.families.catalog import check_streamable_family
from compressor.stream.skeleton import Skeleton
from compressor.stream.sweep import advance_, capture_inputs, final_logits, run_layer


def stream_analyze(folder: Path | str, batches, *, config: AnalyzeConfig = AnalyzeConfig(),
                   dtype: torch.dtype | None = None, skeleton: Skeleton | None = None, device: str = "cpu",
                   spill=None,
                   reporter: Reporter | None = None) -> ImportanceReport:
    """Score experts, neurons and layers of the checkpoint in `folder` on `batches`, one layer in memory at a time.
    Batches are as for `analyze` (dicts / (ids, mask) pairs / id tensors). `device` (a resolved torch device name)
    holds the current layer; activations, embeddings and head stay on the CPU, past `spill`'s limit on disk
    (`compressor.stream.spill`)."""
    reporter = reporter or Reporter()
    sk = skeleton or Skeleton.open(folder, dtype=dtype, device=device)
    check_streamable_family(sk.config)
    sk.load_globals_()
    batches = list(batches)
    started = time.perf_counter()
    acts = capture_inputs(sk, batches, spill=spill)
    sk.release_globals_()
    L = len(sk.layers)
    parts, collectors, kept_inputs, layer_seconds = _forward_sweep(sk, acts, config, reporter)
    loss_sum, loss_tokens, head_seconds = _head_and_backward_sweep_(sk, acts, parts, collectors, kept_inputs,
                                                                    taylor=config.taylor, reporter=reporter)
    seconds = time.perf_counter() - started
    tokens = sum(int(m.sum()) if m is not None else ids.numel() for ids, m in zip(acts.input_ids, acts.masks))
    if tokens == 0:
        raise ValueError("the calibration batches held no (unmasked) tokens; give at least one batch with text")
    experts, neurons, layers = merge_layer_scores(parts, L)
    adapter = resolve_adapter(sk.model)
    meta = _report_meta(sk, adapter, config, tokens=tokens, batches=len(batches), loss_sum=loss_sum,
                        loss_tokens=loss_tokens, seconds=seconds, layer_seconds=layer_seconds,
                        head_seconds=head_seconds)
    return ImportanceReport(family=adapter.family, experts=experts, neurons=neurons, layers=layers, meta=meta)


def _forward_sweep(sk: Skeleton, acts, config: AnalyzeConfig,
                   reporter: Reporter) -> tuple[list[tuple], list[ScoreCollector], list[list[torch.Tensor]], list]:
    """For each layer i: load it, run every batch through it with the score hooks on its one-layer view, free it.
    Returns (parts, collectors, kept_inputs, layer_seconds): without `config.taylor` parts[i] holds layer i's
    finished scores; with it, parts are left to the backward sweep, which gets every layer's collector and inputs."""
    L = len(sk.layers)
    kept_inputs: list[list[torch.Tensor]] = []
    collectors: list[ScoreCollector] = []
    parts: list[tuple] = [None] * L
    layer_seconds = []
    for i in range(L):
        tl = time.perf_counter()
        reporter.report("calibrate", i, L * (2 if config.taylor else 1), message=f"layer {i + 1}/{L}: scoring")
        sk.load_layer_(i)
        view = sk.layer_view(i)
        col = ScoreCollector(view, resolve_adapter(view), want=config.want, outlier_m=config.outlier_m)
        if config.taylor:
            kept_inputs.append(list(acts.hidden))
        col.register_hooks()
        try:
            advance_(sk.layers[i], acts, i, before_batch=lambda b: col.set_mask(acts.masks[b]))
        finally:
            col.remove_hooks()
        if config.taylor:
            collectors.append(col)
        else:
            parts[i] = col.result()
        sk.release_layer_(i)
        layer_seconds.append(time.perf_counter() - tl)
    return parts, collectors, kept_inputs, layer_seconds


def _head_and_backward_sweep_(sk: Skeleton, acts, parts: list[tuple], collectors: list[ScoreCollector],
                              kept_inputs: list[list[torch.Tensor]], *, taylor: bool,
                              reporter: Reporter) -> tuple[float, int, float]:
    """The next-token loss through norm + lm_head (timed as the head); with `taylor`, then for i = L-1 .. 0 the
    backward step of layer i fills parts[i] (each layer's stored inputs are popped, and the gradients handed down,
    as they are used). Returns (loss_sum, loss_tokens, head_seconds)."""
    th = time.perf_counter()
    sk.load_globals_()
    loss_sum, loss_tokens, grads = _loss_and_grads(sk, acts, taylor=taylor)
    sk.release_globals_()
    head_seconds = time.perf_counter() - th
    if taylor:
        L = len(sk.layers)
        for i in reversed(range(L)):
            reporter.report("calibrate", 2 * L - 1 - i, 2 * L, message=f"layer {i + 1}/{L}: Taylor backward")
            grads, parts[i] = _taylor_backward(sk, i, collectors[i], kept_inputs.pop(), grads, acts)
    return loss_sum, loss_tokens, head_seconds


def _report_meta(sk: Skeleton, adapter, config: AnalyzeConfig, *, tokens: int, batches: int, loss_sum: float,
                 loss_tokens: int, seconds: float, layer_seconds: list, head_seconds: float) -> dict:
    """The report's meta: the model's MoE shape, the calibration's size, mean loss and timings, and how it ran."""
    blocks = adapter.moe_blocks(sk.model)
    return {
        "version": SCORES_VERSION, "family": adapter.family, "model_type": sk.config.model_type,
        "num_layers": len(sk.layers), "moe_layers": [b.layer for b in blocks], "num_experts": blocks[0].num_experts,
        "top_k": adapter.top_k(sk.config), "expert_width": blocks[0].intermediate_size,
        "tokens": tokens, "batches": batches, "loss_tokens": loss_tokens,
        "ce_loss": loss_sum / max(loss_tokens, 1), "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9),
        "taylor": config.taylor, "config": config.to_dict(), "dtype": str(sk.dtype).removeprefix("torch."),
        "experts_implementation": getattr(sk.config, "_experts_implementation", None), "streamed": True,
        "layer_seconds": layer_seconds, "head_seconds": head_seconds,
    }


def _loss_and_grads(sk: Skeleton, acts, *, taylor: bool) -> tuple[float, int, list[torch.Tensor] | None]:
    """Summed next-token loss over the batches; with `taylor`, also d(loss_b)/d(h_L) per batch. One row at a time:
    the logits of a 150k vocabulary over a whole batch would cost more than a decoder layer."""
    loss_sum, loss_tokens, grads = 0.0, 0, [] if taylor else None
    for b, h in enumerate(acts.hidden):
        ids, mask = acts.input_ids[b], acts.masks[b]
        rows = []
        for r in range(h.shape[0]):
            with torch.set_grad_enabled(taylor):
                hr = h[r:r + 1].detach().requires_grad_(taylor)
                loss, n = next_token_loss_sum(logits=final_logits(sk, hr), input_ids=ids[r:r + 1],
                                              attention_mask=None if mask is None else mask[r:r + 1])
                if taylor:
                    rows.append(torch.autograd.grad(loss, hr)[0])
            loss_sum, loss_tokens = loss_sum + float(loss.detach()), loss_tokens + n
        if taylor:
            grads.append(torch.cat(rows))
    return loss_sum, loss_tokens, grads


def _taylor_backward(sk: Skeleton, i: int, col: ScoreCollector, inputs: list[torch.Tensor],
                     grads_out: list[torch.Tensor], acts) -> tuple[list[torch.Tensor], tuple]:
    """Recompute layer i on its inputs, back-propagate `grads_out` batch by batch, hand each batch's expert
    gradients to the collector (which sums them, and |w * g_b|); return the gradients with respect to the layer's
    inputs and the layer's finished scores (|w * sum_b g_b| read once, in `col.result()`)."""
    layer = sk.load_layer_(i)
    expert_params = {id(p) for p in col.expert_parameters()}
    for p in layer.parameters():
        p.requires_grad_(id(p) in expert_params)
    grads_in = []
    for b, (h, g) in enumerate(zip(inputs, grads_out)):
        with torch.enable_grad():
            h = h.detach().requires_grad_(True)
            out = run_layer(layer, h, acts.kwargs(i, b))
            out.backward(g)
        grads_in.append(h.grad)
        if col.blocks:                                 # a dense layer has no experts to score
            col.accumulate_taylor_(tokens=_loss_tokens(acts.input_ids[b], acts.masks[b]))
    result = col.result()
    sk.release_layer_(i)
    return grads_in, result


def _loss_tokens(ids: torch.Tensor, mask: torch.Tensor | None) -> int:
    """Positions t where t and t+1 are both real tokens (what next_token_loss_sum counts)."""
    if mask is None:
        return int(ids[:, 1:].numel())
    return int((mask[:, :-1].bool() & mask[:, 1:].bool()).sum())


def merge_layer_scores(parts: list[tuple], num_layers: int) -> tuple:
    """One (experts, neurons, layers) triple from the per-layer triples of one-layer views (row i of layer i)."""
    ex = [p[0] for p in parts if p[0] is not None]
    ne = [p[1] for p in parts if p[1] is not None]
    la = [p[2] for p in parts if p[2] is not None]
    experts = neurons = layers = None
    if ex:
        cat = lambda name: torch.cat([getattr(e, name) for e in ex])  # noqa: E731
        taylor = ex[0].taylor_sum is not None
        experts = ExpertScores(layers=[l for e in ex for l in e.layers], tokens=max(e.tokens for e in ex),
                               top_k=ex[0].top_k, counts=cat("counts"), gate_sum=cat("gate_sum"),
                               reap_sum=cat("reap_sum"), man_sum=cat("man_sum"), max_abs=cat("max_abs"),
                               taylor_sum=cat("taylor_sum") if taylor else None,
                               taylor_per_batch_sum=cat("taylor_per_batch_sum") if taylor else None,
                               taylor_tokens=ex[0].taylor_tokens)
    if ne:
        cat = lambda name: torch.cat([getattr(n, name) for n in ne])  # noqa: E731
        taylor = ne[0].taylor_sum is not None
        neurons = NeuronScores(layers=[l for n in ne for l in n.layers], counts=cat("counts"),
                               abs_sum=cat("abs_sum"), down_norm=cat("down_norm"),
                               taylor_sum=cat("taylor_sum") if taylor else None,
                               taylor_per_batch_sum=cat("taylor_per_batch_sum") if taylor else None,
                               taylor_tokens=ne[0].taylor_tokens)
    if la:
        pick = lambda name: torch.stack([getattr(s, name)[i] for i, s in enumerate(la)])  # noqa: E731
        layers = LayerScores(layers=list(range(num_layers)), cos_sum=pick("cos_sum"), tokens=pick("tokens"),
                             outlier_m=la[0].outlier_m)
        if la[0].dlp is not None:
            layers.dlp, layers.owl = pick("dlp"), pick("owl")
            layers.wanda_inputs = {k: v for s in la for k, v in s.wanda_inputs.items()}
    return experts, neurons, layers
