"""ui.services without a server: uploads are staged by content hash and checked, run ids are ids, recipes validate,
models come from the model roots only, the cache keeps its quota."""
import os
import zipfile
from pathlib import Path

import pytest

from compressor.recipe import Recipe, RecipeError
from compressor.sources import SourceError, load_model
from tests.hostile import cve_2025_4517_tar, zeros_zip
from ui import model, services, uploads
from ui.common import error_text, guard, run_id_of


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """The cache, the data folder and the working directory in a temporary folder; no model roots configured."""
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOE_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOE_STUDIO_MODEL_ROOTS", raising=False)
    monkeypatch.delenv("MOE_STUDIO_ARTIFACTS", raising=False)
    monkeypatch.delenv("MOE_STUDIO_CACHE_QUOTA", raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "cache"


def _write(path, data=b"x"):
    path.write_bytes(data)
    return path


def test_archive_is_copied_under_its_hash(tmp_path, cache):
    a = _write(tmp_path / "My Model (1).tar.gz", b"abc")
    staged = uploads.stage_upload([str(a)])
    assert staged.startswith(str(cache / "uploads")) and staged.endswith(".tar.gz")
    assert "My Model" not in staged                          # never a path made from the uploaded name
    assert uploads.stage_upload([str(a)]) == staged         # same content, same place


def test_folder_files_become_one_folder(tmp_path, cache):
    files = [_write(tmp_path / n, n.encode()) for n in ("config.json", "model.safetensors", "tokenizer.json")]
    staged = uploads.stage_upload([str(f) for f in files])
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
    with pytest.raises(uploads.UploadError, match=words):
        uploads.stage_upload([str(_write(tmp_path / n)) for n in names])


def test_upload_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_MAX_UPLOAD", "1kb")
    with pytest.raises(uploads.UploadError, match="above the 0.00 GB limit"):
        uploads.stage_upload([str(_write(tmp_path / "m.zip", b"0" * 2048))])
    monkeypatch.setenv("MOE_STUDIO_MAX_UPLOAD", "lots")
    with pytest.raises(ValueError, match="MOE_STUDIO_MAX_UPLOAD"):
        uploads.max_upload_bytes()


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


def _files_outside(tmp_path, *inside) -> list[str]:
    return sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                  if not any(p == d or d in p.parents for d in inside))


