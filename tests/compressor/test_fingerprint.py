"""Fingerprints: hand-computed digests, stability, and sensitivity to a single changed weight."""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from compressor.fingerprint import file_sha256, fingerprint, weights_fingerprint


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(5, generator=g).to(torch.bfloat16)}


def _folder(root: Path, tensors: dict[str, torch.Tensor]) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    save_file(tensors, str(root / "model.safetensors"))
    return root


def test_dir_fingerprint_matches_the_documented_formula(tmp_path):
    folder = _folder(tmp_path / "m", _tensors())
    data = (folder / "model.safetensors").read_bytes()
    expected = hashlib.sha256(b"moe-studio/weights-dir/v1\0" + b"model.safetensors\0" + str(len(data)).encode()
                              + b"\0" + data).hexdigest()
    assert weights_fingerprint(folder) == expected
    assert file_sha256(folder / "model.safetensors") == hashlib.sha256(data).hexdigest()


def test_dir_fingerprint_stable_across_copies_and_blind_to_config(tmp_path):
    a = _folder(tmp_path / "a", _tensors())
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "config.json").write_text('{"note": "configs are not weights"}')
    assert weights_fingerprint(a) == weights_fingerprint(str(b)) == weights_fingerprint(a)


def test_dir_fingerprint_changes_with_one_weight(tmp_path):
    t = _tensors()
    base = weights_fingerprint(_folder(tmp_path / "a", t))
    t["a.weight"][2, 1] += 1e-3
    assert weights_fingerprint(_folder(tmp_path / "b", t)) != base


def test_dir_fingerprint_falls_back_to_pickles_and_refuses_empty(tmp_path):
    (tmp_path / "p").mkdir()
    torch.save(_tensors(), tmp_path / "p" / "pytorch_model.bin")
    assert len(weights_fingerprint(tmp_path / "p")) == 64
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        weights_fingerprint(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder"):
        weights_fingerprint(tmp_path / "missing")


def test_module_fingerprint_matches_the_documented_formula():
    lin = torch.nn.Linear(3, 2)
    h = hashlib.sha256(b"moe-studio/weights-module/v1\0")
    for name in ("bias", "weight"):
        t = getattr(lin, name).detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode() + t.numpy().tobytes())
    assert weights_fingerprint(lin) == h.hexdigest()


def test_module_fingerprint_stable_and_sensitive():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    b = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b[2].weight[1, 3] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(a) != weights_fingerprint(a.to(torch.bfloat16))


def test_module_fingerprint_refuses_meta_weights():
    with torch.device("meta"):
        lin = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="meta device"):
        weights_fingerprint(lin)


class _Cfg(BaseModel):
    tokens: int = 64
    seq_len: int = 8


@dataclass
class _DC:
    x: float = 0.5


def test_settings_fingerprint_is_canonical_json():
    assert fingerprint({"b": 1, "a": [1, 2]}, "x") == hashlib.sha256(b'[{"a":[1,2],"b":1},"x"]').hexdigest()
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint(_Cfg()) == fingerprint({"seq_len": 8, "tokens": 64})
    assert fingerprint(_DC(), Path("/a"), torch.float32) == fingerprint({"x": 0.5}, "/a", "torch.float32")
    assert fingerprint(_Cfg(tokens=65)) != fingerprint(_Cfg())
    assert fingerprint("é") == hashlib.sha256('["é"]'.encode()).hexdigest()


def test_settings_fingerprint_refuses_non_json():
    with pytest.raises(TypeError, match="cannot hash a object"):
        fingerprint(object())
    with pytest.raises(ValueError):
        fingerprint(float("nan"))
