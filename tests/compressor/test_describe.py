"""describe_checkpoint: the summary from config.json + headers alone, equal to inspect_model of the loaded model;
impossible or disagreeing configs refused before anything of the model's size is built (issue: hardening, item 2)."""
import json
import resource
import shutil

import pytest

from compressor.demo import demo_model_dir
from compressor.describe import CheckpointError, describe_checkpoint, quick_fingerprint
from compressor.inspect import inspect_model
from compressor.sources import load_model
from compressor.stream.shards import ShardIndex
from compressor.testing import TINY_FAMILIES, tiny_moe


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_summary_from_headers_equals_the_loaded_models(family, tmp_path):
    model = tiny_moe(family)
    model.save_pretrained(tmp_path)
    got = describe_checkpoint(tmp_path)
    want = inspect_model(load_model(str(tmp_path)).model)
    assert {k: got[k] for k in want} == want
    assert got["checkpoint_bytes"] == (tmp_path / "model.safetensors").stat().st_size


def test_demo_summary_matches_the_readme_figures():
    s = describe_checkpoint(demo_model_dir())
    assert (s["params_total"], s["params_active"], s["dtype"]) == (11_283_200, 4_205_312, "bfloat16")
    assert s["tie_word_embeddings"] is True


@pytest.fixture
def demo_copy(tmp_path):
    shutil.copytree(demo_model_dir(), tmp_path / "m")
    return tmp_path / "m"


def _edit(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": 1_000_000}, "hidden_size = 1000000 is not a plausible value"),
    ({"num_hidden_layers": 1_000_000}, "num_hidden_layers = 1000000 is not a plausible value"),
    ({"num_experts_per_tok": 64}, "picks top-64 of 8 experts"),
    ({"num_hidden_layers": 6}, "num_hidden_layers = 6, but the weights hold 4 decoder layers"),
    ({"hidden_size": 512}, "hidden_size = 512, but model.embed_tokens.weight is \\[4096, 256\\]"),
    ({"moe_intermediate_size": 192}, "mlp.experts.down_proj: stored shape differs"),
    ({"num_experts": 16, "num_local_experts": 16}, "gate.weight: stored shape differs"),
    ({"num_experts": 16, "num_local_experts": 8}, "names the expert count twice"),
])
def test_impossible_or_disagreeing_configs_are_refused_cheaply(demo_copy, changes, message):
    _edit(demo_copy, **changes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=message):
        describe_checkpoint(demo_copy)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 200e6


def test_quick_fingerprint_sees_a_changed_byte_and_reads_little(demo_copy):
    index = ShardIndex.open(demo_copy)
    before = quick_fingerprint(demo_copy, index)
    assert quick_fingerprint(demo_copy, index) == before
    path = demo_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF          # a sampled offset (k = 8 of 16)
    path.write_bytes(bytes(data))
    assert quick_fingerprint(demo_copy, ShardIndex.open(demo_copy)) != before