def test_tar_symlink_chain_uploaded_is_refused_and_writes_nothing_outside(tmp_path, cache):
    """Item 1 through the Model tab's path: stage_upload, then the load that open_model runs on the staged file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    extraction = cache / "archives" / ".0123456789abcdef-tmpname" / "x"     # where extract_cached unpacks
    attack = cve_2025_4517_tar(tmp_path / "model.tar", outside=outside, dest=extraction)
    staged = uploads.stage_upload([str(attack)])
    with pytest.raises(SourceError, match=r"is a symbolic link; refusing the archive.*tar -h"):
        load_model(staged)
    assert list(outside.iterdir()) == []
    assert [p.name for p in (cache / "archives").iterdir()] == []            # no extraction left behind
    assert services.discard_staged(staged) == [Path(staged)] and not Path(staged).exists()
    assert _files_outside(tmp_path, cache, tmp_path / "home") == ["model.tar", "outside", "work"]


def test_local_folders_only_under_the_roots_with_one_message(tmp_path, monkeypatch):
    """Item 3: outside the roots (existing or not, through a symlink, '..', '~') the same words, nothing listed."""
    home = tmp_path / "home"
    (home / "models" / "m").mkdir(parents=True)
    (home / "models" / "out").symlink_to(tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "config.json").write_text("{}")
    assert services.allowed_source(str(home / "models" / "m"), kind="folder") == str(home / "models" / "m")
    assert services.allowed_source("demo") == "demo"
    endings = set()
    for text in (str(secret), str(tmp_path / "nope"), str(home / "models" / "out" / "secret"), "../secret", "~",
                 "/etc", "/etc/shadow", "/proc/self", "/" + "x" * 100_000):
        with pytest.raises(SourceError, match="is outside the folders this studio opens models from") as err:
            services.allowed_source(text, kind="folder")
        message = str(err.value)
        assert str(home) in message and "--model-root DIR" in message and "MOE_STUDIO_MODEL_ROOTS" in message
        assert "config.json" not in message and len(message) < 1200
        endings.add(message.split(" is outside")[1])
    assert len(endings) == 1
    monkeypatch.setenv("MOE_STUDIO_MODEL_ROOTS", os.pathsep.join([str(secret), str(tmp_path / "other")]))
    assert services.allowed_source(str(secret), kind="folder") == str(secret)
    with pytest.raises(SourceError, match="outside"):
        services.allowed_source(str(home / "models" / "m"), kind="folder")   # the configured roots replace defaults


def test_hub_box_and_recipes_refuse_paths_outside_the_roots(tmp_path, monkeypatch):
    for text in ("/etc", "/etc/passwd", "~/.ssh", "../../etc/passwd", "org/../x"):
        with pytest.raises(SourceError, match="is not a hub id"):
            services.allowed_source(text, kind="hub")
    assert services.allowed_source("org/name@v2", kind="hub") == "org/name@v2"
    with pytest.raises(SourceError, match="outside the folders"):
        services.recipe_from(str(tmp_path), {})
    with pytest.raises(SourceError, match="outside the folders"):
        services.enqueue(Recipe.parse({"model": "/etc"}))
    staged = uploads.stage_upload([str(zeros_zip(tmp_path / "m.zip", mib=0))])
    assert services.recipe_from(staged, {}).model == staged                  # uploads are staged inside a root
    # a hub id naming a path relative to a working directory that is not a root: refused, not opened as a folder
    monkeypatch.setenv("MOE_STUDIO_MODEL_ROOTS", str(tmp_path / "home"))
    (tmp_path / "work" / "etc" / "ssh").mkdir(parents=True)
    with pytest.raises(SourceError, match="cannot be used as a hub id here"):
        services.allowed_source("etc/ssh", kind="hub")


def test_upload_cache_keeps_its_quota(tmp_path, cache, monkeypatch):
    """Item 4: the least recently used upload makes room; one larger than the quota is refused."""
    monkeypatch.setenv("MOE_STUDIO_CACHE_QUOTA", "12kb")
    first = uploads.stage_upload([str(_write(tmp_path / "a.zip", os.urandom(8 * 1024)))])
    second = uploads.stage_upload([str(_write(tmp_path / "b.zip", os.urandom(8 * 1024)))])
    assert not Path(first).exists() and Path(second).exists()
    with pytest.raises(ValueError, match="more than its whole quota of 12.0 KiB; raise MOE_STUDIO_CACHE_QUOTA"):
        uploads.stage_upload([str(_write(tmp_path / "c.zip", os.urandom(13 * 1024)))])
    assert Path(second).exists() and sorted(p.name for p in (cache / "uploads").iterdir()) == [Path(second).name]


def test_gradio_uploads_are_deleted_once_staged(tmp_path, cache, monkeypatch):
    """Item 4: the files Gradio handed over are deleted after staging (only those in its upload folder), and a
    second Open of the same upload in the session reuses the staged copy."""
    gradio_tmp = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    (gradio_tmp / "f00d").mkdir(parents=True)
    upload = _write(gradio_tmp / "f00d" / "m.zip", b"zip bytes")
    mine = _write(tmp_path / "mine.zip", b"zip bytes")
    staged: dict = {}
    source = model._staged_upload([str(upload)], staged)
    assert Path(source).read_bytes() == b"zip bytes" and not (gradio_tmp / "f00d").exists()
    assert model._staged_upload([str(upload)], staged) == source              # reopened from the session
    with pytest.raises(ValueError, match="no longer on the server"):
        model._staged_upload([str(upload)], {})
    model._staged_upload([str(mine)], {})
    assert mine.exists()                                                       # not Gradio's: left alone
    bad = _write(gradio_tmp / "pytorch_model.bin", b"x")
    with pytest.raises(uploads.UploadError, match="pickle"):
        model._staged_upload([str(bad)], {})
    assert not bad.exists()                                                    # refused uploads are deleted too


def test_zip_bomb_upload_is_refused_by_its_ratio(tmp_path, cache):
    staged = uploads.stage_upload([str(zeros_zip(tmp_path / "bomb.zip", mib=16))])
    assert os.path.getsize(staged) < 64 * 1024
    with pytest.raises(SourceError, match=r"expands \d+x .*above the cap of 200x"):
        load_model(staged)
    assert [p.name for p in (cache / "archives").iterdir()] == []


def test_summary_card_escapes_the_folder_name_and_source():
    summary = {"moe_layers": 1, "num_layers": 1, "num_experts": 4, "top_k": 2, "expert_intermediate_size": 8,
               "params_total": 100, "params_active": 50, "family": "<b>f</b>"}
    card = model.summary_card({"label": "<img src=x onerror=alert(1)>", "source": "/m/<script>x</script>",
                               "summary": summary, "fingerprint": "abc"})
    assert "<img" not in card and "<script>" not in card and "<b>f</b>" not in card
    assert "&lt;img src=x onerror=alert(1)&gt;" in card and "&lt;script&gt;" in card


def test_error_messages_reach_the_page_escaped(monkeypatch):
    """A user string quoted in an error (a folder named like HTML) is text in the status box and in the toast."""
    toasts = []
    monkeypatch.setattr(model.gr, "Warning", lambda text, **kw: toasts.append(text))

    @guard(outputs=2, status=0)
    def event(path):
        raise ValueError(f"{path!r} is not an existing folder")
    status, _ = event("<img src=x onerror=alert(1)>")
    assert "<img" not in status and "&lt;img src=x onerror=alert(1)&gt;" in status
    assert toasts and "<img" not in toasts[0] and "&lt;img" in toasts[0]


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": 1_000_000}, "hidden_size = 1000000 is not a plausible value"),
    ({"num_hidden_layers": 1_000_000}, "num_hidden_layers = 1000000 is not a plausible value"),
    ({"num_experts_per_tok": 64}, "top-64 of 8 experts"),
])
def test_a_hostile_config_upload_is_refused_in_the_child_and_its_files_deleted(tmp_path, cache, changes, message):
    """The 18 MB demo checkpoint with an impossible config.json: refused from headers, in the isolated child; this
    process never builds it, and the refused upload's extraction and archive leave the cache."""
    import json
    import resource
    import shutil

    from compressor.demo import demo_model_dir
    from compressor.describe import CheckpointError

    src = tmp_path / "m"
    shutil.copytree(demo_model_dir(), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, **changes}))
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"m/{f.name}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    staged = uploads.stage_upload([str(archive)])
    with pytest.raises(CheckpointError, match=message):
        services.open_model(staged, discard_on_failure=True)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 100e6
    assert not Path(staged).exists()
    assert not (cache / "archives").exists() or not any((cache / "archives").iterdir())
    assert services.open_model("demo").summary["num_experts"] == 8          # the studio still opens models


