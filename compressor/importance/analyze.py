"""The calibration pass: run the model over calibration batches with the score hooks on, return an ImportanceReport.

With `taylor=True` every batch also runs a backward pass of the summed next-token cross-entropy L_b with gradients
on the routed experts only (all other parameters frozen for the pass, then restored). The collector adds each
batch's gradient g_b into G = sum_b g_b and clears it; the Taylor scores are then
    taylor            (1/N) |w * G|            = |w * d(mean loss over all batches)/dw|   LLM-Pruner's rule, default
    taylor_per_batch  (1/N) sum_b |w * g_b|                                                 the rule before v2
summed per expert / per neuron (N = loss tokens; LLM-Pruner: `hf_prune.py` one backward over all examples,
`LLMPruner/pruner/hf_llama_pruner.py` `salience = W * W.grad`). No optimizer, weights unchanged.

    report = analyze(model, batches, config=AnalyzeConfig(taylor=False), reporter=Reporter(print))
    report.experts.reap           # [L, E]
    report.meta["tokens_per_s"]   # calibration throughput
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from compressor.families import resolve_adapter
from compressor.importance.collect import WANT_ALL, collect_scores
from compressor.importance.scores import SCORES_VERSION, ImportanceReport
from compressor.progress import Eta, Reporter

ANALYZE_CONFIG_VERSION = 1


@dataclass(frozen=True)
class AnalyzeConfig:
    """What to score. want: subset of experts / neurons / layers / wanda; taylor adds the gradient pass;
    outlier_m is OWL's M (an entry is an outlier when A > M * mean(A) of its layer)."""

    version: int = ANALYZE_CONFIG_VERSION
    want: tuple[str, ...] = ("experts", "neurons", "layers", "wanda")
    taylor: bool = True
    outlier_m: float = 5.0

    def __post_init__(self):
        if self.version != ANALYZE_CONFIG_VERSION:
            raise ValueError(f"AnalyzeConfig version {self.version} is not supported (this studio reads "
                             f"{ANALYZE_CONFIG_VERSION})")
        object.__setattr__(self, "want", tuple(sorted(set(self.want))))
        unknown = set(self.want) - WANT_ALL
        if unknown or not self.want:
            raise ValueError(f"AnalyzeConfig.want must be a non-empty subset of {sorted(WANT_ALL)}; got {self.want}")
        if self.taylor and not {"experts", "neurons"} & set(self.want):
            raise ValueError("taylor=True scores experts and neurons: add 'experts' or 'neurons' to want")
        if not self.outlier_m > 0:
            raise ValueError(f"outlier_m must be positive, got {self.outlier_m}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["want"] = list(self.want)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "AnalyzeConfig":
        data = dict(data)
        if "want" in data:
            data["want"] = tuple(data["want"])
        return cls(**data)


def analyze(model: nn.Module, batches: Iterable, *, config: AnalyzeConfig = AnalyzeConfig(),
            reporter: Reporter | None = None) -> ImportanceReport:
    """Score experts, neurons and layers of `model` on `batches`.

    batches: dicts {"input_ids": [B, S], "attention_mask": [B, S]} (padding = 0 in the mask, kept out of every
    statistic), (ids, mask) pairs, or bare id tensors. Progress events have stage "calibrate"; the reporter's
    cancel check runs after every batch and raises `Cancelled` (hooks and gradient flags are restored first).
    """
    adapter = resolve_adapter(model)
    reporter = reporter or Reporter()
    was_training = model.training
    model.eval()
    try:
        with collect_scores(model, adapter, want=config.want, outlier_m=config.outlier_m) as col, \
                _grads_only_on(model, col.expert_parameters() if config.taylor else []):
            run = _calibrate(model, col, batches, taylor=config.taylor, reporter=reporter)
            t0 = time.perf_counter()
            experts, neurons, layers = col.result()
            run["finalize_seconds"] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    if run["tokens"] == 0:
        raise ValueError("the calibration batches held no (unmasked) tokens; give at least one batch with text")
    blk = col.blocks[0]
    meta = {
        "version": SCORES_VERSION, "family": adapter.family, "model_type": model.config.model_type,
        "num_layers": len(adapter.decoder_layers(model)), "moe_layers": [b.layer for b in col.blocks],
        "num_experts": blk.num_experts, "top_k": col.top_k, "expert_width": blk.intermediate_size,
        **run, "tokens_per_s": run["tokens"] / max(run["seconds"], 1e-9),
        "taylor": config.taylor, "config": config.to_dict(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
    }
    return ImportanceReport(family=adapter.family, experts=experts, neurons=neurons, layers=layers, meta=meta)


def _calibrate(model: nn.Module, col, batches: Iterable, *, taylor: bool, reporter: Reporter) -> dict:
    """The loop: forward (and backward when `taylor`) per batch with the collector's mask set. Returns counts and
    the wall time of the loop (the calibration throughput is tokens / seconds)."""
    device = next(model.parameters()).device
    total = len(batches) if hasattr(batches, "__len__") else 0
    reporter.report("calibrate", 0, total, message="calibration pass")
    tokens = loss_tokens = n_batches = 0
    loss_sum = 0.0
    eta = Eta(total)
    started = time.perf_counter()
    for step, batch in enumerate(batches, 1):
        ids, mask = _unpack(batch, device)
        col.set_mask(mask)
        with torch.set_grad_enabled(taylor):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss, n = next_token_loss_sum(logits=logits, input_ids=ids, attention_mask=mask)
            if taylor:
                loss.backward()
                col.accumulate_taylor_(tokens=n)
        n_batches, loss_sum, loss_tokens = step, loss_sum + float(loss.detach()), loss_tokens + n
        tokens += int(mask.sum()) if mask is not None else ids.numel()
        rate, left = eta.update(step, tokens)
        reporter.report("calibrate", step, total, message=f"batch {step}/{total or '?'}", tokens_per_s=rate,
                        eta_s=left if total else None, loss=loss_sum / max(loss_tokens, 1))
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "batches": n_batches, "loss_tokens": loss_tokens,
            "ce_loss": loss_sum / max(loss_tokens, 1), "seconds": seconds}


def next_token_loss_sum(*, logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                        ) -> tuple[torch.Tensor, int]:
    """L = sum_t CE(logits_t, ids_{t+1}) over positions where both t and t+1 are real tokens; returns (L, count).

    logits [B, S, V], input_ids / attention_mask [B, S]. Summed (not averaged) so that the Taylor sums of
    several batches divide by one total token count."""
    pred, target = logits[:, :-1], input_ids[:, 1:]
    if attention_mask is None:
        keep = torch.ones_like(target, dtype=torch.bool)
    else:
        keep = attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()
        target = target.masked_fill(~keep, -100)
    loss = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1),
                                       ignore_index=-100, reduction="sum")
    return loss, int(keep.sum())


def unpack_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input_ids [B, S], attention_mask [B, S] or None) from a dict, an (ids, mask) pair or an id tensor."""
    if isinstance(batch, dict):
        ids, mask = batch["input_ids"], batch.get("attention_mask")
    elif isinstance(batch, (tuple, list)):
        ids, mask = batch[0], batch[1] if len(batch) > 1 else None
    elif torch.is_tensor(batch):
        ids, mask = batch, None
    else:
        raise TypeError(f"a calibration batch must be a dict with input_ids / attention_mask, an (ids, mask) pair "
                        f"or an id tensor; got {type(batch).__name__}")
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq]; got shape {tuple(ids.shape)}")
    return ids, mask


def _unpack(batch, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids, mask = unpack_batch(batch)
    return ids.to(device), (mask.to(device) if mask is not None else None)


@contextmanager
def _grads_only_on(model: nn.Module, params: list[nn.Parameter]):
    """Within the block only `params` require grad (nothing changes when empty); every flag is restored and
    every .grad cleared afterwards, also on error."""
    if not params:
        yield
        return
    keep = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None
