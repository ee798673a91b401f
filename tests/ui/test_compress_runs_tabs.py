"""Compress and Runs tabs over HTTP: the live estimate follows the sliders (no job), the YAML is the recipe,
Enqueue shows the run in Runs at once, and cancel / re-run / delete act on it."""
import re
import time

import yaml

from compressor.recipe import Recipe
from tests.ui.studio import compress_args, open_demo, wait_run

PARAMS_ACTIVE = re.compile(r"params active</div><div class=\"v\">([^<]+)</div>")


def _estimate(client, **kw):
    t0 = time.perf_counter()
    html, text = client.predict(*compress_args(**kw), api_name="/estimate")[:2]      # then the residency note
    return html, text, time.perf_counter() - t0


def test_estimate_follows_the_sliders_and_the_yaml_is_the_recipe(studio):
    c = studio.client()
    open_demo(c)
    full, _, _ = _estimate(c, keep_ratio=1.0)
    half, text, latency = _estimate(c, keep_ratio=0.5, experts_keep=6, stages=2, steps=40)
    studio.timings["slider-to-estimate, server round trip (s)"] = latency
    assert "100%" in full and PARAMS_ACTIVE.search(full).group(1) != PARAMS_ACTIVE.search(half).group(1)
    assert "speed-up" in half and "x</div>" in half
    recipe = Recipe.parse(yaml.safe_load(text))
    assert recipe.model == "demo" and recipe.slimming.expert_keep_ratio == 0.5
    assert recipe.slimming.experts_keep == 6 and recipe.stages == 2 and recipe.distill.steps == 40
    assert yaml.safe_load(_estimate(c, experts_keep=8)[1])["slimming"]["experts_keep"] is None   # 8 of 8 = all


def test_lm_eval_tasks_and_quantize_go_into_the_recipe_and_the_estimate(studio):
    c = studio.client()
    open_demo(c)
    html, text, _ = _estimate(c, keep_ratio=0.5, lm_eval_tasks=["sotu_cloze"],
                              quantize="GPTQ experts W4A16 / attention W8A16")
    recipe = Recipe.parse(yaml.safe_load(text))
    assert recipe.evaluate.lm_eval.tasks == ["sotu_cloze"] and recipe.quantize.scheme == "W4A16"
    assert recipe.quantize.attention == "W8A16" and recipe.quantize.method == "gptq"
    assert "GPTQ W4A16, attention W8A16 checkpoint" in html
    assert Recipe.parse(yaml.safe_load(_estimate(c)[1])).quantize is None


def test_refused_settings_are_explained_in_the_estimate(studio):
    c = studio.client()
    open_demo(c)
    html, _, _ = _estimate(c, experts_keep=1)
    assert "msg-error" in html and "the router picks top-2, so keep at least 2" in html   # compressor/feasibility.py
    html, _, _ = _estimate(c, calib_tokens=100, calib_seq=256)
    assert "msg-error" in html and "calibration.tokens" in html
    status = c.predict("bad", *compress_args(experts_keep=1), api_name="/enqueue")
    assert "msg-error" in status and "so keep at least 2" in status        # refused before a run exists
    table = c.predict(None, api_name="/runs_refresh")[0]
    assert "bad" not in [r[2] for r in table["data"]]


def test_enqueue_shows_the_run_then_cancel_rerun_delete(studio):
    c = studio.client()
    open_demo(c)
    # a run that would take minutes: it is cancelled while queued or running
    status = c.predict("to cancel", *compress_args(keep_ratio=0.5, steps=300, stages=1, calib_tokens=512,
                                                   calib_seq=64, eval_tokens=512), api_name="/enqueue")
    run_id = int(re.search(r"Run #(\d+) queued", status).group(1))
    table = c.predict(run_id, api_name="/runs_refresh")[0]
    assert run_id in [r[1] for r in table["data"]]                  # listed at once
    out = c.predict(run_id, api_name="/cancel_run")
    assert "msg-ok" in out
    row = wait_run(c, run_id, timeout=90)
    assert "cancelled" in row["status"]
    head, _, recipe_text, log = c.predict(run_id, api_name="/run_detail")[:4]
    assert f"Run #{run_id}" in head and "cancelled" in head
    assert "expert_keep_ratio: 0.5" in recipe_text and "cancel" in log
    status, new_id = c.predict(run_id, api_name="/rerun")
    assert f"Run #{new_id} queued with the recipe of run #{run_id}" in status
    c.predict(new_id, api_name="/cancel_run")
    wait_run(c, new_id, timeout=90)
    question = c.predict(new_id, api_name="/ask_delete")[-1]
    assert f"Delete run #{new_id}" in question
    c.predict(run_id, api_name="/ask_delete")                        # asked again, now about the other run
    status = c.predict(api_name="/delete_run")[0]                    # deletes the run the question named
    assert f"Run #{run_id} deleted" in status
    table = c.predict(None, api_name="/runs_refresh")[0]
    assert run_id not in [r[1] for r in table["data"]] and new_id in [r[1] for r in table["data"]]
    gone = c.predict(run_id, api_name="/run_detail")[0]
    assert "msg-error" in gone and "does not exist" in gone


def test_finished_run_has_metrics_in_the_table(finished_run, studio):
    c = studio.client()
    table = c.predict(finished_run, api_name="/runs_refresh")
    row = {r[1]: dict(zip(table[0]["headers"], r)) for r in table[0]["data"]}[finished_run]
    assert "succeeded" in row["status"] and float(row["perplexity"]) > 1.0
    assert row["keep"] == "0.5" and row["model"] == "demo" and "1 stage" in row["settings"]
    pareto = table[8]
    assert pareto is None or pareto["type"] == "plotly"


def test_a_failing_run_shows_its_error(studio):
    """Two million evaluation tokens need more held-out text than the shipped corpus has (~0.3 M tokens): the
    pipeline refuses when it builds the evaluation windows, and Runs shows the run as failed with that message."""
    c = studio.client()
    open_demo(c)
    status = c.predict("too long", *compress_args(keep_ratio=0.5, steps=0, stages=1, calib_tokens=512,
                                                  calib_seq=64, eval_tokens=2_000_000), api_name="/enqueue")
    run_id = int(re.search(r"Run #(\d+) queued", status).group(1))
    row = wait_run(c, run_id, timeout=120)
    assert "failed" in row["status"]
    head, _, _, log = c.predict(run_id, api_name="/run_detail")[:4]
    assert "failed" in head and "ERROR:" in log and "Traceback" in log
