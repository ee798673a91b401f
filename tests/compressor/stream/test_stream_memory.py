"""A ~300 MB checkpoint is scored and slimmed in a child process whose peak resident memory, above the same
interpreter with the project imported and the model's skeleton built, stays under half the checkpoint's size."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.stream.synthetic import write_synthetic_checkpoint
from compressor.testing import tiny_config

ROOT = Path(__file__).resolve().parents[3]
CHILD = r"""
import json, resource, sys, torch
from pathlib import Path
from compressor.stream.skeleton import Skeleton
from compressor.stream.analyze import stream_analyze
from compressor.stream.slim import stream_slim
from compressor.importance.analyze import AnalyzeConfig
from compressor.recipe import SlimmingConfig
torch.set_num_threads(1)
folder, out, work = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "work"
sk = Skeleton.open(folder)
if work:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, 1024, (2, 64), generator=g) for _ in range(2)]
    report = stream_analyze(folder, batches, config=AnalyzeConfig(taylor=False, want=("neurons", "experts")))
    stream_slim(folder, report, SlimmingConfig(expert_keep_ratio=0.5, neuron_score="activation", experts_keep=24,
                                               expert_score="reap"), out)
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "layer": sk.layer_bytes(0)}))
"""


def _child(*args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_slimming_a_300mb_checkpoint_needs_less_than_half_its_size(tmp_path):
    config = tiny_config("qwen3_moe", hidden=256, layers=12, experts=32, top_k=4, width=256, vocab=1024)
    size = write_synthetic_checkpoint(config, tmp_path / "ckpt", dtype=torch.float32)
    assert size > 300e6
    base = _child(tmp_path / "ckpt", tmp_path / "none", "idle")
    work = _child(tmp_path / "ckpt", tmp_path / "out", "work")
    extra = (work["peak_kb"] - base["peak_kb"]) * 1024
    assert extra < size / 2, f"peak {extra / 1e6:.0f} MB above the idle interpreter for a {size / 1e6:.0f} MB model"
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    print(f"checkpoint {size / 1e6:.0f} MB, layer {work['layer'] / 1e6:.1f} MB, extra peak {extra / 1e6:.0f} MB "
          f"= {extra / work['layer']:.2f} layers")
