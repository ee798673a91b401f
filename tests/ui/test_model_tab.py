"""Model tab over HTTP: the demo model's summary card, and bad sources that leave a clear message and a working app."""
import json
import zipfile

import pytest
import torch
import transformers as tf
from gradio_client import handle_file

from tests.ui.studio import open_demo

UPLOAD = "Upload"


def _open_upload(client, *paths):
    return client.predict(UPLOAD, "", "", [handle_file(str(p)) for p in paths], api_name="/open_model")


def test_demo_summary_card(studio):
    card = open_demo(studio.client())
    for word in ("qwen3_moe", "LAYERS", "MoE layers", "EXPERTS", "top-2", "EXPERT WIDTH", "PARAMS TOTAL",
                 "PARAMS ACTIVE"):
        assert word.lower() in card.lower(), word


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory):
    """A tiny dense Llama saved as safetensors: a valid Hugging Face folder that is not a mixture of experts."""
    path = tmp_path_factory.mktemp("dense")
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_bad_sources_say_what_is_wrong_and_the_app_keeps_working(studio, dense_folder, tmp_path):
    c = studio.client()
    cases = []
    status, _ = c.predict("Local folder", str(dense_folder), "", [], api_name="/open_model")
    cases.append((status, "dense model"))
    status, _ = c.predict("Local folder", str(tmp_path / "nope"), "", [], api_name="/open_model")
    cases.append((status, "not an existing folder"))
    status, _ = c.predict("Hub id", "", "some-org/some-moe", [], api_name="/open_model")
    cases.append((status, "offline"))
    pickle = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2)}, pickle)
    cases.append((_open_upload(c, pickle)[0], "pickle"))
    lone = tmp_path / "model.safetensors"
    lone.write_bytes((dense_folder / "model.safetensors").read_bytes())
    cases.append((_open_upload(c, lone)[0], "not a model by itself"))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    cases.append((_open_upload(c, broken)[0], "zip"))
    zipped = tmp_path / "dense.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in dense_folder.iterdir():
            zf.write(f, f"dense/{f.name}")
    cases.append((_open_upload(c, zipped)[0], "dense model"))
    for status, words in cases:
        assert "msg-error" in status and words in status.lower(), (words, status)
        assert "Traceback" not in status
    big = tmp_path / "big.zip"
    big.write_bytes(b"\0" * (41 * 2**20))                # above the studio's 40 MB cap in these tests
    with pytest.raises(ValueError, match="maximum file size"):
        _open_upload(c, big)
    assert "qwen3_moe" in open_demo(c)                   # still works


def test_folder_files_upload_opens_the_model(studio, tmp_path):
    """The files of a model folder (config.json + safetensors + tokenizer) uploaded together open like the folder."""
    from compressor.demo import demo_model_dir
    files = [f for f in demo_model_dir().iterdir() if f.is_file() and f.suffix in (".json", ".safetensors")]
    status, card = _open_upload(studio.client(), *files)
    assert "msg-ok" in status, status
    assert "qwen3_moe" in card
    assert json.loads((demo_model_dir() / "config.json").read_text())["model_type"] == "qwen3_moe"
