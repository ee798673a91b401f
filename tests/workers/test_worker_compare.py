"""Compare's side-by-side generation as a worker job (workers.compare_job): the Comparison survives the JSON result
backend, a real worker process on the Redis at 127.0.0.1:6379 (db 15) and PostgreSQL gives what the library gives
in-process, a refusal in the worker comes back as its message, and the studio's web process, with every way of
loading weights made to raise, still shows a comparison because the worker computed it."""
from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest
import torch

from compressor.compare import Comparison, DecodeSettings, compare_models
from compressor.testing import char_tokenizer, tiny_moe
from storage import artifacts, db, repo
from tests.storage.databases import flushed_test_redis, postgres_schema_url, studio_env
from tests.workers.cluster import WorkerCluster, wait_for
from workers.compare_job import compare_state, send_compare

PROMPT = "The state of our union is"
GREEDY = DecodeSettings(max_new_tokens=10)


def test_a_comparison_round_trips_through_json():
    a, b = tiny_moe("qwen3_moe", seed=0), tiny_moe("qwen3_moe", seed=5)
    cmp = compare_models(a, b, char_tokenizer(), "moe", settings=DecodeSettings(max_new_tokens=5))
    back = Comparison.from_dict(json.loads(json.dumps(cmp.to_dict())))
    assert len(back.steps) == 5 and isinstance(back.steps[0].top_a[0], tuple)
    assert back == cmp and back.agreement_rate == cmp.agreement_rate
    sampled = DecodeSettings(max_new_tokens=7, do_sample=True, temperature=0.7, top_p=0.9, top_k=4, seed=3)
    assert DecodeSettings.from_dict(json.loads(json.dumps(sampled.to_dict()))) == sampled
    with pytest.raises(ValueError, match="temperature"):
        DecodeSettings.from_dict({"temperature": 0})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, other_model):
    """One real worker on the test Redis and a private PostgreSQL schema, with a private queue; its model roots hold
    the second checkpoint (the worker checks every source against them before it loads it)."""
    home = tmp_path_factory.mktemp("compare")
    roots = os.pathsep.join([str(home), str(other_model[0].parent)])
    with postgres_schema_url() as db_url, studio_env(home, DATABASE_URL=db_url, REDIS_URL=flushed_test_redis(),
                                                     MOE_STUDIO_QUEUE=f"test-{uuid.uuid4().hex[:8]}",
                                                     MOE_STUDIO_MODEL_ROOTS=roots):
        db.init_db()
        with WorkerCluster(n=1) as workers:
            yield workers


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """The demo model with its first layer's expert weights (one fused tensor) scaled 3x: a second checkpoint whose
    greedy continuation of PROMPT differs from the demo's."""
    from compressor.sources import load_model

    loaded = load_model("demo")
    with torch.no_grad():
        next(p for n, p in loaded.model.named_parameters() if "experts" in n).mul_(3.0)
    out = tmp_path_factory.mktemp("other") / "model"
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out, loaded


def _finished(task_id: str, *, seen: list[str] | None = None) -> dict:
    def ended():
        st = compare_state(task_id)
        if seen is not None:
            seen.append(st["state"])
        return st if st["state"] in ("SUCCESS", "FAILURE") else None
    return wait_for(ended, timeout=180, interval=0.1, what="the comparison job")


def test_the_worker_gives_what_the_library_gives(cluster, other_model):
    folder, other = other_model
    seen: list[str] = []
    st = _finished(send_compare("demo", str(folder), PROMPT, GREEDY), seen=seen)
    assert st["state"] == "SUCCESS", st["error"]
    got = Comparison.from_dict(st["result"])
    from compressor.sources import load_model
    demo = load_model("demo")
    want = compare_models(demo.model, other.model, demo.tokenizer, PROMPT, settings=GREEDY)
    assert got.a.token_ids == want.a.token_ids and got.b.token_ids == want.b.token_ids
    assert [s.agree for s in got.steps] == [s.agree for s in want.steps] and len(got.steps) == 10
    for g, w in zip(got.steps, want.steps):
        assert [t for t, _ in g.top_b] == [t for t, _ in w.top_b]
        assert [p for _, p in g.top_b] == pytest.approx([p for _, p in w.top_b], abs=1e-5)
    assert got.a.token_ids != got.b.token_ids                                  # B really is another model
    assert "SUCCESS" in seen and st["result"]["seconds"] > 0


def test_a_refusal_in_the_worker_comes_back_as_its_message(cluster):
    st = _finished(send_compare("demo", "demo", "   ", GREEDY))
    assert st["state"] == "FAILURE" and st["error"].startswith("the prompt is empty"), st


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finished_run(folder) -> int:
    """A succeeded run row whose checkpoint is `folder`'s model (what a worker leaves behind)."""
    import shutil
    run_id = repo.create_run({"model": "demo"}, name="compare me")
    token = repo.mark_started(run_id, worker="test", pid=1)
    shutil.copytree(folder, artifacts.run_dir(run_id) / "checkpoint")
    assert repo.mark_succeeded(run_id, token, metrics={}, stages=[], artifacts=[])
    return run_id


@pytest.fixture
def weightless_web_process(monkeypatch):
    """Every way this process could load a model's weights raises, and is counted."""
    import transformers
    import compressor.sources as sources
    calls: list[str] = []

    def refuse(what):
        def raiser(*args, **kwargs):
            calls.append(what)
            raise AssertionError(f"the web process called {what}")
        return raiser
    monkeypatch.setattr(sources, "load_model", refuse("compressor.sources.load_model"))
    monkeypatch.setattr(sources, "_load_weights", refuse("compressor.sources._load_weights"))
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained",
                        classmethod(refuse("PreTrainedModel.from_pretrained")))
    return calls


def test_the_web_process_loads_no_weights_for_compare(cluster, other_model, weightless_web_process):
    import app
    from gradio_client import Client
    from tests.ui.studio import open_demo

    run_id = _finished_run(other_model[0])
    demo = app.build_app()
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, block=False)
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        open_demo(c)                                          # described from headers, in a child process
        out = c.predict("original", f"run:{run_id}", PROMPT, 10, False, 0.8, 0.95, 0, 0, api_name="/compare")
        assert "waiting for the worker" in out[0] and out[1] == "", out[0]
        t0 = time.monotonic()
        while "msg-info" in out[0]:
            assert time.monotonic() - t0 < 180, out[0]
            time.sleep(0.25)
            out = c.predict(api_name="/compare_poll")
        assert "msg-ok" in out[0] and "Top-1 agreement" in out[0], out[0]
        assert out[1] and out[2] and out[1] != out[2]
    finally:
        demo.close()
    assert weightless_web_process == []
