"""DeepSeek-V3's multi-token-prediction layer: the hub's checkpoints hold `model.layers.61.*` beside
`num_hidden_layers: 61` and `num_nextn_predict_layers: 1`. A tiny DeepSeek-V3 with one such extra layer (plain and
block FP8) is described (the layer reported as set aside), read layer by layer with the logits of the model without
it, and slimmed from the CLI into a checkpoint without it (issue 22)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from compressor import cli
from compressor.describe import CheckpointError, describe_checkpoint
from compressor.formats.synthetic import to_fp8_
from compressor.stream.shards import ShardIndex
from compressor.stream.skeleton import Skeleton
from compressor.testing import char_tokenizer, tiny_inputs, tiny_moe

MTP_EXTRAS = ("embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
              "shared_head.head.weight")


def _with_mtp_layer(folder, *, declared=True):
    """A copy of the last decoder layer as layer L (= num_hidden_layers) plus DeepSeek-V3's MTP-only tensors."""
    model = tiny_moe("deepseek_v3", dtype=torch.bfloat16)
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    L, H, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
    shard = folder / "model.safetensors"
    tensors = load_file(shard)
    last = f"model.layers.{L - 1}."
    tensors.update({f"model.layers.{L}." + k[len(last):]: v.clone() for k, v in tensors.items() if k.startswith(last)})
    extra = {"embed_tokens.weight": (V, H), "enorm.weight": (H,), "hnorm.weight": (H,), "eh_proj.weight": (H, 2 * H),
             "shared_head.norm.weight": (H,), "shared_head.head.weight": (V, H)}
    tensors.update({f"model.layers.{L}.{k}": torch.randn(shape, dtype=torch.bfloat16) for k, shape in extra.items()})
    save_file(tensors, shard, metadata={"format": "pt"})
    cfg["num_nextn_predict_layers"] = 1 if declared else 0          # transformers writes 1 by default
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return model, L


@pytest.mark.parametrize("fp8", [False, True])
def test_described_and_read_without_the_prediction_layer(tmp_path, fp8):
    model, L = _with_mtp_layer(tmp_path)
    if fp8:
        to_fp8_(tmp_path, block=(16, 16))
    index = ShardIndex.open(tmp_path)
    assert index.num_layers() == L and index.skipped_layers() == [L]
    assert not any(f"layers.{L}." in n for n in index.tensors) and f"model.layers.{L}.eh_proj.weight" in index.skipped
    s = describe_checkpoint(tmp_path)
    assert s["num_layers"] == L and s["next_n_layers"]["layers"] == [L] and s["next_n_layers"]["bytes"] > 0
    assert "multi-token-prediction" in s["next_n_layers"]["note"]
    sk = Skeleton.open(tmp_path)
    sk.load_globals_()
    for i in range(len(sk.layers)):
        sk.load_layer_(i)
    ids = tiny_inputs()
    with torch.no_grad():
        got = sk.model(ids).logits.float()
        if not fp8:          # the plain checkpoint: exactly the model that was saved
            assert torch.equal(got, model(ids).logits.float())
    assert torch.isfinite(got).all()


def test_undeclared_extra_layer_is_still_refused(tmp_path):
    _with_mtp_layer(tmp_path, declared=False)
    assert ShardIndex.open(tmp_path).skipped == {}
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        describe_checkpoint(tmp_path)


def test_slimmed_layer_by_layer_into_a_checkpoint_without_it(tmp_path, capsys, studio_cache):
    folder = tmp_path / "in"
    _, L = _with_mtp_layer(folder)
    to_fp8_(folder, block=(16, 16))
    assert cli.main(["inspect", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["next_n_layers"]["layers"] == [L]
    args = ["slim", str(folder), "--out", str(tmp_path / "out"), "--expert-keep-ratio", "0.5", "--experts-keep",
            "6", "--tokens", "128", "--seq-len", "32", "--no-cache", "--streaming", "on"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["streamed"] is True
    out = tmp_path / "out" / "checkpoint"
    written = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] \
        if (out / "model.safetensors.index.json").is_file() else load_file(out / "model.safetensors")
    assert not any(f"layers.{L}." in k for k in written)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(model(tiny_inputs()).logits).all()
