"""Explore tab over HTTP: scores are computed by a queued job (polled), then drawn; the second time they come from
the cache. Figures carry the real numbers (frequency rows sum to top-k)."""
import time

import pytest

from tests.ui.studio import explore_args, figure, open_demo

# settings no other test uses, so the first call always runs the analysis job (the browser test uses the defaults)
SETTINGS = dict(tokens=768, seq_len=128)


def _args(**kw):
    return explore_args(**SETTINGS, **kw)



@pytest.fixture(scope="module")
def analysed(studio):
    c = studio.client()
    open_demo(c)
    out = c.predict(*_args(), api_name="/analyze")
    statuses = [out[0]]
    t0 = time.monotonic()
    while "finished" not in out[0] and "from the cache" not in out[0]:
        assert "msg-error" not in out[0], out[0]
        assert time.monotonic() - t0 < 180, statuses[-3:]
        time.sleep(0.5)
        out = c.predict(*_args()[3:], api_name="/explore_poll")
        statuses.append(out[0])
    studio.timings["explore analysis job, demo, 768 tokens (s)"] = time.monotonic() - t0
    return c, out, statuses


def test_analysis_runs_as_a_job_with_visible_progress(analysed):
    _, out, statuses = analysed
    assert "Analysis of demo queued" in statuses[0]
    assert any("Analysing" in s for s in statuses[1:-1])          # progress shown while the job runs
    assert "Analysis finished" in statuses[-1]


def test_figures_hold_the_scores(analysed):
    c, out, _ = analysed
    # outputs: status, timer, heatmap, layers, balance, neurons, then the controls
    heat = figure(out[2])["data"][0]
    assert len(heat["y"]) == 4 and len(heat["x"]) == 8             # demo: 4 MoE layers x 8 experts
    assert len(heat["z"]) == 4 and len(heat["z"][0]) == 8 and "reap" in heat["hovertemplate"]
    freq = figure(c.predict(*_args(score="frequency")[3:], api_name="/explore_heatmap"))["data"][0]
    for row in freq["z"]:
        assert sum(row) == pytest.approx(2.0, abs=1e-6)            # top-2: each token goes to two experts
    layers = figure(out[3])
    assert [t["name"] for t in layers["data"]] == ["block influence", "DLP score"]
    assert len(layers["data"][0]["y"]) == 4
    balance = figure(out[4])
    assert len(balance["data"]) == 4 and any(a["text"] == "uniform" for a in balance["layout"]["annotations"])
    for trace in balance["data"]:
        assert sum(trace["y"]) == pytest.approx(1.0)               # shares of the routed tokens
    neurons = figure(c.predict(*_args(n_layer="0", n_expert=3, n_score="activation")[3:],
                               api_name="/explore_neurons"))
    assert "expert 3 in layer 0" in neurons["layout"]["title"]["text"]
    assert len(neurons["data"][0]["x"]) == 384                     # one value per neuron of the demo's experts


def test_second_time_scores_come_from_the_cache(analysed, studio):
    c = studio.client()
    open_demo(c)
    t0 = time.monotonic()
    out = c.predict(*_args(), api_name="/analyze")
    studio.timings["explore from cache, demo (s)"] = time.monotonic() - t0
    assert "from the cache" in out[0], out[0]
    assert len(figure(out[2])["data"][0]["z"]) == 4


def test_analysis_without_a_model_says_so(studio):
    out = studio.client().predict(*_args(), api_name="/analyze")
    assert "Open a model first" in out[0]
