"""Distil a teacher into a (slimmed) student, in place: AdamW, linear warm-up then cosine decay, clipping, gradient
accumulation, optional bf16 autocast, an optional on-policy share of steps, progress through a `Reporter`.

Per micro-batch x (ids [B, L]) the loss is

    L = D_T(teacher(x), student(x)) + ce_weight * CE(student(x), x) + hidden_mse_weight * MSE(h_s, h_t)

where D_T is the configured divergence at temperature T (`losses.distill_loss`). On an on-policy step the student
first samples the second half of every window from the first half, and the loss counts only the sampled positions.
The learning rate at optimizer step s (0-based) of S, with W warm-up steps and peak lr:
    lr(s) = lr * (s + 1) / W                                         for s < W
    lr(s) = lr * (f + (1 - f) * (1 + cos(pi * (s - W) / (S - W - 1))) / 2)   afterwards, f = MIN_LR_FRACTION
(`distill.schedule.lr_at`, the schedule the demo model was trained with too: the last step runs at f * lr).

    report = distill_(student, teacher=teacher, batches=batches, config=recipe.distill, steps=100)

Inside a process group of N ranks (`compressor.distill.sharded`, the student sharded with FSDP2) every rank runs this
same loop with `ranks=RankSlice(rank, N)`: it takes rows [r B / N, (r + 1) B / N) of every micro-batch and scales its
loss by N b_r / B (b_r its rows), so the mean over ranks that FSDP2's gradient reduce-scatter takes is the gradient
of the whole batch's mean loss, and the step's loss is all-reduced the same way: the one-process result, up to the
order of floating-point sums.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from compressor.distill.losses import distill_loss, hidden_mse, next_token_ce
from compressor.distill.schedule import lr_at
from compressor.distill.teacher import TeacherCache
from compressor.progress import Eta, Reporter
from compressor.recipe import DistillConfig

MIN_LR_FRACTION = 0.1
ADAM_BETAS = (0.9, 0.95)
REPORT_EVERY_S = 0.5


@dataclass
class DistillReport:
    steps: int                          # optimizer steps taken
    micro_batches: int
    tokens: int                         # tokens the student trained on
    seconds: float
    tokens_per_s: float
    autocast: str | None                # "bfloat16" when autocast ran, else None
    on_policy_steps: int
    losses: list[float] = field(default_factory=list)   # mean loss of every optimizer step
    engine: str = "single"              # "single" (one process) or "fsdp2" (the student sharded over nproc ranks)
    nproc: int = 1
    rank_peak_rss_mb: list[float] = field(default_factory=list)   # fsdp2: every rank's peak resident memory

    def to_dict(self) -> dict:
        d = asdict(self)
        losses = d["losses"]                 # every step's loss is kept: the result's loss curve (compressor/result)
        tail = losses[-max(1, len(losses) // 10):] if losses else []
        d.update(first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                 final_loss_mean=sum(tail) / len(tail) if tail else None)
        return d


@dataclass(frozen=True)
class RankSlice:
    """This process's share of every micro-batch in a group of `world` ranks (see the module docstring)."""

    rank: int
    world: int

    def bounds(self, rows: int) -> tuple[int, int]:
        """[lo, hi) of the rows this rank takes from a micro-batch of `rows` (an even split, the first ranks one
        more when it does not divide)."""
        if rows < self.world:
            raise ValueError(f"a micro-batch of {rows} rows cannot be split over {self.world} processes: "
                             f"raise distill.batch_size to at least {self.world}")
        size, extra = divmod(rows, self.world)
        lo = self.rank * size + min(self.rank, extra)
        return lo, lo + size + (self.rank < extra)


def on_policy_step(step: int, fraction: float) -> bool:
    """True for an even spread of `fraction` of the steps: floor((s + 1) f) > floor(s f)."""
    return fraction > 0 and math.floor((step + 1) * fraction) > math.floor(step * fraction)


