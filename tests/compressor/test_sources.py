"""Model sources: parsing user strings, loading folders / archives / pickles safely, hub ids offline."""
from __future__ import annotations

import json
import shutil
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest
import torch
import transformers as tf

from compressor import sources
from compressor.fingerprint import weights_fingerprint
from compressor.sources import ModelSource, SourceError, load_model, parse_source
from compressor.testing import tiny_config, tiny_inputs, tiny_moe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[tf.PreTrainedModel, Path]:
    """A tiny Qwen3-MoE (4 experts, top-2) in memory and saved as an HF folder with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = tiny_moe("qwen3_moe", experts=4)
    folder = tmp_path_factory.mktemp("models") / "tiny-moe"
    model.save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(folder)
    return model, folder


def _logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(tiny_inputs() if ids is None else ids).logits


def _copy(folder: Path, dest: Path, keep=("config.json",)) -> Path:
    dest.mkdir(parents=True)
    for name in keep:
        shutil.copy(folder / name, dest / name)
    return dest


# ------------------------------------------------------------------------------------------------------ parsing
def test_parse_source_kinds(tmp_path, tiny):
    _, folder = tiny
    (tmp_path / "up.zip").write_bytes(b"")
    (tmp_path / "up.tgz").write_bytes(b"")
    assert parse_source(" demo ") == ModelSource("demo", "demo")
    assert parse_source(str(folder)) == ModelSource("directory", str(folder.resolve()))
    assert parse_source(str(tmp_path / "up.zip")).kind == "archive"
    assert parse_source(str(tmp_path / "up.tgz")).kind == "archive"
    assert parse_source("Qwen/Qwen3-30B-A3B") == ModelSource("hub", "Qwen/Qwen3-30B-A3B")
    hub = parse_source("org/name@refs/pr/1")
    assert (hub.kind, hub.location, hub.revision, str(hub)) == ("hub", "org/name", "refs/pr/1", "org/name@refs/pr/1")


@pytest.mark.parametrize("text, message", [
    ("", "empty model source"),
    ("not a model!", "'not a model!' is not an existing folder or archive, and not a hub id"),
    ("a/b/c", "accepted forms"),
    ("org/../name", "not a hub id"),
    ("missing/upload.zip", "not an existing folder or archive"),
])
def test_parse_source_refuses_nonsense_with_the_accepted_forms(text, message):
    with pytest.raises(SourceError, match=message) as err:
        parse_source(text)
    assert "org/name@revision" in str(err.value)


def test_long_user_strings_are_cut_in_messages():
    with pytest.raises(SourceError) as err:
        parse_source("/nowhere/" + "x" * 100_000)
    text = str(err.value)
    assert len(text) < 1000 and "… (100009 characters)" in text
    assert sources.shown("a/b") == "'a/b'"


def test_hub_box_takes_hub_ids_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)             # a folder of the same shape: still a hub id
    assert sources.parse_hub_id(" org/name@v1 ") == ModelSource("hub", "org/name", "v1")
    for text in ("/etc", "/etc/passwd", "~/.ssh", "../x/y", "org/../name", "proc/self/../x", "a/b.zip", "", "x" * 500):
        with pytest.raises(SourceError, match="is not a hub id: type 'org/name'") as err:
            sources.parse_hub_id(text)
        assert len(str(err.value)) < 500


def test_local_folders_must_lie_under_the_roots(tmp_path, tiny):
    """Outside the roots, existing or not, symlinked or '..'-ed: one message naming the roots, nothing listed."""
    _, folder = tiny
    root = tmp_path / "models"
    shutil.copytree(folder, root / "tiny-moe")
    (root / "up.zip").write_bytes(b"")
    (root / "escape").symlink_to(tmp_path)                      # a link inside the root pointing out of it
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "config.json").write_text("{}")
    roots = [root]
    assert sources.parse_local_source(str(root / "tiny-moe"), roots) == ModelSource("directory", str(root / "tiny-moe"))
    assert sources.parse_local_source(str(root / "up.zip"), roots).kind == "archive"
    messages = set()
    for text in (str(secret), str(tmp_path / "no-such-folder"), str(root / "escape" / "secret"),
                 str(root / ".." / "secret"), "/etc", "/proc/self", "~"):
        with pytest.raises(SourceError, match=r"is outside the folders this studio opens models from") as err:
            sources.parse_local_source(text, roots, hint="add one with --model-root DIR")
        assert str(root) in str(err.value) and "--model-root DIR" in str(err.value)
        assert "config.json" not in str(err.value)
        messages.add(str(err.value).split(" is outside")[1])
    assert len(messages) == 1                                   # existing or not: the same words
    with pytest.raises(SourceError, match="not an existing folder or archive"):
        sources.parse_local_source(str(root / "missing"), roots)
    with pytest.raises(SourceError, match="not a valid path"):
        sources.parse_local_source(str(root) + "/a\0b", roots)


def test_lone_safetensors_file_is_not_a_model(tiny):
    _, folder = tiny
    with pytest.raises(SourceError, match="zip the whole Hugging Face folder"):
        parse_source(str(folder / "model.safetensors"))
    with pytest.raises(SourceError, match="cannot be loaded"):
        parse_source(str(folder / "config.json"))


def test_model_source_validates():
    with pytest.raises(SourceError, match="unknown source kind"):
        ModelSource("ftp", "x")
    with pytest.raises(SourceError, match="only applies to hub"):
        ModelSource("directory", "/x", revision="main")


# ------------------------------------------------------------------------------------------------------ loading
def test_directory_round_trip(tiny):
    model, folder = tiny
    loaded = load_model(str(folder))
    assert not loaded.model.training
    assert torch.equal(_logits(loaded.model), _logits(model))
    assert loaded.local_dir == folder and loaded.source.kind == "directory"
    assert loaded.fingerprint == weights_fingerprint(folder) and loaded.revision is None
    assert loaded.tokenizer("hello world")["input_ids"] == [4, 5]


def test_dtype_and_experts_implementation_pass_through(tiny):
    _, folder = tiny
    loaded = load_model(ModelSource("directory", str(folder)), dtype="bfloat16", experts_implementation="eager")
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.model.config._experts_implementation == "eager"
    with pytest.raises(SourceError, match="unknown dtype"):
        load_model(str(folder), dtype="float7")


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_archive_loads_once_per_content(tmp_path, tiny, suffix, monkeypatch):
    model, folder = tiny
    up = tmp_path / f"upload{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(up, "w") as zf:
            for p in folder.iterdir():
                zf.write(p, f"tiny-moe/{p.name}")
    else:
        with tarfile.open(up, "w:gz") as t:
            t.add(folder, arcname="tiny-moe")
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    loaded = load_model(str(up))
    assert loaded.local_dir.parent.parent == tmp_path / "cache" / "archives" and loaded.local_dir.name == "tiny-moe"
    assert torch.equal(_logits(loaded.model), _logits(model))
    assert loaded.fingerprint == weights_fingerprint(folder)

    def no_second_extraction(*a, **k):
        raise AssertionError("the same archive was extracted twice")
    monkeypatch.setattr(sources, "extract_archive", no_second_extraction)
    again = load_model(str(up), work_dir=tmp_path / "cache" / "archives")
    assert again.local_dir == loaded.local_dir
    assert [p.name for p in (tmp_path / "cache" / "archives").iterdir()] == [loaded.local_dir.parent.name]


def test_hostile_archive_refused_and_leaves_no_cache_entry(tmp_path, tiny):
    _, folder = tiny
    up = tmp_path / "evil.zip"
    with zipfile.ZipFile(up, "w") as zf:
        zf.write(folder / "config.json", "m/config.json")
        zf.writestr("../escaped.txt", "pwned")
    with pytest.raises(SourceError, match="outside"):
        load_model(str(up), work_dir=tmp_path / "work")
    assert list((tmp_path / "work").iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_pickle_only_folder_needs_the_flag(tmp_path, tiny):
    model, folder = tiny
    bin_dir = _copy(folder, tmp_path / "bin")
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    with pytest.raises(SourceError, match="--allow-pickle"):
        load_model(str(bin_dir))
    assert torch.equal(_logits(load_model(str(bin_dir), allow_pickle=True).model), _logits(model))

    pt_dir = _copy(folder, tmp_path / "pt")
    torch.save({"state_dict": model.state_dict()}, pt_dir / "weights.pt")
    with pytest.raises(SourceError, match="--allow-pickle"):
        load_model(str(pt_dir))
    assert torch.equal(_logits(load_model(str(pt_dir), allow_pickle=True).model), _logits(model))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_with_code_is_refused_even_with_the_flag(tmp_path, tiny, name):
    model, folder = tiny
    marker = tmp_path / "PWNED"
    bad = _copy(folder, tmp_path / "bad")
    torch.save({**model.state_dict(), "x": _Payload(marker)}, bad / name)
    with pytest.raises(SourceError, match="weights_only=True"):
        load_model(str(bad), allow_pickle=True)
    assert not marker.exists()


def test_safetensors_preferred_over_pickles(tmp_path, tiny):
    model, folder = tiny
    both = tmp_path / "both"
    shutil.copytree(folder, both)
    (both / "pytorch_model.bin").write_bytes(b"never read: not even a pickle")
    assert torch.equal(_logits(load_model(str(both)).model), _logits(model))


def test_remote_code_needs_the_flag(tmp_path, tiny):
    _, folder = tiny
    remote = tmp_path / "remote"
    shutil.copytree(folder, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    config["model_type"] = "evil_moe"                  # not a model type transformers has
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match="config.json has 'auto_map'.*--trust-remote-code"):
        load_model(str(remote))

    remote_tok = tmp_path / "remote_tok"
    shutil.copytree(folder, remote_tok)
    tok_config = json.loads((remote_tok / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (remote_tok / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(SourceError, match="tokenizer_config.json has 'auto_map'"):
        load_model(str(remote_tok))


def test_remote_code_config_of_a_native_model_type_opens_with_transformers_code(tmp_path, tiny):
    """DeepSeek-V3/R1 and MiniMax-M2 ship `auto_map` although transformers has their model_type: the folder opens
    with transformers' own class and the repository's code never runs (issue 22, real configs)."""
    _, folder = tiny
    remote = tmp_path / "native"
    shutil.copytree(folder, remote)
    marker = tmp_path / "ran"
    (remote / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (remote / "config.json").write_text(json.dumps(config))
    loaded = load_model(str(remote))
    assert type(loaded.model).__module__.startswith("transformers.models.")
    assert not marker.exists()


def test_kimi_k2_is_refused_with_the_setting_that_opens_it(tmp_path, tiny):
    _, folder = tiny
    kimi = tmp_path / "kimi"
    shutil.copytree(folder, kimi)
    config = json.loads((kimi / "config.json").read_text())
    config.update(model_type="kimi_k2", auto_map={"AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"})
    (kimi / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match="set \"model_type\": \"deepseek_v3\".*--trust-remote-code"):
        load_model(str(kimi))


def test_folder_without_config_or_weights(tmp_path, tiny):
    _, folder = tiny
    noconf = tmp_path / "noconf"
    noconf.mkdir()
    shutil.copy(folder / "model.safetensors", noconf)
    (noconf / "readme.md").write_text("hi")
    with pytest.raises(SourceError, match="no config.json, so this is not a Hugging Face model folder") as err:
        load_model(str(noconf))
    assert "readme.md" not in str(err.value)                      # a folder's contents are never listed
    noweights = _copy(folder, tmp_path / "noweights")
    (noweights / "secret.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no weights found \(expected \*.safetensors") as err:
        load_model(str(noweights))
    assert "secret.txt" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbled header"])
def test_corrupt_safetensors_is_a_source_error_naming_the_file(tmp_path, tiny, damage):
    _, folder = tiny
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = (bad / "model.safetensors").read_bytes()
    broken = data[: len(data) // 2] if damage == "truncated" else data[:8] + b"{not json" + data[17:]
    (bad / "model.safetensors").write_bytes(broken)
    with pytest.raises(SourceError, match=r"model.safetensors is not a readable safetensors file .*truncated or "
                                          r"corrupt") as err:
        load_model(str(bad))
    assert "Traceback" not in str(err.value) and len(str(err.value)) < 1000


def test_weights_that_miss_parameters_are_refused(tmp_path, tiny):
    model, folder = tiny
    partial = _copy(folder, tmp_path / "partial")
    state = dict(model.state_dict())
    del state["model.layers.1.mlp.gate.weight"]
    torch.save(state, partial / "model.pt")
    with pytest.raises(SourceError, match="lacks 1 weights.*model.layers.1.mlp.gate.weight"):
        load_model(str(partial), allow_pickle=True)


def test_tied_embeddings_are_not_reported_missing(tmp_path):
    config = tiny_config("qwen3_moe", experts=4)
    config.tie_word_embeddings = True
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "tied")
    assert torch.equal(_logits(load_model(str(tmp_path / "tied")).model), _logits(model))


def test_demo_uses_the_demo_package(monkeypatch, tiny):
    model, folder = tiny
    fake = types.ModuleType("compressor.demo")
    fake.demo_model_dir = lambda: folder
    monkeypatch.setitem(sys.modules, "compressor.demo", fake)
    loaded = load_model("demo")
    assert loaded.source.kind == "demo" and loaded.local_dir == folder
    assert torch.equal(_logits(loaded.model), _logits(model))

    def missing():
        raise FileNotFoundError("the demo model is missing")
    fake.demo_model_dir = missing
    with pytest.raises(SourceError, match="demo model is not available"):
        load_model("demo")


# ---------------------------------------------------------------------------------------------------------- hub
def test_hub_id_offline_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError) as err:
        load_model("nobody-moe-studio/does-not-exist-42")
    text = str(err.value)
    assert "'nobody-moe-studio/does-not-exist-42'@main" in text and "offline" in text
    assert "pass the folder's path" in text


def test_hub_revision_must_agree():
    with pytest.raises(SourceError, match="disagrees"):
        load_model("org/name@v1", revision="v2")


def test_hub_loads_from_the_local_cache_and_records_the_revision(monkeypatch, tmp_path, tiny):
    """A hub id whose snapshot is cached loads offline; the revision asked for and the commit are recorded."""
    model, folder = tiny
    calls = []

    def fake_snapshot_download(repo, *, revision, allow_patterns, local_files_only):
        calls.append((repo, revision, tuple(allow_patterns), local_files_only))
        return str(folder)   # stands in for .../snapshots/<commit>
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("org/tiny")
    assert (loaded.revision, loaded.commit, loaded.source.kind) == ("main", folder.name, "hub")
    assert torch.equal(_logits(loaded.model), _logits(model))
    assert calls[0] == ("org/tiny", "main", ("config.json", "tokenizer_config.json"), True)   # refuse code early
    assert "*.safetensors" in calls[1][2] and not any(p.endswith((".bin", ".pt", ".py")) for p in calls[1][2])


def test_a_folder_under_a_root_with_a_file_linked_outside_is_refused(tmp_path):
    # Issue 28: the folder's real path was checked, its files were not: a chat_template.jinja linked to a file
    # outside the roots opened normally and came back inside the Download zip.
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "m" / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "m" / "config.json").write_text("{}")
    (root / "m" / "chat_template.jinja").symlink_to(outside / "secret.txt")
    with pytest.raises(SourceError, match=r"'chat_template.jinja' in the model folder links outside .*--model-root"):
        sources.parse_local_source(str(root / "m"), [root], hint="add one with --model-root DIR")
    (root / "m" / "chat_template.jinja").unlink()
    (root / "m" / "sub" / "w.safetensors").symlink_to(outside, target_is_directory=True)   # deeper, a folder
    with pytest.raises(SourceError, match=r"'sub/w.safetensors' in the model folder links outside"):
        sources.parse_local_source(str(root / "m"), [root])
    (root / "m" / "sub" / "w.safetensors").unlink()
    (root / "m" / "sub" / "gone").symlink_to(root / "nothing")
    with pytest.raises(SourceError, match=r"'sub/gone' in the model folder is a link to nothing"):
        sources.parse_local_source(str(root / "m"), [root])
    (root / "m" / "sub" / "gone").unlink()
    (root / "m" / "tokenizer.json").symlink_to(root / "m" / "config.json")   # a link inside the roots is fine
    assert sources.parse_local_source(str(root / "m"), [root]).kind == "directory"
