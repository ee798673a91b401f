"""Tiny configs of any MoE family, built from the family's own config class: its defaults with every size field
shrunk (hidden 32, 4 layers, 8 experts, top-2, expert width 16, vocab 128), per-layer lists resampled so each
layer kind stays present, and a few per-family settings where the generic shrink gives an invalid model.

    config = tiny_family_config("ernie4_5_moe")         # -> a 60 k-parameter Ernie-4.5-MoE config
"""
from __future__ import annotations

SHRINK = dict(
    vocab_size=128, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
    moe_intermediate_size=16, shared_expert_intermediate_size=32, shared_intermediate_size=32,
    num_experts_per_tok=2, num_experts_per_token=2, moe_topk=2, moe_k=2, moe_top_k=2,
    num_experts=8, n_routed_experts=8, num_local_experts=8, moe_num_experts=8,
    max_position_embeddings=512, sliding_window=16, sliding_window_size=16, kv_lora_rank=16, q_lora_rank=16,
    qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, qk_head_dim=8, n_group=2, num_expert_group=2, topk_group=1,
    index_head_dim=8, index_n_heads=2, index_topk=4, linear_key_head_dim=8, linear_value_head_dim=8,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_head_dim=8, linear_num_heads=4,
    swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8, intermediate_size_mlp=64,
    dense_intermediate_size=64, expert_ffn_hidden_size=16, ffn_hidden_size=16, moe_shared_expert_intermediate_size=32,
    mamba_d_state=8, mamba_n_heads=4, mamba_d_head=16, mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=8,
    mamba_n_groups=1, n_groups=1, mamba_chunk_size=16, chunk_size=16, attention_chunk_size=16, kv_channels=8,
    router_hidden_size=16, rotary_dim=4, o_lora_rank=16, hc_lowrank=4, gated_norm_rank=4, loop_gate_rank=4,
    vocab_size_per_layer_input=128, hidden_size_per_layer_input=8, ple_embed_dim=8, ngram_vocab_size_base=128,
    num_shared_experts=1, n_shared_experts=1, moe_num_shared_experts=1, d_model=32, n_heads=4,
    unpadded_vocab_size=128)
ALWAYS = ("num_experts_per_tok", "head_dim", "n_routed_experts", "num_experts", "num_local_experts",
          "n_shared_experts")
EXTRA = {
    "qwen4_exp_text": dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=8,
                           indexer_compress_ratio=4),
    "zaya": dict(num_experts_per_tok=1),
    "gemma4_text": dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=16),
    "longcat_flash": dict(zero_expert_num=2),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "granitemoehybrid": dict(layer_types=["linear_attention", "attention", "linear_attention", "attention"]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"], num_dense_layers=1),
    # kolibri1_1 validates its layout: head_dim a multiple of 16 (NVFP4 K/V rounding), an indexer on the first
    # indexed-attention layer, K/V shared only between layers of one attention type, index heads <= query heads per kv
    "kolibri1_1": dict(head_dim=16, layer_types=["sliding_attention", "indexed_attention", "sliding_attention",
                                                 "indexed_attention"], index_layers=[1], kv_source_layers=[0, 1, 2, 1],
                       mlp_only_layers=[0], mlp_only_intermediate_size=64, index_num_heads=2, index_pool_size=16,
                       index_compression=4),
    "dbrx": dict(attn_config={"kv_n_heads": 2, "clip_qkv": 8.0},
                 ffn_config={"ffn_hidden_size": 16, "moe_num_experts": 8, "moe_top_k": 2, "hidden_size": 32}),
}
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def tiny_family_config(model_type: str, *, layers: int = 4):
    """A tiny config of `model_type` (any family in the installed transformers' CONFIG_MAPPING)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    cls = CONFIG_MAPPING[model_type]
    text = getattr(cls, "sub_configs", {}).get("text_config")
    if text is not None and text.model_type != model_type:             # composite: a tiny text part
        return cls(text_config=tiny_family_config(text.model_type, layers=layers).to_dict())
    defaults = cls().to_dict()
    kw = {k: v for k, v in SHRINK.items()
          if k in defaults and (isinstance(defaults[k], int) and not isinstance(defaults[k], bool)
                                or k in ALWAYS and defaults[k] is None)}
    if "kv_lora_rank" in defaults or model_type.startswith("dots3"):
        kw["num_key_value_heads"] = kw.get("num_attention_heads", 4)       # MLA: one kv head per query head
    if "qk_head_dim" in defaults and "qk_rope_head_dim" in defaults:
        kw["qk_head_dim"] = kw["qk_rope_head_dim"] + kw["qk_nope_head_dim"]
    for k, small in SPECIAL_IDS.items():
        v = defaults.get(k)
        if isinstance(v, list) or isinstance(v, int) and v >= SHRINK["vocab_size"]:
            kw[k] = small
    kw.update(EXTRA.get(model_type, {}))
    n_field = next((f for f in ("num_hidden_layers", "n_layers") if f in defaults), "num_layers")
    kw[n_field] = layers
    for k in ("layer_types", "mlp_layer_types"):
        v = defaults.get(k)
        if isinstance(v, list) and len(v) != layers and k not in kw:
            pick = [v[int(i * len(v) / layers)] for i in range(layers)]
            for j, kind in enumerate(t for t in dict.fromkeys(v) if t not in pick):
                pick[layers - 1 - j] = kind
            kw[k] = pick
    config = cls(**kw)
    if model_type == "dbrx":
        config.attn_config.rope_theta = 10000.0         # DbrxAttentionConfig has no field for it; the model reads it
    return config
