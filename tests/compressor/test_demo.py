"""The shipped demo model (loads with stock transformers, is trained, balanced enough) and its training script."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from compressor.demo import ASSETS_DIR, demo_model_dir
from compressor.demo import train as demo_train
from compressor.demo.train import DemoConfig, switch_balance_loss
from compressor.distill.schedule import lr_at

TINY = DemoConfig(vocab_size=320, hidden_size=32, layers=2, heads=2, kv_heads=1, head_dim=16, experts=4, top_k=2,
                  expert_width=32, seq_len=32, batch_size=8, lr=1e-2, warmup_steps=2, train_chars=60_000,
                  eval_chars=20_000, eval_windows=4, eval_seq_len=32)


# -- the shipped checkpoint ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir(), dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(demo_model_dir())


def test_shipped_model_is_a_stock_qwen3_moe(shipped):
    model, tokenizer = shipped
    cfg = model.config
    assert type(model).__name__ == "Qwen3MoeForCausalLM" and cfg.architectures == ["Qwen3MoeForCausalLM"]
    assert cfg.num_experts >= 8 and cfg.num_experts_per_tok == 2 and cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tokenizer) == 4096
    assert tokenizer.model_max_length == cfg.max_position_embeddings
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")


def test_shipped_tokenizer_round_trips_text(shipped):
    _, tokenizer = shipped
    text = "Fellow-Citizens: the state of the Union is strong — 1,234 new jobs; café naïve 日本.\n\nThank you."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text)                                         # merges learnt, not bytes


def test_shipped_model_is_trained(shipped):
    from compressor.data import eval_windows
    model, tokenizer = shipped
    windows = eval_windows(tokenizer, tokens=8 * 128, seq_len=128)     # [8, 128] spread over heldout.txt
    ppl, share = demo_train.heldout_eval(model, windows, top_k=2)
    assert ppl < 400                                                    # random init: ~ vocab size (4096)
    assert share.shape == (model.config.num_hidden_layers, model.config.num_experts)
    assert share.min() > 0.01                                           # no expert left idle in any layer


def test_shipped_assets_fit_the_budget_and_document_themselves():
    total = sum(f.stat().st_size for f in ASSETS_DIR.rglob("*") if f.is_file())
    assert total < 25e6
    card = (ASSETS_DIR / "TRAINING.md").read_text(encoding="utf-8")
    for needle in ("steps / seed", "as shipped", "max/min", "python -m compressor demo-model"):
        assert needle in card


# -- math ------------------------------------------------------------------------------------------------------
def test_switch_loss_is_one_for_uniform_and_e_over_k_for_collapsed_routing():
    uniform = torch.zeros(12, 8)                                        # P = 1/8; top-2 ties -> f = (.5, .5, 0..)
    assert switch_balance_loss([uniform], top_k=2).item() == pytest.approx(1.0)
    collapsed = torch.full((12, 8), -30.0)
    collapsed[:, :2] = 0.0                                              # P ~ (.5, .5, 0..), f = (.5, .5, 0..)
    assert switch_balance_loss([collapsed], top_k=2).item() == pytest.approx(8 * 0.5, rel=1e-6)
    assert switch_balance_loss([uniform, collapsed], top_k=2).item() == pytest.approx(2.5)   # mean over layers


def test_switch_loss_gradient_pushes_probability_away_from_the_busy_experts():
    logits = torch.zeros(4, 4)
    logits[:, 0] = 1.0                                                  # expert 0 always chosen, with most mass
    logits.requires_grad_(True)
    switch_balance_loss([logits], top_k=1).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_lr_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    kw = dict(total=110, peak=1.0, warmup=10, floor=0.1)
    assert [lr_at(s, **kw) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(10 + 99 // 2, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 49 / 99)))
    assert lr_at(109, **kw) == pytest.approx(0.1)
    assert all(lr_at(s, **kw) >= lr_at(s + 1, **kw) for s in range(10, 109))


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="top_k 3 must be between 1 and experts"):
        DemoConfig(experts=2, top_k=3)
    with pytest.raises(ValueError, match="vocab_size 100 < 259"):
        DemoConfig(vocab_size=100)


# -- training end to end, through the CLI command ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`demo-model --steps 30` with the model shrunk to TINY (the CLI itself always trains the full size)."""
    from compressor.commands import demo_model

    out = tmp_path_factory.mktemp("demo")
    real = demo_train.train_demo_model
    seen = {}

    def tiny(out_dir, **kw):
        seen.update(kw)
        seen["metrics"] = real(out_dir, config=TINY, **kw)
        return seen["metrics"]

    parser = argparse.ArgumentParser()
    demo_model.add_arguments(parser)
    args = parser.parse_args(["--out", str(out), "--steps", "30", "--seed", "3"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo_train, "train_demo_model", tiny)
        assert demo_model.run(args) == 0
    return out, seen


def test_cli_trains_and_lowers_the_loss(tiny_run):
    out, seen = tiny_run
    m = seen["metrics"]
    assert seen["steps"] == 30 and seen["seed"] == 3 and m["tokens_seen"] == 30 * 8 * 32
    assert m["heldout_ppl"] < 0.6 * m["heldout_ppl_init"]
    assert m["loss_last"] < m["loss_first"] - 0.5
    assert len(m["loss_curve"]) == 30 and len(m["load_share"]) == TINY.layers
    assert m["params_active"] < m["params_total"]


def test_trained_folder_reloads_with_stock_transformers(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out, seen = tiny_run
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.dtype == torch.bfloat16 and model.config.num_experts == TINY.experts
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["Qwen3MoeForCausalLM"]
    ids = tok("The Congress", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
    assert (out / "heldout.txt").stat().st_size > 1e6
    assert "**30** / 3" in (out / "TRAINING.md").read_text(encoding="utf-8")


def test_training_is_reproducible(tiny_run, tmp_path):
    _, seen = tiny_run
    again = demo_train.train_demo_model(tmp_path, steps=5, seed=3, config=TINY)
    # the first 3 updates use the same learning rates (2 warm-up steps, then the cosine that depends on `steps`)
    assert again["loss_curve"][:3] == seen["metrics"]["loss_curve"][:3]
    assert again["heldout_ppl_init"] == seen["metrics"]["heldout_ppl_init"]
    other = demo_train.train_demo_model(tmp_path, steps=1, seed=4, config=TINY)
    assert other["heldout_ppl_init"] != again["heldout_ppl_init"]      # the seed sets the initial weights
