"""Safe archive extraction: round trips, path escapes, links, devices, size and count caps, lying zips."""
from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from compressor import archive
from compressor.archive import ArchiveError, archive_kind, extract_archive
from tests.hostile import cve_2025_4517_tar, zeros_zip


def _zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
            else:
                tf.addfile(m)
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "src" / "my-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "x"}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (folder / "sub").mkdir()
    (folder / "sub" / "note.txt").write_text("hi")
    return folder


def test_archive_kind_from_name():
    assert [archive_kind(Path(n)) for n in ("a.zip", "a.TAR.GZ", "a.tgz", "a.tar", "a.safetensors")] == \
        ["zip", "tar", "tar", "tar", None]


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tgz", ".tar"])
def test_round_trip_returns_the_single_top_level_folder(tmp_path, model_folder, suffix):
    members = {p.relative_to(model_folder.parent).as_posix(): p.read_bytes()
               for p in model_folder.rglob("*") if p.is_file()}
    src = tmp_path / f"up{suffix}"
    _zip(src, members) if suffix == ".zip" else _tar(src, list(members.items()))
    root = extract_archive(src, tmp_path / "out")
    assert root == tmp_path / "out" / "my-model"
    assert _files_under(root) == {"config.json", "model.safetensors", "sub", "sub/note.txt"}
    assert (root / "model.safetensors").read_bytes() == (model_folder / "model.safetensors").read_bytes()


def test_flat_archive_returns_dest_and_skips_macos_junk(tmp_path):
    src = _zip(tmp_path / "flat.zip", {"config.json": b"{}", "model.safetensors": b"abc",
                                       "__MACOSX/._config.json": b"junk", "._model.safetensors": b"junk"})
    root = extract_archive(src, tmp_path / "out")
    assert root == tmp_path / "out"
    assert _files_under(root) == {"config.json", "model.safetensors"}


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/tmp/evil-abs", "C:/evil", "..\\evil"])
def test_zip_escaping_member_refused_and_nothing_written(tmp_path, name):
    src = _zip(tmp_path / "bad.zip", {"ok/config.json": b"{}", name: b"pwned"})
    dest = tmp_path / "box" / "out"
    with pytest.raises(ArchiveError, match="refusing"):
        extract_archive(src, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "box" / "evil").exists()
    assert not Path("/tmp/evil-abs").exists()


