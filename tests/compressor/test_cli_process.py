"""The CLI as a user runs it, in its own process: what it prints besides its answer, and folders of families whose
layers do not live at model.layers (issue 20)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from compressor.quiet import NOISY_LOGGERS
from compressor.testing import tiny_moe

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "compressor", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_inspect_prints_its_answer_and_no_dependency_noise():
    """transformers imports torchao, which logged 'Failed to load ..._C_mxfp8' per CUDA extension, a Triton warning
    and two torch pytree deprecation warnings in every command."""
    r = _cli("inspect", "demo")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["family"] == "qwen3_moe"
    for noise in ("Failed to load", "register_constant", "Detected no triton", "pytree"):
        assert noise not in r.stderr, r.stderr
    assert "torchao" in NOISY_LOGGERS


def test_inspect_describes_a_dbrx_folder(tmp_path):
    """DBRX keeps its decoder layers at transformer.blocks; inspect ended in AttributeError (no 'layers')."""
    tiny_moe("dbrx").save_pretrained(tmp_path)
    r = _cli("inspect", str(tmp_path))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["family"], info["num_layers"], info["num_experts"], info["top_k"]) == ("dbrx", 4, 8, 2)
    assert "Traceback" not in r.stderr
