"""ui.services without a server: uploads are staged by content hash and checked, run ids are ids, recipes validate."""
import pytest

from compressor.recipe import RecipeError
from ui import services
from ui.common import error_text, run_id_of


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write(path, data=b"x"):
    path.write_bytes(data)
    return path


def test_archive_is_copied_under_its_hash(tmp_path, cache):
    a = _write(tmp_path / "My Model (1).tar.gz", b"abc")
    staged = services.stage_upload([str(a)])
    assert staged.startswith(str(cache / "uploads")) and staged.endswith(".tar.gz")
    assert "My Model" not in staged                          # never a path made from the uploaded name
    assert services.stage_upload([str(a)]) == staged         # same content, same place


def test_folder_files_become_one_folder(tmp_path, cache):
    files = [_write(tmp_path / n, n.encode()) for n in ("config.json", "model.safetensors", "tokenizer.json")]
    staged = services.stage_upload([str(f) for f in files])
    assert sorted(p.name for p in (cache / "uploads").glob("*/*")) == ["config.json", "model.safetensors",
                                                                       "tokenizer.json"]
    assert staged == str(next((cache / "uploads").glob("*/config.json")).parent)


@pytest.mark.parametrize("names, words", [
    (["pytorch_model.bin"], "pickle checkpoints can run code"),
    (["model.safetensors"], "not a model by itself"),
    (["model.safetensors", "tokenizer.json"], "config.json is missing"),
    (["config.json", "run.py"], "unexpected file"),
    (["a.zip", "config.json"], "one archive on its own"),
    ([], "nothing was uploaded"),
])
def test_refused_uploads_say_what_to_do(tmp_path, names, words):
    with pytest.raises(services.UploadError, match=words):
        services.stage_upload([str(_write(tmp_path / n)) for n in names])


def test_upload_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_MAX_UPLOAD", "1kb")
    with pytest.raises(services.UploadError, match="above the 0.00 GB limit"):
        services.stage_upload([str(_write(tmp_path / "m.zip", b"0" * 2048))])
    monkeypatch.setenv("MOE_STUDIO_MAX_UPLOAD", "lots")
    with pytest.raises(ValueError, match="MOE_STUDIO_MAX_UPLOAD"):
        services.max_upload_bytes()


def test_run_ids_are_numbers_only():
    assert run_id_of(7) == 7 and run_id_of("12") == 12 and run_id_of(3.0) == 3
    for bad in ("../../etc/passwd", "1; rm", None, "", True, 2.5):
        with pytest.raises(ValueError):
            run_id_of(bad)


def test_recipe_errors_name_the_field():
    with pytest.raises(RecipeError, match="slimming.expert_keep_ratio"):
        services.recipe_from("demo", {"slimming": {"expert_keep_ratio": 0.0}})
    assert error_text(RecipeError("invalid recipe: x")) == "invalid recipe: x"
    assert error_text(KeyError("k")).startswith("'k'")
    assert error_text(TypeError("t")) == "TypeError: t"


def test_compare_choices_are_original_or_run_ids():
    assert services.compare_source("original", "demo") == "demo"
    with pytest.raises(ValueError, match="choose the original or a finished run"):
        services.compare_source("/etc", "demo")
