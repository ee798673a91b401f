"""Warm workers (issue 15): the worker parent imports torch, transformers and the job modules before it forks, and
that creates no CUDA context and no thread (a forked child could use neither); MOE_STUDIO_WARM_WORKER=0 turns it
off. Each check runs in a fresh interpreter, as a worker parent would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys, threading
from workers import tasks
tasks._open_database()
torch = sys.modules.get("torch")
print(json.dumps({"torch": torch is not None, "pipeline": "compressor.pipeline" in sys.modules,
                  "scoring": "compressor.scoring" in sys.modules,
                  "cuda": bool(torch is not None and torch.cuda.is_initialized()),
                  "threads": threading.active_count()}))
"""


def _probe(tmp_path, warm: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MOE_STUDIO_WARM_WORKER")}
    env.update(MOE_STUDIO_HOME=str(tmp_path), OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    if warm is not None:
        env["MOE_STUDIO_WARM_WORKER"] = warm
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_worker_parent_imports_torch_and_the_pipeline_without_cuda_or_threads(tmp_path):
    got = _probe(tmp_path, None)
    assert got == {"torch": True, "pipeline": True, "scoring": True, "cuda": False, "threads": 1}


def test_warm_imports_can_be_turned_off(tmp_path):
    got = _probe(tmp_path, "0")
    assert not got["torch"] and not got["pipeline"]
