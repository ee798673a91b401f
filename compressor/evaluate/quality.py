"""Quality against a baseline: held-out perplexity, next-token top-1 agreement, KL to the baseline; multiple choice.

Over evaluation windows x [N, L], at every position t < L - 1 (predicting x_{t+1}):

    perplexity   = exp( mean_t -log p_model(x_{t+1} | x_<=t) )
    agreement    = mean_t [ argmax p_model(. | x_<=t) == argmax p_base(. | x_<=t) ]
    kl_to_base   = mean_t KL( p_base(. | x_<=t) || p_model(. | x_<=t) )        (nats per token)

The baseline may be a model in memory or a `BaselineReference`: its per-window NLL and top-k log-probs computed
earlier (so the two models never sit in memory together); KL is then taken over the reference's k + 1 buckets,
a lower bound of the full value (see `compressor.distill.losses`).

Multiple choice (`mc_accuracy`): each JSONL line {"question"|"context"|"query": str, "choices"|"endings": [str],
"answer"|"label"|"gold": int}; a choice's score is sum log p(choice tokens | question); `accuracy` takes the
highest sum, `accuracy_norm` the highest sum per character of the choice (as lm-eval's acc_norm does per byte).

    q = compare_quality(model, baseline, windows)          # QualityStats(perplexity=..., agreement=..., kl=...)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from compressor.distill.losses import TeacherTopK, divergence, fold_topk, log_probs, teacher_topk
from compressor.data import jsonl_records
from compressor.progress import Reporter

REFERENCE_TOP_K = 64


@dataclass
class QualityStats:
    tokens: int
    perplexity: float
    nll: float                               # mean nats per token
    baseline_perplexity: float | None = None
    agreement: float | None = None           # top-1 agreement with the baseline
    kl_to_baseline: float | None = None      # nats per token
    kl_exact: bool = True                    # False when the baseline was a top-k reference

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BaselineReference:
    """What evaluation needs from a baseline that is no longer in memory: per window NLL sums and top-k log-probs."""

    windows: torch.Tensor                 # [N, L] the windows it was computed on
    nll_sum: float
    tokens: int
    topk: list[TeacherTopK]               # one per batch of `batch_size` windows, positions 0..L-2
    batch_size: int
    size: object = None                   # SizeStats of the baseline, when measured before it left memory
    speed: object = None                  # SpeedStats of the baseline alone, likewise (its chosen kernel)
    speeds: dict = field(default_factory=dict)   # "implementation/dtype" -> SpeedStats: every kernel it was timed in
    lm_eval: dict | None = None           # harness.run_lm_eval of the baseline, likewise

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens)


def _forward_logp(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), use_cache=False).logits[:, :-1]
    return log_probs(logits=logits).cpu()                     # [B, L-1, V] fp32


def _nll(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)     # [B, L-1]


@torch.no_grad()
def baseline_reference(baseline: nn.Module, windows: torch.Tensor, *, batch_size: int = 8,
                       k: int = REFERENCE_TOP_K) -> BaselineReference:
    """Run the baseline once over `windows` [N, L] and keep what `compare_quality` needs (top-k log-probs)."""
    baseline.eval()
    nll_sum, tokens, tops = 0.0, 0, []
    for ids in windows.split(batch_size):
        logp = _forward_logp(baseline, ids)
        nll_sum += _nll(logp, ids).sum().item()
        tokens += ids[:, 1:].numel()
        top = teacher_topk(logits=logp, k=min(k, logp.shape[-1] - 1), temperature=1.0)
        tops.append(TeacherTopK(logp=top.logp.half(), indices=top.indices.int(), temperature=1.0))
    return BaselineReference(windows=windows, nll_sum=nll_sum, tokens=tokens, topk=tops, batch_size=batch_size)


@torch.no_grad()
def compare_quality(model: nn.Module, baseline: nn.Module | BaselineReference | None, windows: torch.Tensor, *,
                    batch_size: int = 8, reporter: Reporter | None = None) -> QualityStats:
    """Perplexity of `model` on `windows` [N, L] and, when a baseline is given, agreement and KL (module docstring)."""
    reporter = reporter or Reporter()
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"evaluation windows must be [N, L >= 2], got {tuple(windows.shape)}")
    ref = baseline if isinstance(baseline, BaselineReference) else None
    if ref is not None:
        if not torch.equal(ref.windows, windows) or ref.batch_size != batch_size:
            raise ValueError("the baseline reference was computed on other windows or batch size; rebuild it")
    for m in (model, baseline):
        if isinstance(m, nn.Module):
            m.eval()
    nll, base_nll, agree, kl_sum, tokens = 0.0, 0.0, 0, 0.0, 0
    batches = windows.split(batch_size)
    for b, ids in enumerate(batches):
        logp = _forward_logp(model, ids)                       # [B, L-1, V]
        nll += _nll(logp, ids).sum().item()
        tokens += ids[:, 1:].numel()
        if isinstance(baseline, nn.Module):
            base = _forward_logp(baseline, ids)
            base_nll += _nll(base, ids).sum().item()
            agree += (logp.argmax(-1) == base.argmax(-1)).sum().item()
            kl_sum += divergence(teacher_logp=base, student_logp=logp, kind="forward_kl").sum().item()
        elif ref is not None:
            top = ref.topk[b]
            idx = top.indices.long()
            agree += (logp.argmax(-1) == idx[..., 0]).sum().item()
            kl_sum += divergence(teacher_logp=top.logp.float(), student_logp=fold_topk(logp=logp, indices=idx),
                                 kind="forward_kl").sum().item()
        reporter.report("evaluate", step=b + 1, total=len(batches), message=f"quality batch {b + 1}/{len(batches)}")
    stats = QualityStats(tokens=tokens, perplexity=math.exp(nll / tokens), nll=nll / tokens)
    if baseline is not None:
        stats.baseline_perplexity = ref.perplexity if ref is not None else math.exp(base_nll / tokens)
        stats.agreement = agree / tokens
        stats.kl_to_baseline = kl_sum / tokens
        stats.kl_exact = ref is None
    return stats


# -- multiple choice ---------------------------------------------------------------------------------------------
def load_mc_task(path: str | Path) -> list[dict]:
    """Read a JSONL multiple-choice task into [{"question", "choices", "answer"}]; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"multiple-choice task file not found: {path}")
    items = []
    for lineno, rec in jsonl_records(path):
        if not isinstance(rec, dict):
            raise ValueError(f"{path.name} line {lineno}: expected an object with \"question\", \"choices\" and "
                             "\"answer\"")
        q = next((rec[k] for k in ("question", "context", "query") if isinstance(rec.get(k), str)), None)
        choices = next((rec[k] for k in ("choices", "endings") if isinstance(rec.get(k), list)), None)
        answer = next((rec[k] for k in ("answer", "label", "gold") if k in rec), None)
        if q is None or not choices or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{path.name} line {lineno}: expected a string \"question\" and a list of string "
                             "\"choices\"")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise ValueError(f"{path.name} line {lineno}: \"answer\" must be the index (0..{len(choices) - 1}) "
                             "of the right choice")
        items.append({"question": q, "choices": choices, "answer": answer})
    if not items:
        raise ValueError(f"{path.name} holds no questions")
    return items


@torch.no_grad()
def choice_logprobs(model: nn.Module, tokenizer, question: str, choices: list[str]) -> list[float]:
    """sum_t log p(choice token t | question, earlier choice tokens) for every choice (one batch, right-padded)."""
    device = next(model.parameters()).device
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    rows = [q_ids + tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    logp = log_probs(logits=model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1])
    tok_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)              # [C, W-1]
    out = []
    for i, r in enumerate(rows):
        start = max(len(q_ids), 1) - 1                                      # position predicting the first choice token
        out.append(tok_logp[i, start:len(r) - 1].sum().item())
    return out


def mc_accuracy(model: nn.Module, tokenizer, items: list[dict]) -> dict:
    """accuracy and accuracy_norm (per character of the choice) over `items` (see `load_mc_task`)."""
    model.eval()
    hits, hits_norm = 0, 0
    for it in items:
        scores = choice_logprobs(model, tokenizer, it["question"], it["choices"])
        hits += int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
        norm = [s / max(len(c), 1) for s, c in zip(scores, it["choices"])]
        hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == it["answer"])
    return {"n": len(items), "accuracy": hits / len(items), "accuracy_norm": hits_norm / len(items)}
