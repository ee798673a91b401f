"""One call evaluates a model against a baseline: quality, tasks, size, speed, and the expert kernel used.

    report = evaluate(model, baseline, tokenizer, EvaluateConfig(tokens=8192))
    print(render_table(report))          # the CLI prints; the library only returns text
    json.dumps(report.to_dict())

Order of work: choose one expert kernel and dtype for both models (when speed is measured: a timed probe on the
baseline among the kernels both can run, `shared_kernel`), quality over the held-out windows, local JSONL tasks,
lm-eval tasks (`harness`), size (parameters, checkpoint bytes, peak memory), then speed, interleaved. With a
`BaselineReference` instead of a baseline model, quality uses its cached top-k log-probs and speed uses the baseline
figures it carries for the same kernel (measured earlier, so `speed.settings["interleaved"]` is False). A speed-up
is only ever model / baseline in one kernel and dtype; when no kernel is common to both (a reference timed only in
kernels the slimmed model cannot run), `settings["same_kernel"]` is False and the figure is labelled
"best kernel each".
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compressor.evaluate.kernels import (KernelChoice, apply_kernel_, candidate_labels, choose_experts_kernel,
                                         safe_default_kernel_)
from compressor.evaluate.quality import BaselineReference, QualityStats, compare_quality
from compressor.evaluate.size import SizeStats, size_metrics
from compressor.evaluate.speed import SpeedStats, measure_speed
from compressor.evaluate.harness import check_lm_eval, resolve_backend, run_lm_eval
from compressor.evaluate.tasks import check_tasks, run_tasks
from compressor.progress import Reporter
from compressor.recipe import EvaluateConfig

EVAL_BATCH = 8
SPEED_PREFILL_ROWS = 2


@dataclass
class EvalReport:
    quality: QualityStats | None = None
    tasks: dict = field(default_factory=dict)            # task -> {"model": {...}, "baseline": {...}}
    size: SizeStats | None = None
    baseline_size: SizeStats | None = None
    speed: SpeedStats | None = None
    kernels: dict = field(default_factory=dict)          # "model" / "baseline" -> KernelChoice.to_dict()
    lm_eval: dict = field(default_factory=dict)          # backend, limit, num_fewshot, tasks: task -> model/baseline
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"quality": self.quality.to_dict() if self.quality else None, "tasks": self.tasks,
                "size": self.size.to_dict() if self.size else None,
                "baseline_size": self.baseline_size.to_dict() if self.baseline_size else None,
                "speed": self.speed.to_dict() if self.speed else None, "kernels": self.kernels,
                "lm_eval": self.lm_eval, "seconds": self.seconds}

    def headline(self) -> dict:
        """The figures a run summary shows: flat name -> number."""
        out: dict = {}
        if self.quality:
            q = self.quality
            out.update(perplexity=q.perplexity, baseline_perplexity=q.baseline_perplexity,
                       top1_agreement=q.agreement, kl_to_baseline=q.kl_to_baseline)
        if self.size:
            out.update(params_total=self.size.params_total, params_active=self.size.params_active,
                       checkpoint_bytes=self.size.checkpoint_bytes, peak_memory_bytes=self.size.peak_memory_bytes)
        if self.baseline_size:
            out.update(baseline_params_total=self.baseline_size.params_total,
                       baseline_params_active=self.baseline_size.params_active)
        if self.speed:
            s = self.speed
            out.update(prefill_tokens_per_s=s.prefill_tokens_per_s, decode_tokens_per_s=s.decode_tokens_per_s,
                       prefill_speedup=s.prefill_speedup, decode_speedup=s.decode_speedup,
                       speed_kernel=s.settings.get("kernel"), speed_same_kernel=s.settings.get("same_kernel"))
            for k, r in (("prefill", s.prefill_speedup_range), ("decode", s.decode_speedup_range)):
                if r is not None:
                    out[f"{k}_speedup_low"], out[f"{k}_speedup_high"] = r
        for name, res in self.tasks.items():
            out[f"task:{name}"] = res.get("model", {}).get("accuracy")
        for name, res in self.lm_eval.get("tasks", {}).items():
            out[f"lm_eval:{name}"] = res.get("model", {}).get("acc")
            out[f"baseline_lm_eval:{name}"] = res.get("baseline", {}).get("acc")
        return {k: v for k, v in out.items() if v is not None}


def evaluate(model: nn.Module, baseline: nn.Module | BaselineReference | None, tokenizer, cfg: EvaluateConfig, *,
             windows: torch.Tensor | None = None, checkpoint_dir: Path | None = None,
             baseline_checkpoint_dir: Path | None = None, reporter: Reporter | None = None) -> EvalReport:
    """Evaluate `model` against `baseline` (a model, a `BaselineReference`, or None) per `cfg`.

    windows: evaluation token windows [N, L]; by default `cfg.tokens // cfg.seq_len` windows of the held-out text.
    """
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    check_tasks(cfg.tasks)
    check_lm_eval(cfg.lm_eval)
    if windows is None:
        from compressor.data import eval_windows
        windows = eval_windows(tokenizer, tokens=cfg.tokens, seq_len=cfg.seq_len)
    live_base = baseline if isinstance(baseline, nn.Module) else None
    report = EvalReport()
    for m in (model, live_base):
        if m is not None:
            safe_default_kernel_(m)
    choice: KernelChoice | None = None
    if cfg.speed:
        reporter.report("evaluate", message="timing expert kernels")
        choice = shared_kernel(model, baseline, sample_ids=windows[:SPEED_PREFILL_ROWS])
        for name, m in (("model", model), ("baseline", live_base)):
            if m is not None:
                apply_kernel_(m, choice)
                report.kernels[name] = choice.to_dict()
    if cfg.perplexity:
        report.quality = compare_quality(model, baseline, windows, batch_size=EVAL_BATCH,
                                         reporter=reporter.span(0.0, 0.6))
    if cfg.tasks:
        report.tasks = run_tasks(model, live_base, tokenizer, cfg.tasks)
    if cfg.lm_eval.tasks:
        reporter.report("evaluate", message=f"lm-eval: {', '.join(cfg.lm_eval.tasks)}")
        report.lm_eval = lm_eval_pair(model, baseline, tokenizer, cfg.lm_eval, checkpoint_dir=checkpoint_dir,
                                      baseline_checkpoint_dir=baseline_checkpoint_dir)
    sample = windows[:EVAL_BATCH]
    report.size = size_metrics(model, sample_ids=sample, checkpoint_dir=checkpoint_dir)
    if live_base is not None:
        report.baseline_size = size_metrics(live_base, sample_ids=sample, checkpoint_dir=baseline_checkpoint_dir)
    elif isinstance(baseline, BaselineReference):
        report.baseline_size = baseline.size
    if cfg.speed:
        report.speed = _speed(model, live_base, baseline, choice, windows, reporter.span(0.6, 1.0))
    report.seconds = time.perf_counter() - t0
    return report


def lm_eval_pair(model: nn.Module, baseline, tokenizer, cfg, *, checkpoint_dir: Path | None = None,
                 baseline_checkpoint_dir: Path | None = None) -> dict:
    """lm-eval on `model` and on `baseline` (a model, or a `BaselineReference` carrying figures measured earlier):
    {"backend", "limit", "num_fewshot", "tasks": {task: {"model": {...}, "baseline": {...}}}}."""
    backend = resolve_backend(cfg.backend)
    mine = run_lm_eval(model, tokenizer, cfg, backend=backend, checkpoint_dir=checkpoint_dir)
    if isinstance(baseline, nn.Module):
        theirs = run_lm_eval(baseline, tokenizer, cfg, backend=backend, checkpoint_dir=baseline_checkpoint_dir)
    else:
        theirs = getattr(baseline, "lm_eval", None) or {}
    tasks = {name: {"model": res, **({"baseline": theirs["tasks"][name]} if name in theirs.get("tasks", {}) else {})}
             for name, res in mine["tasks"].items()}
    return {"backend": backend, "baseline_backend": theirs.get("backend"), "limit": cfg.limit,
            "num_fewshot": cfg.num_fewshot, "tasks": tasks}


def shared_kernel(model: nn.Module, baseline, *, sample_ids: torch.Tensor) -> KernelChoice:
    """The one expert kernel and dtype both models are timed in, chosen once, on the baseline:
    - a live baseline: the fastest on the baseline among the kernels the model can run too;
    - a `BaselineReference`: the first kernel it was timed in (its probe's choice, then eager) that the model can
      run; when there is none, the model's own fastest (the figure is then labelled "best kernel each");
    - no baseline: the model's fastest."""
    if isinstance(baseline, nn.Module):
        both = candidate_labels(model) & candidate_labels(baseline)
        return choose_experts_kernel(baseline, sample_ids=sample_ids, only=both)
    timed = list(getattr(baseline, "speeds", None) or {}) if isinstance(baseline, BaselineReference) else []
    runnable = candidate_labels(model, allow_bf16=True)
    for label in timed:
        if label in runnable:
            impl, dtype = label.split("/")
            return KernelChoice(implementation=impl, dtype=dtype, device=next(model.parameters()).device.type,
                                skipped={"probe": f"chosen on the original before slimming ({label})"})
    return choose_experts_kernel(model, sample_ids=sample_ids)


def _speed(model, live_base, baseline, choice: KernelChoice, windows: torch.Tensor, reporter: Reporter) -> SpeedStats:
    """Speed of both models in `choice`'s kernel and dtype (bf16 copies when it is bf16 for an fp32 model)."""
    def in_dtype(m):
        want = getattr(torch, choice.dtype)
        if next(m.parameters()).dtype == want:
            return m
        c = copy.deepcopy(m).to(want)
        apply_kernel_(c, choice)
        return c

    m = in_dtype(model)
    b = in_dtype(live_base) if live_base is not None else None
    stats = measure_speed(m, b, prompt_ids=windows[:SPEED_PREFILL_ROWS], reporter=reporter)
    stats.settings.update(interleaved=b is not None, kernel=choice.label, same_kernel=True,
                          kernels={"model": choice.label, **({"baseline": choice.label} if b is not None else {})})
    if b is None and isinstance(baseline, BaselineReference) and baseline.speed is not None:
        ref = (baseline.speeds or {}).get(choice.label)
        same = ref is not None
        ref = ref or baseline.speed
        stats.compare_to(ref.rounds.get("prefill") or [ref.prefill_tokens_per_s],
                         ref.rounds.get("decode") or [ref.decode_tokens_per_s], interleaved=False)
        stats.settings["same_kernel"] = same
        stats.settings["kernels"]["baseline"] = ref.settings.get("kernel") or choice.label
        if not same:
            stats.settings["kernel"] = f"best kernel each: model {choice.label}, original {ref.settings.get('kernel')}"
    return stats


# -- rendering -----------------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ratio(a, b) -> str:
    return f"{a / b:.3f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def report_rows(report: EvalReport) -> list[tuple[str, object, object, str]]:
    """(metric, model, baseline, model / baseline) rows of the table."""
    rows = []
    q, s, bs, sp = report.quality, report.size, report.baseline_size, report.speed
    if q:
        rows += [("perplexity", q.perplexity, q.baseline_perplexity, _ratio(q.perplexity, q.baseline_perplexity)),
                 ("top-1 agreement", q.agreement, 1.0 if q.agreement is not None else None, ""),
                 ("KL to baseline (nats/token)" + ("" if q.kl_exact else ", top-k"), q.kl_to_baseline,
                  0.0 if q.kl_to_baseline is not None else None, "")]
    for name, res in report.tasks.items():
        mr, br = res.get("model", {}), res.get("baseline", {})
        rows.append((f"{name} accuracy", mr.get("accuracy"), br.get("accuracy"),
                     _ratio(mr.get("accuracy"), br.get("accuracy"))))
    for name, res in report.lm_eval.get("tasks", {}).items():
        mr, br = res.get("model", {}), res.get("baseline", {})
        rows.append((f"lm-eval {name} acc", mr.get("acc"), br.get("acc"), _ratio(mr.get("acc"), br.get("acc"))))
        if mr.get("acc_norm") is not None:
            rows.append((f"lm-eval {name} acc_norm", mr.get("acc_norm"), br.get("acc_norm"),
                         _ratio(mr.get("acc_norm"), br.get("acc_norm"))))
    if s:
        for label, attr in (("params total", "params_total"), ("params active / token", "params_active"),
                            ("checkpoint bytes", "checkpoint_bytes"),
                            (f"peak memory bytes ({s.peak_memory_method})", "peak_memory_bytes")):
            mine, base = getattr(s, attr), getattr(bs, attr, None)
            rows.append((label, mine, base, _ratio(mine, base)))
    if sp:
        for name, mine, base, rng in (("prefill", sp.prefill_tokens_per_s, sp.baseline_prefill_tokens_per_s,
                                       sp.prefill_speedup_range),
                                      ("decode", sp.decode_tokens_per_s, sp.baseline_decode_tokens_per_s,
                                       sp.decode_speedup_range)):
            ratio = _ratio(mine, base)
            if rng is not None:
                ratio += f" ({rng[0]:.2f}-{rng[1]:.2f}{', within noise' if rng[0] <= 1.0 <= rng[1] else ''})"
            rows.append((f"{name} tokens/s", mine, base, ratio))
    return rows


def render_table(report: EvalReport) -> str:
    """A plain-text table: metric | model | baseline | ratio, then the kernels used."""
    rows = [("metric", "model", "baseline", "model/baseline")]
    rows += [(m, _fmt(a), _fmt(b), r) for m, a, b, r in report_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if report.speed:
        st = report.speed.settings
        kern = st.get("kernel") or ", ".join(f"{k}: {v}" for k, v in st.get("kernels", {}).items())
        lines.append(f"speed: prefill {st['prefill_batch']}x{st['prefill_len']}, decode {st['decode_batch']}x"
                     f"{st['new_tokens']} tokens, {st['rounds']} rounds, {st['threads']} threads on {st['device']}"
                     f"{', interleaved' if st.get('interleaved') else ', baseline measured earlier'}; "
                     f"both in {kern}; ratio ranges are the lowest and highest round")
    if report.lm_eval:
        le = report.lm_eval
        n = {t: r["model"].get("n") for t, r in le.get("tasks", {}).items()}
        lines.append(f"lm-eval on the {le['backend']} backend, {le.get('num_fewshot') or 0}-shot, examples {n}")
    if report.quality:
        lines.append(f"quality over {report.quality.tokens:,} held-out tokens; evaluation took {report.seconds:.1f} s")
    return "\n".join(lines)
