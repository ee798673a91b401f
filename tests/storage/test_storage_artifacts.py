"""Artifact folders are named by run id only; checkpoint digests are hand-checkable; downloads are zips by id."""
from __future__ import annotations

import hashlib
import zipfile

import pytest

from storage import artifacts


def test_run_dir_accepts_only_positive_integer_ids(studio_home):
    assert artifacts.run_dir(17) == studio_home / "artifacts" / "17"
    for bad in ["17", "../etc", -1, 0, True, 3.0]:
        with pytest.raises(ValueError, match="run id must be a positive integer"):
            artifacts.run_dir(bad)


def test_artifact_root_can_be_moved(studio_home, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_ARTIFACTS", str(tmp_path / "shared"))
    assert artifacts.run_dir(2) == tmp_path / "shared" / "2"
    assert artifacts.relative(tmp_path / "shared" / "2" / "checkpoint") == "2/checkpoint"
    assert artifacts.resolve("2/checkpoint") == tmp_path / "shared" / "2" / "checkpoint"
    with pytest.raises(ValueError, match="outside the artifact directory"):
        artifacts.resolve("../secrets")
    with pytest.raises(ValueError):
        artifacts.relative(tmp_path / "elsewhere")


def test_checkpoint_digest_is_the_sha256_of_a_sorted_manifest(studio_home):
    ckpt = artifacts.run_dir(3) / "checkpoint"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "b.bin").write_bytes(b"bbb")
    (ckpt / "sub" / "a.json").write_bytes(b"{}")
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    manifest = f"{sha(b'bbb')}  b.bin\n{sha(b'{}')}  sub/a.json\n".encode()
    assert artifacts.checkpoint_digest(ckpt) == (5, sha(manifest))
    assert artifacts.checkpoint_digest(ckpt / "b.bin") == (3, sha(b"bbb"))
    with pytest.raises(FileNotFoundError):
        artifacts.checkpoint_digest(ckpt / "missing")


def test_download_zip_holds_checkpoint_recipe_and_metrics(studio_home):
    base = artifacts.run_dir(5)
    (base / "checkpoint").mkdir(parents=True)
    (base / "checkpoint" / "model.safetensors").write_bytes(b"\x00" * 10)
    (base / "recipe.yaml").write_text("model: demo\n")
    (base / "metrics.json").write_text('{"ppl": 3.0}')
    (base / "scratch.tmp").write_text("not shipped")
    path = artifacts.build_download(5)
    assert path == base / "run-5.zip"
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["run-5/checkpoint/model.safetensors", "run-5/metrics.json",
                                         "run-5/recipe.yaml"]
        assert zf.read("run-5/recipe.yaml") == b"model: demo\n"
    assert artifacts.build_download(5) == path  # cached while nothing changed
    assert artifacts.remove_run_dir(5) and not base.exists() and not artifacts.remove_run_dir(5)
    with pytest.raises(FileNotFoundError, match="run 5 has no checkpoint"):
        artifacts.build_download(5)
