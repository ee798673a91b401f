"""Distillation on tiny models: the student's KL to its teacher falls in a few steps (live teacher and cached).

A random tiny model is a chaotic function of random tokens, so a dozen steps cannot generalise to new random windows;
the KL is therefore measured on the distillation batches themselves, which is what "the optimiser, the loss and the
gradients work together" needs. (Held-out recovery on real text is checked on the demo model in the pipeline bench.)"""
import copy

import pytest
import torch

from compressor.distill.losses import distill_loss
from compressor.distill.teacher import TeacherCache
from compressor.distill.trainer import _matched_states, distill_, lr_at, on_policy_step
from compressor.families import resolve_adapter
from compressor.progress import Cancelled, Reporter
from compressor.recipe import DistillConfig
from compressor.testing import tiny_inputs, tiny_moe


@pytest.fixture(scope="module")
def teacher_student():
    teacher = tiny_moe("qwen3_moe")
    with torch.no_grad():                                              # experts matter, so slimming hurts
        for blk in resolve_adapter(teacher).moe_blocks(teacher):
            blk.experts.gate_up_proj.mul_(3)
            blk.experts.down_proj.mul_(3)
        teacher.lm_head.weight.mul_(3)
    student = copy.deepcopy(teacher)
    for blk in resolve_adapter(student).moe_blocks(student):           # keep the first 8 of 16 neurons per expert
        blk.keep_neurons_(torch.arange(8).repeat(blk.num_experts, 1))
    return teacher, student


def batches(n=4, seed=0):
    return [{"input_ids": tiny_inputs(batch=4, seq=16, seed=seed + i)} for i in range(n)]


@torch.no_grad()
def kl_to(teacher, student, data) -> float:
    return sum(distill_loss(student_logits=student(**b).logits, teacher=teacher(**b).logits).item()
               for b in data) / len(data)


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, total=101, warmup=10, peak=1.0) == pytest.approx(0.1)
    assert lr_at(9, total=101, warmup=10, peak=1.0) == pytest.approx(1.0)
    assert lr_at(10, total=101, warmup=10, peak=1.0) == pytest.approx(1.0)
    assert lr_at(55, total=101, warmup=10, peak=1.0) == pytest.approx(0.55)       # halfway: (1 + .1) / 2
    assert lr_at(100, total=101, warmup=10, peak=1.0) == pytest.approx(0.1)
    assert [on_policy_step(s, 0.25) for s in range(8)] == [False, False, False, True] * 2


def test_distillation_lowers_kl_to_teacher(teacher_student):
    teacher, student = teacher_student[0], copy.deepcopy(teacher_student[1])
    data = batches()
    before = kl_to(teacher, student, data)
    events = []
    cfg = DistillConfig(steps=30, lr=3e-3, temperature=1.0, warmup_steps=2)
    report = distill_(student, teacher=teacher, batches=data, config=cfg, steps=30,
                      reporter=Reporter(on_progress=events.append))
    after = kl_to(teacher, student, data)
    assert after < 0.7 * before, (before, after)
    assert report.steps == 30 and len(report.losses) == 30 and report.tokens == 30 * 4 * 16
    assert report.losses[-1] < report.losses[0]
    assert events[-1].stage == "distill" and events[-1].step == 30 and events[-1].loss is not None
    assert events[-1].tokens_per_s > 0 and events[-1].eta_s == pytest.approx(0, abs=1e-6)
    assert not student.training


def test_cached_teacher_top_k_also_distils(teacher_student, tmp_path):
    teacher, student = teacher_student[0], copy.deepcopy(teacher_student[1])
    data = batches()
    cfg = DistillConfig(steps=30, lr=3e-3, temperature=2.0, warmup_steps=2, cache_teacher_topk=16)
    cache = TeacherCache.build(teacher, data, directory=tmp_path / "t", k=16, temperature=2.0)
    assert len(cache) == 4 and cache[0].logp.shape == (4, 16, 17) and cache.nbytes() > 0
    before = kl_to(teacher, student, data)
    distill_(student, teacher=cache, batches=data, config=cfg, steps=30)
    assert kl_to(teacher, student, data) < 0.7 * before
    with pytest.raises(ValueError, match="teacher in memory"):
        distill_(student, teacher=cache, batches=data, config=cfg.model_copy(update={"on_policy": 0.5}), steps=1)
    with pytest.raises(ValueError, match="temperature"):
        distill_(student, teacher=cache, batches=data, config=cfg.model_copy(update={"temperature": 1.0}), steps=1)


def test_on_policy_hidden_mse_and_accumulation_run(teacher_student):
    teacher, student = teacher_student[0], copy.deepcopy(teacher_student[1])
    cfg = DistillConfig(steps=4, lr=1e-3, on_policy=0.5, hidden_mse_weight=0.5, grad_accum=2, loss="jsd")
    report = distill_(student, teacher=teacher, batches=batches(), config=cfg, steps=4, layer_map=[0, 1])
    assert report.on_policy_steps == 2 and report.micro_batches == 8
    # on-policy steps count only the sampled half: 2 steps * 2 micro * 4 rows * 8 positions + 2 * 2 * 64 full
    assert report.tokens == 2 * 2 * 4 * 8 + 2 * 2 * 64
    assert all(torch.isfinite(torch.tensor(report.losses)))


def test_sparsity_zeros_stay_zero(teacher_student):
    teacher, student = teacher_student[0], copy.deepcopy(teacher_student[1])
    w = student.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        w[:, ::2] = 0
    distill_(student, teacher=teacher, batches=batches(), config=DistillConfig(lr=1e-2), steps=3)
    assert (w[:, ::2] == 0).all() and (w[:, 1::2] != 0).any()


def test_cancel_between_steps(teacher_student):
    teacher, student = teacher_student[0], copy.deepcopy(teacher_student[1])
    calls = []
    reporter = Reporter(on_progress=calls.append, should_cancel=lambda: len(calls) >= 1)
    with pytest.raises(Cancelled):
        distill_(student, teacher=teacher, batches=batches(), config=DistillConfig(), steps=50, reporter=reporter)
    assert len(calls) == 1 and not student.training


def test_matched_states_follow_layer_map():
    s = [torch.full((1,), float(i)) for i in range(3)]              # embeddings, layer 0 out, final (normed)
    t = [torch.full((1,), 10.0 + i) for i in range(5)]              # teacher with 4 layers
    s_pairs, t_pairs = _matched_states(s, t, [0, 3])
    assert [x.item() for x in s_pairs] == [1.0, 2.0] and [x.item() for x in t_pairs] == [11.0, 14.0]
    with pytest.raises(ValueError, match="layer_map"):
        _matched_states(s, t, [0])
