"""Speed: prefill and decode tokens/s of a model and its baseline, measured interleaved in one run, as a ratio.

One round times, for each model in turn (the order alternates between rounds so drift in machine load hits both):
    prefill: one forward over `prompt_ids` [B, L] building the KV cache            -> B * L / t tokens/s
    decode:  `new_tokens` greedy single-token steps on top of a cached prompt of `decode_batch` rows
                                                                                  -> decode_batch * new_tokens / t
A warm-up round is run first and not counted; each figure is the median over `rounds`. The speed-up is
model tokens/s / baseline tokens/s (> 1 means the compressed model is faster). Its spread is the range of the
per-round ratios (model and baseline timed back to back in one round); a range that holds 1.0 means the machine's
noise is as large as the effect (`within_noise`). A baseline measured earlier (no rounds shared) gives the range
min(model) / max(baseline) .. max(model) / min(baseline).

    s = measure_speed(model, baseline, prompt_ids=windows[:2], rounds=3)
    s.prefill_speedup, s.decode_speedup
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from compressor.progress import Reporter


@dataclass
class SpeedStats:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    baseline_prefill_tokens_per_s: float | None = None
    baseline_decode_tokens_per_s: float | None = None
    prefill_speedup: float | None = None
    decode_speedup: float | None = None
    settings: dict = field(default_factory=dict)   # shapes, rounds, threads, device, kernels
    rounds: dict = field(default_factory=dict)     # "prefill" / "decode" / "baseline_prefill" / ... -> tokens/s
    prefill_speedup_range: tuple[float, float] | None = None
    decode_speedup_range: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def compare_to(self, base_prefill: list[float], base_decode: list[float], *, interleaved: bool) -> None:
        """Fill the baseline figures, the speed-ups and their per-round ranges (module docstring)."""
        self.rounds.update(baseline_prefill=list(base_prefill), baseline_decode=list(base_decode))
        self.baseline_prefill_tokens_per_s = statistics.median(base_prefill)
        self.baseline_decode_tokens_per_s = statistics.median(base_decode)
        self.prefill_speedup = self.prefill_tokens_per_s / self.baseline_prefill_tokens_per_s
        self.decode_speedup = self.decode_tokens_per_s / self.baseline_decode_tokens_per_s
        self.prefill_speedup_range = speedup_range(self.rounds["prefill"], base_prefill, interleaved=interleaved)
        self.decode_speedup_range = speedup_range(self.rounds["decode"], base_decode, interleaved=interleaved)

    def within_noise(self) -> dict[str, bool]:
        """{"prefill": True when the speed-up's range holds 1.0, "decode": ...} (only the measured ones)."""
        return {k: r[0] <= 1.0 <= r[1] for k, r in (("prefill", self.prefill_speedup_range),
                                                       ("decode", self.decode_speedup_range)) if r is not None}


def speedup_range(model: list[float], baseline: list[float], *, interleaved: bool) -> tuple[float, float]:
    """(lowest, highest) speed-up over the rounds: per-round ratios when the rounds were interleaved, else
    min(model) / max(baseline) and max(model) / min(baseline)."""
    if interleaved and len(model) == len(baseline):
        ratios = [m / b for m, b in zip(model, baseline)]
        return min(ratios), max(ratios)
    return min(model) / max(baseline), max(model) / min(baseline)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_prefill(model: nn.Module, ids: torch.Tensor) -> float:
    """Seconds for one forward over ids [B, L] with the KV cache built."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    _sync(device)
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=True)
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def time_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds for `new_tokens` greedy single-token steps after a (untimed) prefill of `prompt` [B, P]."""
    device = next(model.parameters()).device
    out = model(input_ids=prompt.to(device), use_cache=True)
    past, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=nxt, cache=past, use_cache=True)
        past, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    _sync(device)
    return time.perf_counter() - t0


def measure_speed(model: nn.Module, baseline: nn.Module | None = None, *, prompt_ids: torch.Tensor,
                  decode_batch: int = 1, decode_prompt: int = 32, new_tokens: int = 32, rounds: int = 3,
                  reporter: Reporter | None = None) -> SpeedStats:
    """Prefill and decode tokens/s of `model` (and `baseline`), interleaved; see the module docstring."""
    reporter = reporter or Reporter()
    if rounds < 1 or new_tokens < 1:
        raise ValueError("speed needs at least one round and one new token")
    B, L = prompt_ids.shape
    decode_rows = prompt_ids[:decode_batch, :min(decode_prompt, L)]
    models = {"model": model} if baseline is None else {"model": model, "baseline": baseline}
    for m in models.values():
        m.eval()
    pre: dict[str, list[float]] = {k: [] for k in models}
    dec: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds + 1):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            p = time_prefill(models[name], prompt_ids)
            d = time_decode(models[name], decode_rows, new_tokens)
            if r > 0:                                       # round 0 is the warm-up
                pre[name].append(B * L / p)
                dec[name].append(decode_rows.shape[0] * new_tokens / d)
        reporter.report("speed", step=r + 1, total=rounds + 1, message=f"speed round {r + 1}/{rounds + 1}")
    med = {k: (statistics.median(pre[k]), statistics.median(dec[k])) for k in models}
    stats = SpeedStats(prefill_tokens_per_s=med["model"][0], decode_tokens_per_s=med["model"][1],
                       rounds={"prefill": pre["model"], "decode": dec["model"]},
                       settings={"prefill_batch": B, "prefill_len": L, "decode_batch": decode_rows.shape[0],
                                 "decode_prompt": decode_rows.shape[1], "new_tokens": new_tokens, "rounds": rounds,
                                 "threads": torch.get_num_threads(),
                                 "device": next(model.parameters()).device.type,
                                 "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")})
    if baseline is not None:
        stats.compare_to(pre["baseline"], dec["baseline"], interleaved=True)
    return stats
