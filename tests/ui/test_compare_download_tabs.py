"""Compare and Download tabs over HTTP, on a finished tiny run: side-by-side generations with the same settings,
computed by a worker job that the page polls; per-token agreement and top-5 at a position, metrics side by side;
the zip by run id loads in stock transformers."""
import time
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.ui.studio import figure, open_demo


def compare(client, *args, timeout: float = 120) -> tuple[list, list, list[str]]:
    """Press Compare with `args`, then poll like the page's timer until the job ended: (first outputs, last
    outputs, every status shown). Outputs: status, A, B, agreement, position, top-5, metrics, timer."""
    first = out = client.predict(*args, api_name="/compare")
    statuses = [out[0]]
    t0 = time.monotonic()
    while "msg-info" in out[0]:
        assert time.monotonic() - t0 < timeout, statuses[-3:]
        time.sleep(0.25)
        out = client.predict(api_name="/compare_poll")
        statuses.append(out[0])
    return first, out, statuses


def test_compare_original_with_a_finished_run(studio, finished_run):
    c = studio.client()
    open_demo(c)
    a, b = c.predict(api_name="/compare_choices")
    runs = [v for _, v in b["choices"] if v.startswith("run:")]
    assert f"run:{finished_run}" in runs                                   # B defaults to the newest finished run
    assert b["value"] == max(runs, key=lambda v: int(v.split(":")[1]))     # (other modules' runs may be newer)
    t0 = time.monotonic()
    first, out, statuses = compare(c, "original", f"run:{finished_run}", "The state of our union is", 12, False,
                                   0.8, 0.95, 0, 0)
    studio.timings["compare job, demo vs a run, 12 tokens (s)"] = time.monotonic() - t0
    assert "waiting for the worker" in statuses[0] and first[1] == "" and first[2] == ""   # nothing computed yet
    status, text_a, text_b, agreement, position, top = out[:6]
    metrics = first[6]                                                     # from the runs table, shown at once
    assert "msg-ok" in status and "Top-1 agreement" in status, statuses[-3:]
    assert text_a and text_b
    tokens = [t for t in agreement if t["class_or_confidence"] in ("agree", "differ")]
    assert len(tokens) == 12 and agreement[0]["token"] == "The state of our union is"
    fig = figure(top)
    assert len(fig["data"]) == 2 and len(fig["data"][0]["x"]) == 5       # top-5 of both models
    assert sum(fig["data"][0]["x"]) <= 1.0 + 1e-6
    later = figure(c.predict(5, api_name="/compare_position"))
    assert later["layout"]["title"]["text"] != fig["layout"]["title"]["text"]
    rows = {r[0]: r for r in metrics["data"]}
    assert "perplexity" in rows and rows["perplexity"][1] and rows["perplexity"][2]
    assert float(rows["active params"][3]) < 1.0                           # the run is smaller


def test_same_model_twice_agrees_everywhere(studio):
    c = studio.client()
    open_demo(c)
    _, out, _ = compare(c, "original", "original", "The economy", 8, True, 0.9, 0.95, 0, 7)
    assert out[1] and out[1] == out[2]                                     # same weights, same seed
    assert "Top-1 agreement 100%" in out[0]


def test_a_refusal_from_the_worker_is_shown(studio):
    c = studio.client()
    open_demo(c)
    _, out, statuses = compare(c, "original", "original", "   ", 4, False, 0.8, 0.95, 0, 0)
    assert "msg-error" in out[0] and "prompt is empty" in out[0], statuses[-3:]


def test_compare_refuses_unknown_runs(studio):
    c = studio.client()
    open_demo(c)
    out = c.predict("original", "run:99999", "x", 4, False, 0.8, 0.95, 0, 0, api_name="/compare")
    assert "msg-error" in out[0] and "does not exist" in out[0]           # refused before anything is queued
    out = c.predict("original", "../../etc", "x", 4, False, 0.8, 0.95, 0, 0, api_name="/compare")
    assert "msg-error" in out[0] and "choose the original or a finished run" in out[0]


def test_download_zip_by_run_id_loads_in_transformers(studio, finished_run, tmp_path):
    """The data folder lies outside the studio's working directory and temp folder (tests/ui/conftest.py), so the
    zip is served only through app.py's `allowed_paths` (item 6: the Docker layout, MOE_STUDIO_HOME=/data)."""
    from tests.ui.conftest import REPO
    assert not studio.home.is_relative_to(REPO) and not (studio.home / "artifacts").is_relative_to(studio.home / "tmp")
    c = studio.client()
    choice = c.predict(None, api_name="/download_choices")
    assert finished_run in [v for _, v in choice["choices"]]
    status, button = c.predict(finished_run, api_name="/download_zip")
    assert f"run-{finished_run}.zip is ready" in status
    path = button["value"] if isinstance(button, dict) else button
    assert (studio.home / "artifacts" / str(finished_run) / f"run-{finished_run}.zip").is_file()
    assert not Path(path).is_relative_to(studio.home)          # fetched over HTTP by gradio_client
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert f"run-{finished_run}/recipe.yaml" in names and f"run-{finished_run}/metrics.json" in names
        zf.extractall(tmp_path)
    ckpt = tmp_path / f"run-{finished_run}" / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok("The state of our union is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    status, _ = c.predict(123456, api_name="/download_zip")
    assert "msg-error" in status and "does not exist" in status


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1; rm -rf /"])
def test_download_takes_run_ids_only(studio, bad):
    status, _ = studio.client().predict(bad, api_name="/download_zip")
    assert "msg-error" in status


def test_compare_refuses_two_sides_of_different_base_models(studio, workbench):
    """Issue 27: the demo's original against a run of another model was compared silently (a green 'Top-1
    agreement 0%', a blank perplexity, B / A 26.7). It is refused before anything is queued, naming both models."""
    c = studio.client()
    open_demo(c)
    out = c.predict("original", f"run:{workbench.other}", "x", 4, False, 0.8, 0.95, 0, 0, api_name="/compare")
    assert "msg-error" in out[0] and "not the same base model" in out[0], out[0]
    assert "comes from demo" in out[0] and "other-moe" in out[0]
    out = c.predict(f"run:{workbench.narrow}", f"run:{workbench.other}", "x", 4, False, 0.8, 0.95, 0, 0,
                    api_name="/compare")
    assert "msg-error" in out[0] and "other weights" in out[0], out[0]
    _, out, _ = compare(c, "original", f"run:{workbench.narrow}", "The economy", 4, False, 0.8, 0.95, 0, 0)
    assert "msg-ok" in out[0]                                          # a run against its own original still runs