def test_a_recipe_a_streamed_run_would_refuse_is_named_before_it_is_queued(monkeypatch):
    """The demo (11.3 M parameters, 45 MB in float32) with 5x for global distillation needs 226 MB: with 400 MB
    available it goes layer by layer, where distill.steps and stages are refused; with 1 GB it runs in memory."""
    from compressor.recipe import Recipe
    from ui import services
    summary = {"params_total": 11_280_000}
    recipe = Recipe.model_validate({"slimming": {"expert_keep_ratio": 0.5}, "distill": {"steps": 40}, "stages": 2})
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "400MB")
    text = services.streamed_refusal(summary, recipe)
    assert "layer by layer" in text and "distill.steps is 40" in text and "stages is 2" in text
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "1GB")
    assert services.streamed_refusal(summary, recipe) is None
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "400MB")
    ok = Recipe.model_validate({"slimming": {"expert_keep_ratio": 0.5}, "distill": {"steps": 0}, "stages": 1})
    assert services.streamed_refusal(summary, ok) is None


class _Stop(Exception):
    pass


def test_a_failed_local_folder_open_leaves_another_sessions_extraction_alone(tmp_path, cache, monkeypatch):
    # Issue 28: a folder inside the cache's archives/ (a model root) that failed to open was deleted as if it were
    # this session's refused upload.
    import compressor.isolate
    theirs = cache / "archives" / ("a" * 64) / "m"
    theirs.mkdir(parents=True)
    (theirs / "config.json").write_text("{}")

    def fail(*_a, **_k):
        raise _Stop("not a model")

    monkeypatch.setattr(compressor.isolate, "run_isolated", fail)
    with pytest.raises(_Stop):
        services.open_model(str(theirs))
    assert (theirs / "config.json").exists()


