"""Model tab over HTTP: the demo model's summary card, and bad sources that leave a clear message and a working app:
paths outside the model roots, hostile archives (a CVE-2025-4517 tar, a zip bomb), and Gradio's copies cleaned up."""
import json
import os
import zipfile

import pytest
import torch
import transformers as tf
from gradio_client import handle_file

from tests.hostile import cve_2025_4517_tar, zeros_zip
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
def dense_folder(studio):
    """A tiny dense Llama saved as safetensors (a valid Hugging Face folder that is not a mixture of experts), under
    the studio's data folder: a model root."""
    path = studio.home / "models" / "dense"
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
    status, _ = c.predict("Local folder", str(studio.home / "nope"), "", [], api_name="/open_model")
    cases.append((status, "not an existing folder"))
    status, _ = c.predict("Local folder", str(tmp_path / "nope"), "", [], api_name="/open_model")
    cases.append((status, "outside the folders this studio opens models from"))
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


def _gradio_copies(studio, name: str) -> list:
    return [p for p in (studio.home / "tmp" / "gradio").rglob(name)]


def test_model_boxes_do_not_browse_the_disk(studio, tmp_path):
    """Item 3: outside the roots, existing or not, through a symlink under a root: one message naming the roots,
    never a listing; the hub box takes hub ids only."""
    c = studio.client()
    (studio.home / "models").mkdir(exist_ok=True)
    link = studio.home / "models" / "to-tmp"
    if not link.is_symlink():
        link.symlink_to(tmp_path)
    (tmp_path / "secret-model").mkdir()
    (tmp_path / "secret-model" / "config.json").write_text("{}")
    endings = set()
    for path in ("/etc", "/etc/shadow", "/no/such/folder", "/proc/self", str(tmp_path / "secret-model"),
                 str(link / "secret-model"), str(studio.home / ".." / "x"), "~/.ssh", "/" + "x" * 100_000):
        status, _ = c.predict("Local folder", path, "", [], api_name="/open_model")
        assert "msg-error" in status and "is outside the folders this studio opens models from" in status, status
        assert "--model-root DIR" in status and "config.json" not in status and "passwd" not in status
        assert len(status) < 2000
        endings.add(status.split(" is outside")[1])
    assert len(endings) == 1                                  # existing or not: the same words
    for hub in ("/etc", "/proc/self", "~/.ssh", "../../etc/passwd"):
        status, _ = c.predict("Hub id", "", hub, [], api_name="/open_model")
        assert "msg-error" in status and "is not a hub id" in status, status
    assert "qwen3_moe" in open_demo(c)                        # still up


def test_tar_symlink_chain_upload_writes_nothing_outside(studio, tmp_path):
    """Item 1: the CVE-2025-4517 tar uploaded in the Model tab is refused; nothing lands outside the data folder,
    Gradio's copy of the upload is deleted, and the studio keeps working."""
    outside = tmp_path / "outside"
    outside.mkdir()
    extraction = studio.home / "cache" / "archives" / ".0123456789abcdef-abcdefgh" / "x"   # where it would unpack
    attack = cve_2025_4517_tar(tmp_path / "chain-model.tar", outside=outside, dest=extraction)
    status, _ = _open_upload(studio.client(), attack)
    assert "msg-error" in status and "is a symbolic link; refusing the archive" in status and "tar -h" in status
    assert list(outside.iterdir()) == []
    assert not [p for p in (studio.home / "cache" / "archives").rglob("*") if "pwned" in p.name]
    assert _gradio_copies(studio, "chain-model.tar") == []
    assert "qwen3_moe" in open_demo(studio.client())


def test_zip_bomb_upload_is_refused_before_it_is_extracted(studio, tmp_path):
    """Item 4: 64 MiB of zeros in a 64 KB zip is refused by the compression-ratio cap."""
    bomb = zeros_zip(tmp_path / "zeros-model.zip", mib=64)
    assert os.path.getsize(bomb) < 128 * 1024
    status, _ = _open_upload(studio.client(), bomb)
    assert "msg-error" in status and "above the cap of 200x" in status, status
    extracted = [p for p in (studio.home / "cache" / "archives").rglob("model.safetensors")]
    assert not [p for p in extracted if p.stat().st_size >= 64 << 20]
    assert _gradio_copies(studio, "zeros-model.zip") == []
    assert "qwen3_moe" in open_demo(studio.client())


def test_an_uploaded_archive_is_labelled_by_its_name_in_the_model_tab_and_in_runs(studio, tmp_path):
    """Issue 15: an upload lives in the cache under its sha256, but the studio names it after the archive."""
    import re

    from compressor.demo import demo_model_dir
    from tests.ui.studio import compress_args, wait_run
    archive = tmp_path / "my-tiny-moe.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in demo_model_dir().iterdir():
            if f.is_file():
                zf.write(f, f"my-tiny-moe/{f.name}")
    c = studio.client()
    status, card = _open_upload(c, archive)
    assert "Opened my-tiny-moe:" in status and "<b>my-tiny-moe</b>" in card
    queued = c.predict("upload run", *compress_args(keep_ratio=0.5, steps=0, stages=1, calib_tokens=512,
                                                    calib_seq=64, eval_tokens=512), api_name="/enqueue")
    run_id = int(re.search(r"Run #(\d+) queued", queued).group(1))
    c.predict(run_id, api_name="/cancel_run")
    wait_run(c, run_id, timeout=120)
    table = c.predict(None, api_name="/runs_refresh")[0]
    row = {r[1]: dict(zip(table["headers"], r)) for r in table["data"]}[run_id]
    assert row["model"] == "my-tiny-moe"
    assert not re.search(r"[0-9a-f]{64}", " ".join(str(v) for v in row.values()))
