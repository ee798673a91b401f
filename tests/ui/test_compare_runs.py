"""Compare N runs without a server: metrics beside the original's, the recipe diff has only the fields that differ,
runs of different base models are refused, loss curves are overlaid per stage with smoothing and a log axis."""
from types import SimpleNamespace

import pytest

from ui import figures
from ui.compare_runs import check_same_model, metrics_frame, recipe_diff


def _run(i, *, model="demo", keep=0.5, steps=10, ppl=90.0, status="succeeded", stages=None, **extra):
    recipe = {"model": model, "seed": 0, "slimming": {"expert_keep_ratio": keep, "experts_keep": None},
              "distill": {"steps": steps, "lr": 3e-4}, **extra}
    metrics = {"perplexity": ppl, "baseline_perplexity": 80.0, "params_active": 3e6 * keep,
               "baseline_params_active": 6e6, "checkpoint_bytes": 10e6,
               "evaluation": {"lm_eval": {"tasks": {"sotu_cloze": {"model": {"acc": 0.5 + keep / 10},
                                                                   "baseline": {"acc": 0.7}}}}}}
    return SimpleNamespace(id=i, name=f"keep {keep}", status=status, recipe=recipe, metrics=metrics,
                           stages=stages or [], started_at=None, finished_at=None, heartbeat_at=None)


def test_recipe_diff_lists_only_the_fields_that_differ():
    a, b, c = _run(1, keep=0.5), _run(2, keep=0.25), _run(3, keep=0.5, steps=20, quantize={"scheme": "W8A16"})
    diff = recipe_diff([a, b, c])
    assert diff.columns.tolist() == ["field", "#1 · keep 0.5", "#2 · keep 0.25", "#3 · keep 0.5"]
    rows = {r[0]: r[1:] for r in diff.values.tolist()}
    assert rows == {"slimming.expert_keep_ratio": ["0.5", "0.25", "0.5"], "distill.steps": ["10", "10", "20"],
                    "quantize.scheme": ["(absent)", "(absent)", "W8A16"]}
    assert recipe_diff([a, _run(4, keep=0.5)]).empty                       # same recipe: nothing differs


def test_metrics_side_by_side_with_the_original():
    frame = metrics_frame([_run(1, keep=0.5, ppl=95.0), _run(2, keep=0.25, ppl=130.0)])
    rows = {r[0]: r[1:] for r in frame.values.tolist()}
    assert rows["perplexity"] == ["80.000", "95.000", "130.000"]
    assert rows["active params"] == ["6 M", "1.5 M", "750 K"]
    assert rows["lm-eval sotu_cloze"] == ["0.700", "0.550", "0.525"]
    assert "decode tokens/s" not in rows                                   # no run measured it: no row


def test_runs_of_different_models_or_unfinished_runs_are_refused(db_url):
    with pytest.raises(ValueError, match="different base models"):
        check_same_model([_run(1), _run(2, model="org/other")])
    with pytest.raises(ValueError, match="did not succeed"):
        check_same_model([_run(1), _run(2, status="failed")])
    with pytest.raises(ValueError, match="at least two"):
        check_same_model([_run(1)])
    check_same_model([_run(1), _run(2, keep=0.25)])


def test_smoothing_and_overlaid_loss_curves_with_stage_starts():
    assert figures.smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert figures.smooth([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])      # debiased: no pull to 0
    s = figures.smooth([0.0, 10.0], 0.5)
    assert s == pytest.approx([0.0, (0.5 * 0.0 * 0.5 + 0.5 * 10.0) / 0.75])
    curves = {"#1": ([(1, 3.0), (2, 2.0), (3, 5.0), (4, 4.0)], [3]), "#2": ([(1, 2.5), (2, 2.4)], [])}
    fig = figures.loss_curves(curves, smoothing=0.5, log_y=True)
    one, two = fig.data
    assert one.name == "#1" and list(one.x) == [1, 2, None, 3, 4]       # a gap at the stage start
    assert one.y[3] == 5.0                                             # the new stage's smoothing starts afresh
    assert list(two.x) == [1, 2] and fig.layout.yaxis.type == "log"
    assert [s.x0 for s in fig.layout.shapes] == [3]
    assert "no loss" in figures.loss_curves({"#1": ([], [])}).layout.annotations[0].text


def test_a_runs_loss_points_count_steps_over_stages_and_mark_where_each_stage_starts():
    from ui.run_view import loss_points
    stages = [{"stage": "stage 1/2", "distill": {"steps": 3, "losses": [3.0, 2.0, 1.5]}},
              {"stage": "stage 2/2", "distill": {"steps": 2, "losses": [2.5, 1.0]}}]
    points, starts = loss_points(_run(1, stages=stages))
    assert points == [(1, 3.0), (2, 2.0), (3, 1.5), (4, 2.5), (5, 1.0)] and starts == [4]
    old = [{"distill": {"steps": 4, "first_loss": 3.0, "last_loss": 1.0}},       # before per-step losses
           {"distill": {"steps": 4, "first_loss": 2.0, "last_loss": 0.5}}]
    assert loss_points(_run(2, stages=old)) == ([(1, 3.0), (4, 1.0), (5, 2.0), (8, 0.5)], [5])
    fig = figures.loss_curve(points, stages=starts)
    assert [s.x0 for s in fig.layout.shapes] == [4]
