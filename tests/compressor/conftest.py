from pathlib import Path

import pytest
import torch

from compressor.testing import char_tokenizer, tiny_moe


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two threads on a shared 2-core runner can be 10-50x slower.
    Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private studio cache (uploads/ and archives/ made) with a 10 kB quota: its folder."""
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOE_STUDIO_CACHE_QUOTA", "10kb")
    for part in ("uploads", "archives"):
        (tmp_path / "cache" / part).mkdir(parents=True)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 3-layer tiny Qwen3-MoE folder with a tokenizer (what the CLI and the pipeline need)."""
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_moe("qwen3_moe", layers=3).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def studio_cache(tmp_path, monkeypatch):
    """A private score cache, and the machine's own memory figure (no MOE_STUDIO_MEMORY)."""
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MOE_STUDIO_MEMORY", raising=False)
