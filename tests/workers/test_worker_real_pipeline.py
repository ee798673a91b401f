"""The default path a newcomer takes: embedded Redis + worker, the real compressor.pipeline.run_recipe on the demo
model with a tiny recipe, ending in a checkpoint the download serves."""
from __future__ import annotations

import zipfile

from storage import artifacts, repo
from tests.storage.databases import studio_env
from tests.workers.cluster import wait_for
from workers.embedded import EmbeddedServices
from workers.service import enqueue_run

TINY = {
    "model": "demo",
    "calibration": {"tokens": 256, "seq_len": 64, "batch_size": 2},
    "slimming": {"expert_keep_ratio": 0.5},
    "stages": 1,
    "distill": {"steps": 2, "batch_size": 2, "seq_len": 64, "warmup_steps": 0},
    "evaluate": {"tokens": 256, "seq_len": 64, "speed": False},
}


def test_the_real_pipeline_runs_a_tiny_recipe_end_to_end(tmp_path):
    with studio_env(tmp_path / "studio"), EmbeddedServices():
        run_id = enqueue_run(TINY)
        run = wait_for(lambda: (r := repo.get_run(run_id)).is_finished and r, timeout=300, interval=0.5,
                       what="the real pipeline")
        assert run.status == "succeeded", f"{run.error}\n{run.traceback}"
        assert run.progress == 1.0 and run.metrics
        [artifact] = repo.get_artifacts(run_id)
        checkpoint = artifacts.resolve(artifact.path)
        assert (checkpoint / "config.json").is_file()
        assert (artifact.bytes, artifact.sha256) == artifacts.checkpoint_digest(checkpoint)
        with zipfile.ZipFile(artifacts.build_download(run_id)) as zf:
            names = set(zf.namelist())
        assert {f"run-{run_id}/recipe.yaml", f"run-{run_id}/metrics.json",
                f"run-{run_id}/checkpoint/config.json"} <= names