def test_zip_symlink_member_refused(tmp_path):
    src = _zip(tmp_path / "link.zip", {"m/config.json": b"{}"}, symlinks={"m/passwd": "/etc/passwd"})
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_archive(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("member, message", [
    (("/abs/evil", b"x"), "absolute path"),
    (("../evil", b"x"), r"\.\."),
    (_link("m/passwd", "/etc/passwd"), "is a symbolic link"),
    (_link("m/up", "../../evil"), "is a symbolic link"),
    (_link("m/hard", "../evil", tarfile.LNKTYPE), "is a hard link"),
    (_link("m/alias.json", "config.json"), "is a symbolic link"),        # even a link that stays inside
    (_link("m/same.json", "m/config.json", tarfile.LNKTYPE), "is a hard link"),
])
def test_tar_escapes_refused(tmp_path, member, message):
    src = _tar(tmp_path / "bad.tar.gz", [("m/config.json", b"{}"), member])
    with pytest.raises(ArchiveError, match=message):
        extract_archive(src, tmp_path / "box" / "out")
    assert not (tmp_path / "box" / "out").exists() and not (tmp_path / "box" / "evil").exists()
    assert not (tmp_path / "evil").exists()


def test_tar_device_file_refused(tmp_path):
    dev = tarfile.TarInfo("m/null")
    dev.type = tarfile.CHRTYPE
    dev.devmajor, dev.devminor = 1, 3
    src = _tar(tmp_path / "dev.tar", [("m/config.json", b"{}"), dev])
    with pytest.raises(ArchiveError, match="device"):
        extract_archive(src, tmp_path / "out")


def test_tar_symlink_chain_of_cve_2025_4517_is_refused_before_anything_is_written(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "box" / "out"
    src = cve_2025_4517_tar(tmp_path / "chain.tar", outside=outside, dest=dest)
    with pytest.raises(ArchiveError, match=r"is a symbolic link; refusing the archive.*tar -h") as err:
        extract_archive(src, dest)
    assert len(str(err.value)) < 600                      # the 250-character member names are cut short
    assert list(outside.iterdir()) == [] and not dest.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["box", "chain.tar", "outside"]


def test_zip_bomb_refused_by_its_compression_ratio(tmp_path):
    """8 MiB of zeros deflate to about 8 KB (~1000x): refused before a byte is written, far below the size cap."""
    src = zeros_zip(tmp_path / "zeros.zip", mib=8)
    assert src.stat().st_size < 64 << 10
    with pytest.raises(ArchiveError, match=r"member 'm/model.safetensors' expands \d+x .*above the cap of 200x"):
        extract_archive(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    tgz = _tar(tmp_path / "zeros.tar.gz", [("m/model.safetensors", b"\0" * (8 << 20))])
    with pytest.raises(ArchiveError, match=r"the archive expands \d+x"):
        extract_archive(tgz, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert extract_archive(src, tmp_path / "out", max_ratio=10_000).name == "m"   # the cap is a parameter


def test_make_room_is_asked_for_the_declared_size_before_writing(tmp_path):
    src = _zip(tmp_path / "a.zip", {"m/a.bin": b"a" * 600, "m/b.bin": b"b" * 400})
    asked = []
    extract_archive(src, tmp_path / "out", make_room=asked.append)
    assert asked == [1000]

    def refuse(n):
        raise ArchiveError(f"no room for {n} bytes")
    with pytest.raises(ArchiveError, match="no room for 1000 bytes"):
        extract_archive(src, tmp_path / "out2", make_room=refuse)
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_declared_size_cap(tmp_path, suffix):
    members = {"m/a.bin": b"\0" * 600, "m/b.bin": b"\0" * 600}
    src = tmp_path / f"big{suffix}"
    _zip(src, members) if suffix == ".zip" else _tar(src, list(members.items()))
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        extract_archive(src, tmp_path / "out", max_bytes=1000)
    assert extract_archive(src, tmp_path / "out2", max_bytes=1200).name == "m"   # exactly at the cap is fine


@pytest.mark.parametrize("suffix", [".zip", ".tar"])
def test_file_count_cap(tmp_path, suffix):
    members = {f"m/{i}.txt": b"x" for i in range(5)}   # 5 files; m/ itself is implicit
    src = tmp_path / f"many{suffix}"
    _zip(src, members) if suffix == ".zip" else _tar(src, list(members.items()))
    with pytest.raises(ArchiveError, match="more than 4 files"):
        extract_archive(src, tmp_path / "out", max_files=4)
    assert len(list(extract_archive(src, tmp_path / "out2", max_files=5).iterdir())) == 5


def test_zip_that_lies_about_its_size_is_refused(tmp_path):
    """A member declaring 10 bytes that inflates to 1 MiB: the byte count while writing (or the CRC) stops it."""
    data = bytearray(_zip(tmp_path / "liar.zip", {"m/big.bin": b"\0" * 2**20}).read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 10)     # local header: uncompressed size
    struct.pack_into("<I", data, central + 24, 10)   # central directory: uncompressed size
    (tmp_path / "liar.zip").write_bytes(bytes(data))
    assert zipfile.ZipFile(tmp_path / "liar.zip").getinfo("m/big.bin").file_size == 10
    with pytest.raises(ArchiveError, match="sizes lie"):
        extract_archive(tmp_path / "liar.zip", tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()


def test_not_enough_disk_space_refused(tmp_path, monkeypatch):
    src = _zip(tmp_path / "a.zip", {"m/a.bin": b"\0" * 100})
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda p: type("U", (), {"free": 50})())
    with pytest.raises(ArchiveError, match="only 50 are free"):
        extract_archive(src, tmp_path / "out")


def test_bad_inputs(tmp_path):
    with pytest.raises(ArchiveError, match="not a supported archive"):
        extract_archive(tmp_path / "model.rar", tmp_path / "out")
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_archive(tmp_path / "junk.zip", tmp_path / "out")
    (tmp_path / "junk.tgz").write_bytes(b"not a tar at all")
    with pytest.raises(ArchiveError, match="not a readable tar"):
        extract_archive(tmp_path / "junk.tgz", tmp_path / "out")
    src = _zip(tmp_path / "ok.zip", {"a.txt": b"x"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("already here")
    with pytest.raises(ArchiveError, match="absent or an empty folder"):
        extract_archive(src, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "already here"


def test_bytes_are_counted_while_writing(tmp_path, monkeypatch):
    """Second line of defence: with the declared-size check disabled, the write loop still stops at the cap."""
    src = _zip(tmp_path / "a.zip", {"m/a.bin": b"\0" * 600, "m/b.bin": b"\0" * 600})
    monkeypatch.setattr(archive, "_count", lambda *a, **k: None)
    with pytest.raises(ArchiveError, match="passes the cap while extracting 'm/b.bin'"):
        extract_archive(src, tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()
