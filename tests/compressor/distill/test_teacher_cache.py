"""The teacher's top-k cache: the loss it gives equals the live teacher's when k covers the vocabulary (by hand on a
3-token vocabulary, then through the memory-mapped fp16 files on a tiny MoE); its files, rows and key reuse."""
import math

import numpy as np
import pytest
import torch

from compressor.distill.losses import distill_loss, teacher_topk
from compressor.distill.teacher import INDICES, LOGP, TeacherCache, cache_key, data_fingerprint
from compressor.testing import tiny_inputs, tiny_moe

P_T, P_S = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.5, 0.25])


@pytest.mark.parametrize("k", [2, 3, 10])             # V - 1, V and more: every token its own bucket
def test_topk_loss_equals_live_loss_by_hand(k):
    zt, zs = P_T.log().view(1, 1, 3), P_S.log().view(1, 1, 3)
    fwd = 0.5 * math.log(2) + 0.25 * math.log(0.5)      # KL(p_t || p_s) = 0.25 ln 2
    rev = 0.25 * math.log(0.5) + 0.5 * math.log(2)      # KL(p_s || p_t), the same here by symmetry of the swap
    top = teacher_topk(logits=zt, k=k, temperature=1.0)
    assert top.indices.shape[-1] == min(k, 3) and top.logp.shape[-1] == min(k, 3) + 1
    for kind, want in (("forward_kl", fwd), ("reverse_kl", rev)):
        live = distill_loss(student_logits=zs, teacher=zt, kind=kind).item()
        cached = distill_loss(student_logits=zs, teacher=top, kind=kind).item()
        assert live == pytest.approx(want, abs=1e-6) and cached == pytest.approx(want, abs=1e-6)
    jsd_live = distill_loss(student_logits=zs, teacher=zt, kind="jsd").item()
    assert distill_loss(student_logits=zs, teacher=top, kind="jsd").item() == pytest.approx(jsd_live, abs=1e-6)


def test_full_vocabulary_cache_gives_the_live_loss_and_gradient(tmp_path):
    teacher, student = tiny_moe("qwen3_moe", seed=0), tiny_moe("qwen3_moe", seed=1)
    batches = [{"input_ids": tiny_inputs(batch=2, seq=8, seed=i)} for i in range(2)]
    vocab = teacher.config.vocab_size
    cache = TeacherCache.build(teacher, batches, directory=tmp_path / "c", k=vocab, temperature=2.0)
    assert cache.k == vocab and len(cache) == 2
    assert cache.nbytes() == 2 * 2 * 8 * ((vocab + 1) * 2 + vocab * 4)
    for i, b in enumerate(batches):
        with torch.no_grad():
            zt = teacher(**b).logits
        zs = student(**b).logits.detach().requires_grad_(True)
        live = distill_loss(student_logits=zs, teacher=zt, temperature=2.0)
        (g_live,) = torch.autograd.grad(live, zs)
        cached = distill_loss(student_logits=zs, teacher=cache[i], temperature=2.0)
        (g_cached,) = torch.autograd.grad(cached, zs)
        exact = distill_loss(student_logits=zs, teacher=teacher_topk(logits=zt, k=vocab, temperature=2.0),
                             temperature=2.0)
        assert exact.item() == pytest.approx(live.item(), rel=1e-5)           # float32 top-V: the same loss
        assert cached.item() == pytest.approx(live.item(), rel=2e-3)          # fp16 log-probs on disk
        assert (g_cached - g_live).abs().max() < 1e-2 * g_live.abs().max()
        assert torch.isfinite(g_cached).all()


def test_rows_slices_and_memory_mapped_files(tmp_path):
    teacher = tiny_moe("qwen3_moe")
    batches = [{"input_ids": tiny_inputs(batch=3, seq=5, seed=i)} for i in range(3)]
    cache = TeacherCache.build(teacher, batches, directory=tmp_path / "c", k=4, temperature=1.0)
    logp = np.memmap(tmp_path / "c" / LOGP, dtype=np.float16, mode="r")
    assert logp.size == 3 * 3 * 5 * 5 and (tmp_path / "c" / INDICES).stat().st_size == 3 * 3 * 5 * 4 * 4
    whole, part = cache[1], cache.rows(1, 1, 3)
    assert part.logp.shape == (2, 5, 5) and torch.equal(part.logp, whole.logp[1:3])
    assert torch.equal(part.indices, whole.indices[1:3]) and whole.indices.dtype == torch.long
    with torch.no_grad():
        ref = teacher_topk(logits=teacher(**batches[1]).logits, k=4, temperature=1.0)
    assert torch.equal(whole.indices, ref.indices)
    assert torch.allclose(whole.logp.float(), ref.logp, atol=1e-2)
    view = cache.slice(1, 3)
    assert len(view) == 2 and torch.equal(view[0].logp, whole.logp)
    with pytest.raises(IndexError):
        cache.slice(2, 4)


class Counting(torch.nn.Module):
    """A teacher that counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.model, self.calls = tiny_moe("qwen3_moe"), 0

    def forward(self, **kw):
        self.calls += 1
        return self.model(**kw)


def test_open_or_build_reuses_the_cache_across_stages_and_runs(tmp_path):
    teacher = Counting()
    batches = [{"input_ids": tiny_inputs(batch=2, seq=6, seed=i)} for i in range(3)]
    kw = dict(root=tmp_path, k=8, temperature=2.0, teacher_fp="abc")
    first, hit1 = TeacherCache.open_or_build(teacher, batches, **kw)
    second, hit2 = TeacherCache.open_or_build(teacher, batches, **kw)
    assert (hit1, hit2, teacher.calls) == (False, True, 3)
    assert torch.equal(first[2].logp, second[2].logp) and first.directory == second.directory
    key = cache_key(teacher_fp="abc", data_fp=data_fingerprint(batches), k=8, temperature=2.0)
    assert first.directory == tmp_path / key and first.meta["teacher"] == "abc"
    for change in ({"k": 4}, {"temperature": 1.0}, {"teacher_fp": "abd"}):
        _, hit = TeacherCache.open_or_build(teacher, batches, **{**kw, **change})
        assert not hit
    _, hit = TeacherCache.open_or_build(teacher, batches[:2], **kw)
    assert not hit and teacher.calls == 3 + 3 * 3 + 2
    (first.directory / LOGP).write_bytes(b"torn")                     # a damaged entry is rebuilt
    again, hit = TeacherCache.open_or_build(teacher, batches, **kw)
    assert not hit and again.nbytes() == first.nbytes() and not list(tmp_path.glob(".*"))