def test_an_archive_is_extracted_before_the_one_at_a_time_isolated_open(tmp_path, cache, monkeypatch):
    # Issue 28: the extraction ran inside the isolated child, behind its one lock and 300 s timeout, so every other
    # session's open (even the demo's) waited for a big upload's extraction.
    import compressor.isolate
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m/config.json", "{}")
        zf.writestr("m/model.safetensors", b"x" * 4096)
    staged = uploads.stage_upload([str(archive)])
    seen = []

    def spy(fn, source, **_k):
        seen.append(sorted(p.name for p in (cache / "archives").iterdir()) if (cache / "archives").is_dir() else [])
        raise _Stop("stop before the child")

    monkeypatch.setattr(compressor.isolate, "run_isolated", spy)
    with pytest.raises(_Stop):
        services.open_model(staged)
    assert seen == [[Path(staged).name.split(".")[0]]]      # extracted already when the isolated open began


def test_pasted_recipe_yaml_has_the_same_size_cap_as_an_uploaded_file(tmp_path):
    # Issue 28: 5.9 MB of pasted YAML cost 48.8 s of CPU; an uploaded file was capped, pasted text was not.
    from ui import recipe_form
    big = "# " + "x" * recipe_form.MAX_YAML_BYTES + "\nmodel: demo\n"
    with pytest.raises(ValueError, match=r"the pasted recipe is larger than 256 KB"):
        recipe_form.parse_yaml(big, None)
    (tmp_path / "r.yaml").write_text(big)
    with pytest.raises(ValueError, match=r"r.yaml is larger than 256 KB"):
        recipe_form.parse_yaml(None, str(tmp_path / "r.yaml"))
    assert recipe_form.parse_yaml("model: demo\n", None).model == "demo"


def test_concurrent_uploads_keep_a_queued_runs_upload_and_the_quota(tmp_path, cache, monkeypatch):
    # Issue 28: three concurrent uploads under a 100 MB quota deleted a queued run's upload and used 117.4 MB.
    import os
    from concurrent.futures import ThreadPoolExecutor

    from compressor import studio_cache
    from compressor.studio_cache import CacheFullError

    monkeypatch.setenv("MOE_STUDIO_CACHE_QUOTA", "64kb")

    def archive(i: int) -> Path:
        path = tmp_path / f"up{i}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("m/model.safetensors", os.urandom(12 * 1024))
        return path

    queued = Path(uploads.stage_upload([str(archive(0))]))
    studio_cache.pin("run-1", str(queued))                    # what Enqueue does
    past = os.path.getmtime(queued) - 1000
    os.utime(queued, (past, past))                            # the oldest entry: the first an eviction would take

    def stage(i: int):
        try:
            return uploads.stage_upload([str(archive(i))])
        except CacheFullError:
            return None

    with ThreadPoolExecutor(4) as pool:
        staged = list(pool.map(stage, range(1, 13)))
    assert queued.exists()
    assert sum(s is not None for s in staged) >= 4
    used = sum(studio_cache.entry_bytes(p) for p in studio_cache.cache_entries())
    assert used <= 64 * 1024
