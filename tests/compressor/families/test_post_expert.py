"""Experts whose output passes a per-expert transform before the router weight (Ergo's post_expert_norm:
y = RMSNorm(h Wd^T) * w_e, w [E, H]): found without its name, applied by `expert_output`, sliced by
`keep_experts_`, and seen by REAP as the model computes it (issue 20: read as plain up-only experts, expert 0
differed from the module's own output by 3.31)."""
import torch

from compressor.families import resolve_adapter
from compressor.importance.analyze import analyze
from compressor.testing import tiny_inputs, tiny_moe


def _ergo():
    model = tiny_moe("ergo")
    with torch.no_grad():                     # distinct per-expert scales, so a wrong row would show
        for blk in resolve_adapter(model).moe_blocks(model):
            blk.post_expert.weight.copy_(torch.rand(blk.post_expert.weight.shape) + 0.5)
    return model


def test_expert_output_is_the_modules_own_for_every_expert():
    model = _ergo()
    blk = resolve_adapter(model).moe_blocks(model)[0]
    assert type(blk.post_expert).__name__ == "ErgoExpertNorm"
    x = torch.randn(5, blk.hidden_size)
    for e in range(blk.num_experts):
        want = blk.experts(x, torch.full((5, 1), e), torch.ones(5, 1))
        torch.testing.assert_close(blk.expert_output(blk.expert_hidden(x, e), e), want, atol=1e-5, rtol=1e-5)
    plain = resolve_adapter(tiny_moe("qwen3_moe")).moe_blocks(tiny_moe("qwen3_moe"))[0]
    assert plain.post_expert is None


def test_keeping_experts_keeps_their_output_scales():
    model = _ergo()
    blk = resolve_adapter(model).moe_blocks(model)[0]
    scales = blk.post_expert.weight.detach().clone()
    x = torch.randn(4, blk.hidden_size)
    before = blk.expert_output(blk.expert_hidden(x, 5), 5)
    blk.keep_experts_(torch.tensor([1, 5, 6]))
    assert torch.equal(blk.post_expert.weight, scales[[1, 5, 6]])
    torch.testing.assert_close(blk.expert_output(blk.expert_hidden(x, 1), 1), before)


def test_reap_reads_the_transformed_output():
    """REAP_e = mean over e's routed pairs of g * ||f_e(x)||, with f_e the module's own single-expert output."""
    model = _ergo()
    blk = resolve_adapter(model).moe_blocks(model)[0]
    ids = tiny_inputs(seq=16)
    seen = {}
    handle = blk.experts.register_forward_hook(lambda mod, args, out: seen.__setitem__("args", args))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    x, idx, w = seen["args"]
    total, count = torch.zeros(blk.num_experts, dtype=torch.float64), torch.zeros(blk.num_experts)
    with torch.no_grad():
        for t in range(x.shape[0]):
            for j in range(idx.shape[1]):
                e = int(idx[t, j])
                y = blk.experts(x[t:t + 1], idx[t:t + 1, j:j + 1], torch.ones(1, 1))
                total[e] += float(w[t, j]) * y.norm().item()
                count[e] += 1
    got = analyze(model, [ids]).experts.score("reap")[0]
    torch.testing.assert_close(got, total / count.clamp(min=1), atol=1e-5, rtol=1e-5)
