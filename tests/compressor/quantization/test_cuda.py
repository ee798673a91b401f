"""GPTQ and the export on a GPU give what they give on the CPU (skipped without CUDA; run by bench/gpu_check.sh)."""
import pytest
import torch

from compressor.quantization.gptq import HessianSum, gptq_quantize
from compressor.quantization.scheme import SCHEMES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gptq_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=g) @ torch.randn(32, 256, generator=g)
    w = torch.randn(64, 256, generator=g)
    hs = HessianSum(256)
    hs.add(x)
    cpu = gptq_quantize(w, hs.hessian(), SCHEMES["W4A16"])
    gpu = gptq_quantize(w.cuda(), hs.hessian().cuda(), SCHEMES["W4A16"])
    assert gpu.weight.is_cuda
    assert (gpu.weight.cpu() != cpu.weight).float().mean() < 0.01         # equal but for float-noise ties


def test_tiny_model_quantized_on_cuda_reloads(tmp_path):
    import transformers as tf

    from compressor.quantization.export import save_compressed
    from compressor.quantization.scheme import WeightScheme
    from compressor.quantization.sequential import quantize_model_
    from compressor.quantization.targets import GPTQSettings, QuantPlan
    from compressor.testing import tiny_moe

    model = tiny_moe("qwen3_moe").cuda()
    ids = torch.randint(3, 128, (4, 32), device="cuda")
    plan = QuantPlan.of({"experts": WeightScheme(bits=4, group_size=16), "attention": SCHEMES["W8A16"]},
                        gptq=GPTQSettings(min_expert_tokens=4))
    report, params = quantize_model_(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], plan)
    assert report.gptq_matrices > 0
    with torch.no_grad():
        want = model(ids).logits.float().cpu()
    save_compressed(model, params, tmp_path, dtype=torch.float32)            # from the GPU
    with torch.no_grad():
        got = tf.AutoModelForCausalLM.from_pretrained(tmp_path)(ids.cpu()).logits
    assert torch.allclose(got, want, atol=1e-3)