def bf16_autocast_supported(device: torch.device) -> bool:
    """bf16 autocast runs fast here: a CUDA GPU with bf16, or a CPU with native bf16 (AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def distill_(student: nn.Module, *, teacher: nn.Module | TeacherCache, batches: Sequence[dict],
             config: DistillConfig, steps: int, reporter: Reporter | None = None, stage: str = "distill",
             layer_map: Sequence[int] | None = None, seed: int = 0, ranks: RankSlice | None = None) -> DistillReport:
    """Train `student` toward `teacher` for `steps` optimizer steps of `config.grad_accum` micro-batches each.

    batches: micro-batches {"input_ids" [B, L], "attention_mask"?}, used in order and cycled; with a
    `TeacherCache`, entry i belongs to batches[i]. layer_map[j]: the teacher layer that student layer j came from
    (needed when `config.hidden_mse_weight` > 0); ranks: this process's share of each batch when the student is
    sharded over a process group (`compressor.distill.sharded`). The student is left in eval mode.
    """
    reporter = reporter or Reporter()
    if not batches:
        raise ValueError("distillation needs at least one batch of tokens")
    cached = isinstance(teacher, TeacherCache)
    _check_teacher(config, cached, teacher, batches)
    device = next(student.parameters()).device
    use_bf16 = config.bf16 and bf16_autocast_supported(device)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = _adamw(params, config)
    zero_masks = _zero_masks(student)
    gen = torch.Generator().manual_seed(seed)
    if not cached:
        teacher.eval()
    report = DistillReport(steps=0, micro_batches=0, tokens=0, seconds=0.0, tokens_per_s=0.0,
                           autocast="bfloat16" if use_bf16 else None, on_policy_steps=0,
                           engine="single" if ranks is None else "fsdp2", nproc=1 if ranks is None else ranks.world)
    eta, t0, last_report = Eta(steps), time.perf_counter(), 0.0
    student.train()
    try:
        for step in range(steps):
            reporter.check_cancel()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total=steps, warmup=config.warmup_steps, peak=config.lr)
            on_policy = on_policy_step(step, config.on_policy)
            step_loss = _accumulate(student, teacher, batches, config, report, layer_map=layer_map, ranks=ranks,
                                    on_policy=on_policy, gen=gen, device=device, use_bf16=use_bf16)
            nn.utils.clip_grad_norm_(params, config.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _reapply_zeros(zero_masks)
            if not math.isfinite(step_loss):
                raise RuntimeError(f"distillation diverged at step {step + 1} (loss {step_loss}); "
                                   "lower distill.lr or raise distill.warmup_steps")
            report.steps = step + 1
            report.losses.append(step_loss)
            report.on_policy_steps += int(on_policy)
            now = time.perf_counter()
            if now - last_report >= REPORT_EVERY_S or step + 1 == steps:
                rate, left = eta.update(step + 1, report.tokens)
                reporter.report(stage, step=step + 1, total=steps, loss=step_loss, tokens_per_s=rate, eta_s=left,
                                message=f"step {step + 1}/{steps} loss {step_loss:.4f}")
                last_report = now
    finally:
        student.eval()
        opt.zero_grad(set_to_none=True)
    report.seconds = time.perf_counter() - t0
    report.tokens_per_s = report.tokens / max(report.seconds, 1e-9)
    return report


def _accumulate(student, teacher, batches, config: DistillConfig, report: DistillReport, *, layer_map, on_policy: bool,
                gen: torch.Generator, device: torch.device, use_bf16: bool, ranks: RankSlice | None) -> float:
    """Forward and backward `config.grad_accum` micro-batches (gradients summed, each scaled 1 / grad_accum);
    returns their mean loss (over the whole batches, all ranks) and advances the report's micro-batch and token
    counts (of the whole batches)."""
    step_loss = 0.0
    for _ in range(config.grad_accum):
        i = report.micro_batches % len(batches)
        batch = {k: v.to(device) for k, v in batches[i].items()}
        if on_policy:
            batch = _student_rollout(student, batch, gen)
        report.tokens += int(batch["loss_mask"].sum()) if "loss_mask" in batch else batch["input_ids"].numel()
        rows, scale = None, 1.0
        if ranks is not None:
            full = batch["input_ids"].shape[0]
            rows = ranks.bounds(full)
            batch, scale = {k: v[rows[0]:rows[1]] for k, v in batch.items()}, ranks.world * (rows[1] - rows[0]) / full
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = scale * _micro_loss(student, teacher, batch, i, config, layer_map, rows)
        (loss / config.grad_accum).backward()
        step_loss += loss.item() / config.grad_accum
        report.micro_batches += 1
    if ranks is not None:                  # the mean over ranks of the scaled losses is the whole batches' loss
        total = torch.tensor([step_loss], dtype=torch.float64)
        dist.all_reduce(total)
        step_loss = total.item() / ranks.world
    return step_loss


def _adamw(params: list, config: DistillConfig) -> torch.optim.Optimizer:
    """AdamW, with the fused kernel where this torch has one for the device (on CPU its step is several times
    faster than the per-parameter loop)."""
    kw = dict(lr=config.lr, betas=ADAM_BETAS, weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kw)


def _check_teacher(config: DistillConfig, cached: bool, teacher, batches) -> None:
    if not cached:
        return
    if config.on_policy > 0 or config.hidden_mse_weight > 0:
        raise ValueError("on-policy steps and hidden-state MSE need the teacher in memory; "
                         "set distill.cache_teacher_topk to 0 or drop on_policy / hidden_mse_weight")
    if len(teacher) != len(batches):
        raise ValueError(f"the teacher cache holds {len(teacher)} batches but {len(batches)} were given")
    if abs(teacher.temperature - config.temperature) > 1e-9:
        raise ValueError(f"the teacher cache was built at temperature {teacher.temperature}, "
                         f"distillation uses {config.temperature}")


def _micro_loss(student, teacher, batch: dict, index: int, config: DistillConfig, layer_map,
                rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The loss of one micro-batch (`batch`: rows `rows` of batches[index] on a rank, else all of it)."""
    ids, attn = batch["input_ids"], batch.get("attention_mask")
    mask = batch.get("loss_mask", attn)
    want_hidden = config.hidden_mse_weight > 0
    out = student(input_ids=ids, attention_mask=attn, output_hidden_states=want_hidden, use_cache=False)
    if isinstance(teacher, TeacherCache):
        target, t_hidden = (teacher[index] if rows is None else teacher.rows(index, *rows)), None
        target.logp, target.indices = target.logp.to(ids.device), target.indices.to(ids.device)
    else:
        with torch.no_grad():
            t_out = teacher(input_ids=ids, attention_mask=attn, output_hidden_states=want_hidden, use_cache=False)
        target, t_hidden = t_out.logits, t_out.hidden_states
    loss = distill_loss(student_logits=out.logits, teacher=target, kind=config.loss,
                        temperature=config.temperature, beta=config.jsd_beta, mask=mask)
    if config.ce_weight > 0:
        loss = loss + config.ce_weight * next_token_ce(logits=out.logits, input_ids=ids, mask=mask)
    if want_hidden:
        s_states, t_states = _matched_states(out.hidden_states, t_hidden, layer_map)
        loss = loss + config.hidden_mse_weight * hidden_mse(student_hidden=s_states, teacher_hidden=t_states,
                                                            mask=mask)
    return loss


