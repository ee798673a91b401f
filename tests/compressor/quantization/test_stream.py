"""Layer-by-layer quantization of a checkpoint folder gives the checkpoint of the in-memory path."""
import torch
import transformers as tf

from compressor.quantization.export import save_compressed
from compressor.quantization.scheme import SCHEMES, WeightScheme
from compressor.quantization.sequential import quantize_model_
from compressor.quantization.stream import stream_quantize
from compressor.quantization.targets import GPTQSettings, QuantPlan
from compressor.testing import tiny_moe


def test_streamed_gptq_equals_in_memory(tmp_path):
    src = tmp_path / "src"
    tiny_moe("qwen3_moe", dtype=torch.bfloat16).save_pretrained(src)
    ids = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(2))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    plan = QuantPlan.of({"experts": WeightScheme(bits=4, group_size=16), "attention": SCHEMES["W8A16"]},
                        gptq=GPTQSettings(min_expert_tokens=4))
    report = stream_quantize(src, tmp_path / "streamed", batches, plan)
    model = tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    mem_report, params = quantize_model_(model, batches, plan, scale_dtype=torch.bfloat16)
    save_compressed(model, params, tmp_path / "memory", dtype=torch.bfloat16)
    assert report.matrices == mem_report.matrices and report.gptq_matrices == mem_report.gptq_matrices
    a = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "streamed", dtype=torch.float32)
    b = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "memory", dtype=torch.float32)
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert torch.isfinite(la).all()
    assert torch.allclose(la, lb, atol=1e-4 * lb.abs().max())
