import pytest

from compressor.testing import TINY_FAMILIES, char_tokenizer, tiny_moe
from tests.compressor.stream.models import saved_tiny


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_ckpt(request, tmp_path_factory):
    """(family, folder, model) for every tiny family (fp32), saved in the hub key layout."""
    folder, model = saved_tiny(tmp_path_factory, request.param)
    return request.param, folder, model


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
