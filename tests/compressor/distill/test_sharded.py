"""FSDP2 distillation on two gloo CPU processes gives the one-process result: the same loss curve and final weights
up to the order of floating-point sums (an uneven row split and gradient accumulation included)."""
import copy
from pathlib import Path

import pytest
import torch

from compressor.distill.sharded import check_sharded, distill_sharded_
from compressor.distill.teacher import TeacherCache
from compressor.distill.trainer import RankSlice, distill_
from compressor.families import resolve_adapter
from compressor.progress import Reporter
from compressor.recipe import DistillConfig
from compressor.testing import tiny_inputs, tiny_moe


def test_rank_slices_cover_the_batch_once():
    assert [RankSlice(r, 2).bounds(3) for r in range(2)] == [(0, 2), (2, 3)]
    assert [RankSlice(r, 3).bounds(7) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ValueError, match="batch_size"):
        RankSlice(1, 4).bounds(3)


def test_what_several_processes_refuse():
    with pytest.raises(ValueError, match="on_policy"):
        check_sharded(DistillConfig(on_policy=0.5), nproc=2)
    with pytest.raises(ValueError, match="batch_size"):
        check_sharded(DistillConfig(batch_size=1), nproc=2)


@pytest.mark.parametrize("teacher_kind", ["cache", "live"])
def test_two_gloo_processes_match_one(tmp_path, teacher_kind):
    """A top-16 cache read by rows on each rank, or the live teacher every rank holds (with hidden-state MSE and a
    student whose head is tied to its embeddings)."""
    teacher = tiny_moe("qwen3_moe", seed=1)
    student = tiny_moe("qwen3_moe", seed=1)
    adapter = resolve_adapter(student)
    for blk in adapter.moe_blocks(student):                            # a slimmed student: 8 of 16 neurons
        blk.keep_neurons_(torch.arange(8).repeat(blk.num_experts, 1))
    adapter.set_expert_width_(student.config, 8)                       # what slim_neurons_ writes
    live = teacher_kind == "live"
    if live:                                                           # tied embeddings, as the demo has them
        student.config.tie_word_embeddings = True
        student.lm_head.weight = student.model.embed_tokens.weight
    batches = [{"input_ids": tiny_inputs(batch=3, seq=12, seed=i)} for i in range(4)]   # 3 rows: split 2 + 1
    cfg = DistillConfig(steps=2, lr=3e-3, temperature=2.0, warmup_steps=1, grad_accum=2, batch_size=3, ce_weight=0.5,
                        cache_teacher_topk=0 if live else 16, hidden_mse_weight=0.5 if live else 0.0)
    cache = teacher if live else TeacherCache.build(teacher, batches, directory=tmp_path / "cache", k=16,
                                                    temperature=2.0)
    one, two = copy.deepcopy(student), copy.deepcopy(student)
    ref = distill_(one, teacher=cache, batches=batches, config=cfg, steps=2)
    events = []
    got = distill_sharded_(two, teacher=cache, batches=batches, config=cfg, steps=2, nproc=2,
                           workdir=tmp_path / "fsdp", reporter=Reporter(events.append))
    assert (got.engine, got.nproc, ref.engine, ref.nproc) == ("fsdp2", 2, "single", 1)
    assert got.tokens == ref.tokens and got.micro_batches == ref.micro_batches == 4
    assert len(got.rank_peak_rss_mb) == 2 and min(got.rank_peak_rss_mb) > 50 and not ref.rank_peak_rss_mb
    assert got.losses == pytest.approx(ref.losses, rel=1e-5)
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - student.state_dict()[k]).abs().max().item() for k in a)
    assert worst < 5e-5 < 1e-3 < moved                               # lr 3e-3: a stray Adam step would be ~1e-3
    assert (two.lm_head.weight is two.model.embed_tokens.weight) == live
    assert any(e.stage == "distill" and e.loss is not None for e in events)
    assert not (tmp_path / "fsdp").exists()


def ranks_alive(workdir) -> bool:
    """Whether a process whose command line names `workdir` (a rank) still runs."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(workdir).encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def test_cancel_stops_every_rank(tmp_path):
    """A cancel while the ranks train raises Cancelled here, ends both processes and removes the hand-over files."""
    from compressor.progress import Cancelled
    teacher = tiny_moe("qwen3_moe", seed=1)
    batches = [{"input_ids": tiny_inputs(batch=2, seq=8, seed=i)} for i in range(2)]
    seen, student = [], tiny_moe("qwen3_moe", seed=2)
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(Cancelled):
        distill_sharded_(student, teacher=teacher, batches=batches, steps=10_000,
                         config=DistillConfig(steps=10_000, batch_size=2), nproc=2, workdir=tmp_path / "fsdp",
                         reporter=Reporter(seen.append, should_cancel=lambda: bool(seen)))
    assert seen and seen[0].stage == "distill"
    assert not ranks_alive(tmp_path / "fsdp") and not (tmp_path / "fsdp").exists()
    after = student.state_dict()                                       # released while the ranks ran, given back
    assert all(torch.equal(before[k], after[k]) for k in before)
    inv_freq = student.model.rotary_emb.inv_freq
    assert inv_freq.device.type == "cpu" and torch.isfinite(inv_freq).all() and inv_freq.abs().sum() > 0
    assert torch.isfinite(student(input_ids=batches[0]["input_ids"]).logits).all()


def test_a_failing_rank_is_reported_with_its_log(tmp_path):
    """A rank that fails (here: its teacher cache is gone) stops the others; the error names it and ends with its
    log; the student comes back unchanged."""
    teacher, student = tiny_moe("qwen3_moe", seed=1), tiny_moe("qwen3_moe", seed=2)
    batches = [{"input_ids": tiny_inputs(batch=2, seq=8, seed=i)} for i in range(2)]
    cache = TeacherCache.build(teacher, batches, directory=tmp_path / "cache", k=8, temperature=2.0)
    cache.remove()
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(RuntimeError, match=r"rank \d exited with 1(.|\n)*FileNotFoundError"):
        distill_sharded_(student, teacher=cache, batches=batches, steps=2, nproc=2, workdir=tmp_path / "fsdp",
                         config=DistillConfig(steps=2, batch_size=2, cache_teacher_topk=8))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert not ranks_alive(tmp_path / "fsdp") and not (tmp_path / "fsdp").exists()
