"""Tiny saved checkpoints and calibration batches for the streaming tests."""
import torch

from compressor.testing import tiny_inputs, tiny_moe


def saved_tiny(tmp_path_factory, family: str, **shape):
    """A tiny model of `family` saved as a Hugging Face folder (hub key layout) and the in-memory original."""
    model = tiny_moe(family, **shape)
    folder = tmp_path_factory.mktemp(f"{family}-ckpt")
    model.save_pretrained(folder)
    return folder, model


def padded_batches(vocab: int = 128):
    """Two calibration batches; the second has left padding in one row (padding must stay out of every sum)."""
    a, b = tiny_inputs(vocab, batch=2, seq=12, seed=0), tiny_inputs(vocab, batch=2, seq=12, seed=1)
    mb = torch.ones_like(b)
    mb[0, :4] = 0
    return [{"input_ids": a, "attention_mask": torch.ones_like(a)}, {"input_ids": b, "attention_mask": mb}]
