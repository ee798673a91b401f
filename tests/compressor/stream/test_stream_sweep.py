"""A layer-by-layer sweep reproduces the whole model's forward exactly, on every tiny family."""
import pytest
import torch

from compressor.stream.shards import ShardError, ShardIndex
from compressor.stream.skeleton import Skeleton
from compressor.stream.sweep import advance_, capture_inputs, final_logits

from tests.compressor.stream.models import padded_batches


def _sweep_logits(folder, batches):
    sk = Skeleton.open(folder)
    sk.load_globals_()
    acts = capture_inputs(sk, batches)
    for i in range(len(sk.layers)):
        advance_(sk.load_layer_(i), acts, i)
        sk.release_layer_(i)
        assert all(p.device.type == "meta" for p in sk.layers[i].parameters())
    with torch.no_grad():
        return [final_logits(sk, h) for h in acts.hidden]


def test_streamed_logits_equal_the_whole_model(family_ckpt):
    family, folder, model = family_ckpt
    batches = padded_batches()
    got = _sweep_logits(folder, batches)
    with torch.no_grad():
        want = [model(**b, use_cache=False).logits for b in batches]
    for g, w, b in zip(got, want, batches):
        keep = b["attention_mask"].bool()
        assert torch.equal(g[keep], w[keep]), family


def test_skeleton_holds_no_weights_until_a_layer_is_loaded(family_ckpt):
    _, folder, model = family_ckpt
    sk = Skeleton.open(folder)
    assert all(p.device.type == "meta" for p in sk.model.parameters())
    layer = sk.load_layer_(len(sk.layers) - 1)
    assert all(p.device.type == "cpu" for p in layer.parameters())
    assert all(p.device.type == "meta" for p in sk.layers[0].parameters())
    assert sk.layer_bytes(0) == sum(p.numel() * 4 for p in model.model.layers[0].parameters())


def test_a_missing_tensor_is_named_with_its_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from compressor.testing import tiny_moe
    tiny_moe("qwen3_moe").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    gone = next(k for k in tensors if k.startswith("model.layers.1.self_attn.q_proj"))
    del tensors[gone]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    sk = Skeleton.open(tmp_path)
    with pytest.raises(ShardError, match=r"decoder layer 1 .*missing model\.layers\.1\.self_attn\.q_proj"):
        sk.load_layer_(1)


def test_an_index_naming_an_absent_shard_or_tensor_is_refused(tmp_path):
    import json
    from compressor.testing import tiny_moe
    tiny_moe("mixtral").save_pretrained(tmp_path)
    index = {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match="names shard 'model-00002-of-00002.safetensors', which is not in the folder"):
        ShardIndex.open(tmp_path)
    index["weight_map"] = {"model.nope.weight": "model.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match="lists tensor 'model.nope.weight' in 'model.safetensors', but that file"):
        ShardIndex.open(tmp_path)


def test_a_truncated_shard_is_refused_with_its_name(tmp_path):
    from compressor.testing import tiny_moe
    tiny_moe("olmoe").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError, match="model.safetensors: not a readable safetensors file .*truncated or corrupt"):
        ShardIndex.open(tmp_path)