def _matched_states(s_hidden, t_hidden, layer_map):
    """Pairs (student layer j output, teacher layer layer_map[j] output) for every student layer but the last, plus
    the final (normed) states of both. hidden_states[0] is the embedding output, [j + 1] the output of layer j."""
    n_student = len(s_hidden) - 1
    layer_map = list(range(n_student)) if layer_map is None else list(layer_map)
    if len(layer_map) != n_student:
        raise ValueError(f"layer_map has {len(layer_map)} entries but the student has {n_student} layers")
    s = [s_hidden[j + 1] for j in range(n_student - 1)] + [s_hidden[-1]]
    t = [t_hidden[layer_map[j] + 1] for j in range(n_student - 1)] + [t_hidden[-1]]
    return s, t


@torch.no_grad()
def _student_rollout(student: nn.Module, batch: dict, gen: torch.Generator) -> dict:
    """Replace the second half of every window by the student's own samples (temperature 1); the loss then counts
    the positions that predict a sampled token."""
    ids = batch["input_ids"]
    B, L = ids.shape
    prompt = L // 2
    student.eval()
    try:
        seq = ids[:, :prompt]
        past = None
        logits = None
        for _ in range(L - prompt):
            step_in = seq if past is None else seq[:, -1:]
            out = student(input_ids=step_in, cache=past, use_cache=True)
            past, logits = out.cache, out.logits[:, -1].float()
            nxt = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=gen).to(ids.device)
            seq = torch.cat([seq, nxt], dim=1)
    finally:
        student.train()
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, prompt - 1:L - 1] = True
    return {"input_ids": seq, "attention_mask": torch.ones_like(seq), "loss_mask": loss_mask}


def _zero_masks(model: nn.Module, min_share: float = 0.01) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, zero mask) for every matrix that is at least `min_share` exact zeros (unstructured sparsity), so
    training keeps the pruned weights at zero."""
    masks = []
    for p in model.parameters():
        if p.dim() >= 2 and p.requires_grad:
            p = p.to_local() if hasattr(p, "to_local") else p   # a sharded (DTensor) parameter: this rank's shard
            z = p.detach() == 0
            if z.float().mean().item() >= min_share:
                masks.append((p, z))
    return masks


@torch.no_grad()
def _reapply_zeros(masks) -> None:
    for p, z in masks:
        p.masked_fill_(z, 0.0)
