"""Runs' "Open #N in Compress" carries the run's model (issue 27, item 3): a run of another model opens that model in
tab 1 (under the name Runs lists it by) and its recipe waits for Compress's model change, which puts it in the form
within the new model's ranges; a run of the open model fills the form at once."""
from types import SimpleNamespace

from compressor.recipe import Recipe
from ui import compress, open_run, services
from ui.services import OpenedModel

N = compress.N_CONTROLS
MIXTRAL = {"family": "mixtral", "num_experts": 4, "top_k": 2, "num_layers": 3, "params_total": 1_000_000,
           "params_active": 600_000, "expert_intermediate_size": 64, "hidden_size": 32, "vocab_size": 100,
           "moe_layers": [0, 1, 2]}
DEMO = {"source": "demo", "label": "demo", "model_id": 1, "fingerprint": "d",
        "summary": {**MIXTRAL, "family": "qwen3_moe", "num_experts": 8, "num_layers": 4}}


def _patch(monkeypatch, recipe: Recipe):
    monkeypatch.setattr(services, "get_run", lambda rid: SimpleNamespace(id=rid, recipe=recipe.to_dict()))
    monkeypatch.setattr(services, "open_model", lambda src: OpenedModel(
        source=src, label="cache-sha-name", summary=MIXTRAL, fingerprint="m", model_id=2))
    monkeypatch.setattr(open_run.catalog, "labels_by_source", lambda: {"/up/mix": "mixtral-tiny"})
    monkeypatch.setattr(services, "allowed_source", lambda src, **kw: src)      # the roots rule is tested elsewhere


def test_a_run_of_another_model_opens_that_model_and_its_recipe_waits_for_it(monkeypatch):
    recipe = Recipe.parse({"model": "/up/mix", "slimming": {"expert_keep_ratio": 0.25, "experts_keep": 3,
                                                            "layers_drop": 1}})
    _patch(monkeypatch, recipe)
    out = open_run.open_run(7, DEMO)
    status, parent, _, model_status, _, state, pending = out[N:]
    assert all(v == out[0] for v in out[:N])                         # the form is not touched yet (all skips)
    assert state["source"] == "/up/mix" and state["label"] == "mixtral-tiny" and parent == 7
    assert "mixtral-tiny" in model_status and "run #7" in model_status and "mixtral-tiny" in status
    done = compress.on_model(state, pending, *[None] * N)           # the model change that follows
    keep, drop = done[2], done[4]
    assert done[0] == 0.25 and keep["value"] == 3 and keep["maximum"] == 4 and drop["value"] == 1
    assert "run #7" in done[N] and "made for" not in done[N]
    assert done[N + 3] is None                                       # pending consumed; parent kept (a skip)


def test_a_run_of_the_open_model_fills_the_form_at_once(monkeypatch):
    recipe = Recipe.parse({"model": "demo", "slimming": {"expert_keep_ratio": 0.75}})
    _patch(monkeypatch, recipe)
    out = open_run.open_run(3, DEMO)
    assert out[0] == 0.75 and out[2]["value"] == 8 and "run #3" in out[N] and out[N + 1] == 3
    assert out[N + 6] is None                                        # nothing pending
