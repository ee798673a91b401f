"""Tiny random instances of every supported MoE family, for tests, benchmarks and synthetic studies.

    model = tiny_moe("gpt_oss")                  # H=32, 2 layers, 8 experts, top-2, I=16, vocab 128
    model = tiny_moe("ernie4_5_moe")             # any other MoE family: its own config shrunk (testing_configs)
    big = tiny_moe("qwen3_moe", hidden=2048, experts=64, top_k=8, width=1024, layers=2)   # realistic shapes
"""
from __future__ import annotations

import torch
import transformers as tf

TINY_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "phimoe", "gpt_oss", "granitemoe")


def tiny_config(family: str, *, hidden: int = 32, layers: int | None = None, experts: int = 8, top_k: int = 2,
                width: int = 16, vocab: int = 128, heads: int = 4, kv_heads: int = 2):
    """A small config of `family` whose shapes are given by the keyword arguments (the hand-written families of
    `TINY_FAMILIES`, 2 layers by default), or of any other model type through `tiny_family_config` (4 layers by
    default, so dense-first and hybrid stacks keep MoE layers; only `layers` applies there)."""
    if family not in TINY_FAMILIES:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        if family in CONFIG_MAPPING:
            from compressor.testing_configs import tiny_family_config
            return tiny_family_config(family, layers=layers or 4)
        raise ValueError(f"unknown tiny family '{family}'; choose one of {', '.join(TINY_FAMILIES)} or any model "
                         "type of the installed transformers")
    layers = layers or 2
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, num_experts_per_tok=top_k, max_position_embeddings=512,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if family == "mixtral":
        return tf.MixtralConfig(intermediate_size=width, num_local_experts=experts, **common)
    if family == "qwen2_moe":
        return tf.Qwen2MoeConfig(intermediate_size=4 * width, moe_intermediate_size=width, num_experts=experts,
                                 shared_expert_intermediate_size=2 * width, norm_topk_prob=False, **common)
    if family == "qwen3_moe":
        return tf.Qwen3MoeConfig(intermediate_size=4 * width, moe_intermediate_size=width, num_experts=experts,
                                 norm_topk_prob=True, head_dim=hidden // heads, **common)
    if family == "olmoe":
        return tf.OlmoeConfig(intermediate_size=width, num_experts=experts, norm_topk_prob=False, **common)
    if family == "deepseek_v3":
        return tf.DeepseekV3Config(intermediate_size=4 * width, moe_intermediate_size=width, n_routed_experts=experts,
                                   n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1,
                                   norm_topk_prob=True, routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=None,
                                   qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
                                   **{**common, "num_hidden_layers": layers + 1,
                                      "num_key_value_heads": heads})
    if family == "phimoe":
        return tf.PhimoeConfig(intermediate_size=width, num_local_experts=experts, **common)
    if family == "gpt_oss":
        return tf.GptOssConfig(intermediate_size=width, num_local_experts=experts, head_dim=hidden // heads,
                               sliding_window=64, **{**common, "max_position_embeddings": 131072})
    if family == "granitemoe":
        return tf.GraniteMoeConfig(intermediate_size=width, num_local_experts=experts, **common)
    raise AssertionError(family)


def tiny_moe(family: str, *, seed: int = 0, dtype=torch.float32, experts_implementation: str | None = None,
             **shape) -> tf.PreTrainedModel:
    """A randomly initialised tiny causal LM of `family` in eval mode.

    Router weights get a larger scale than the default init so routing is decided by the input rather than ties,
    and biases (GPT-OSS, DeepSeek's score correction) are non-zero so that slicing them is actually exercised."""
    torch.manual_seed(seed)
    config = tiny_config(family, **shape)
    kw = {"experts_implementation": experts_implementation} if experts_implementation else {}
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype, **kw)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
            elif name.endswith("norm.weight") or "layernorm" in name or "norm" in name.split(".")[-2]:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for name, buf in model.named_buffers():
            if name.endswith(("e_score_correction_bias", "expert_bias")) and buf.is_floating_point():
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.05)
    return model.eval()


def tiny_inputs(vocab: int = 128, *, batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    """Random token ids [batch, seq] avoiding the special ids 0..2."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq), generator=g)


def char_tokenizer():
    """One token per printable ASCII character (ids 3..97) plus pad/bos/eos (0, 1, 2): fits the tiny models'
    vocab of 128, so tests can encode, generate and decode text with them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2} | {chr(c): 3 + c - 32 for c in range(32, 127)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
