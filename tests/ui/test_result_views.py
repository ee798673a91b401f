"""How a run's result reads wherever it is shown, without a server (issue 24's UI, issue 27 items 7 and 10): a merge
run's method and groups in Runs, the run view, the N-run compare and Download; speed-ups with the range of their
rounds and 'within noise' where that range holds 1.0 or two runs' ranges overlap (Compare, N-run compare with its
prefill row, Runs, Download); Compare's rows named and formatted for people; Pareto labels of runs drawn at one
point merged instead of printed over each other."""
from types import SimpleNamespace

import pandas as pd

from ui import compare, compare_runs, download, figures, run_table, run_view, services
from ui.result_text import overlap, ratio_text, speed_text

RECIPE = {"model": "demo", "stages": 1, "slimming": {"expert_keep_ratio": 1.0, "experts_keep": 4,
                                                     "expert_merge": "ream", "merge_group_size": 3}}


def _merge_stage() -> dict:
    """A stage as the pipeline stores it, with the library's own merge report."""
    from compressor.inspect import ParamCount
    from compressor.slimming.config import ExpertMergeConfig
    from compressor.slimming.report import ExpertMergeReport
    report = ExpertMergeReport(params_before=ParamCount(100, 50), params_after=ParamCount(60, 50), seconds=1.0,
                               config=ExpertMergeConfig(experts_keep=4, group_size=3), experts_before=8,
                               experts_after=4, groups={0: [[5, 2, 7], [1, 0], [3, 6], [4]]},
                               similarity={0: [0.81, 0.7, 0.9, 1.0]}, weights={0: [[0.5, 0.3, 0.2], [0.6, 0.4],
                                                                                   [0.5, 0.5], [1.0]]})
    return {"stage": "stage 1/1", "index": 1, "slimming": {"operations": [report.to_dict()]}}


def _speed(prefill, prefill_range, decode, decode_range) -> dict:
    return {"evaluation": {"speed": {"prefill_speedup": prefill, "prefill_speedup_range": prefill_range,
                                     "decode_speedup": decode, "decode_speedup_range": decode_range,
                                     "prefill_tokens_per_s": 2000.0, "decode_tokens_per_s": 30.0,
                                     "baseline_prefill_tokens_per_s": 1800.0, "baseline_decode_tokens_per_s": 40.0,
                                     "settings": {"kernel": "eager/float32", "same_kernel": True}}}}


def _run(i, *, recipe=None, metrics=None, stages=None, name=""):
    metrics = {"perplexity": 95.0, "baseline_perplexity": 80.0, "params_active": 3e6, "baseline_params_active": 6e6,
               "params_total": 13_140_000, "checkpoint_bytes": 13_140_000, **(metrics or {})}
    return SimpleNamespace(id=i, name=name, status="succeeded", recipe=recipe or {"model": "demo"}, metrics=metrics,
                           stages=stages or [], started_at=None, finished_at=None, heartbeat_at=None, progress=1.0,
                           parent_run_id=None, tokens_per_s=None, error=None, stage="", message="")


def test_a_merge_runs_method_and_groups_are_shown(monkeypatch):
    run = _run(5, recipe=RECIPE, stages=[_merge_stage()])
    assert "4 experts (REAM merge)" in run_table.settings_text(RECIPE)          # Runs' settings column
    head = run_view.head_html(run, [run])
    assert "REAM, 8 → 4 experts per layer" in head and "layer 0: {5 ← 2 7 · 0.81} {1 ← 0 · 0.70}" in head
    monkeypatch.setattr(services, "get_run", lambda rid: run)
    monkeypatch.setattr(services, "checkpoint_artifact", lambda rid: None)
    info = download.describe(5)[1]
    assert "REAM merge" in info and "{3 ← 6 · 0.90}" in info
    frame = compare_runs.metrics_frame([run, _run(6)])
    rows = {r[0]: r[1:] for r in frame.values.tolist()}
    assert rows["expert merge"][1:] == ["REAM merge, 8 → 4 experts per layer", "pruned / none"]


def test_speed_ups_carry_their_range_and_say_when_they_are_noise():
    noisy, clear = _speed(0.98, [0.7, 1.3], 0.39, [0.3, 1.4]), _speed(1.32, [1.2, 1.45], 0.7, [0.6, 0.8])
    r_noisy, r_clear = run_table.RunResult.read(noisy), run_table.RunResult.read(clear)
    assert speed_text(r_noisy.speed, "decode") == "0.39x (0.30–1.40), within noise"
    assert speed_text(r_clear.speed, "prefill") == "1.32x (1.20–1.45)"
    assert overlap((0.7, 1.3), (1.2, 1.45)) and not overlap((0.6, 0.8), (0.9, 1.0))
    assert ratio_text(r_noisy.speed, r_clear.speed, "prefill").endswith("within noise")
    assert "within noise" not in ratio_text(r_clear.speed, r_clear.speed.model_copy(update={
        "decode_speedup": 2.0, "decode_speedup_range": (1.9, 2.1)}), "decode")
    assert "decode 0.39x (0.30–1.40), within noise" in run_view.extras_text(noisy)             # Runs' run head
    card = download.headline_card(noisy)
    assert "0.39x" in card and "(0.30–1.40), within noise" in card                            # Download


def test_the_n_run_compare_has_the_prefill_rows_with_ranges():
    a, b = _run(1, metrics=_speed(0.98, [0.7, 1.3], 0.39, [0.3, 1.4])), _run(2, metrics=_speed(1.32, [0.9, 1.45],
                                                                                                  0.7, [0.5, 1.1]))
    rows = {r[0]: r[1:] for r in compare_runs.metrics_frame([a, b]).values.tolist()}
    assert rows["prefill tokens/s"] == ["1,800", "2,000", "2,000"]
    prefill = next(k for k in rows if k.startswith("prefill speed-up"))
    assert "runs within noise of each other" in prefill
    assert rows[prefill] == ["1.00x", "0.98x (0.70–1.30), within noise", "1.32x (0.90–1.45), within noise"]


def test_compare_names_its_rows_and_formats_numbers_for_people(monkeypatch):
    a = _run(1, metrics={**_speed(0.98, [0.7, 1.3], 0.39, [0.3, 1.4]), "top1_agreement": 0.9123})
    b = _run(2, metrics={**_speed(1.32, [1.2, 1.45], 0.7, [0.6, 0.8]), "checkpoint_bytes": 6_570_000})
    monkeypatch.setattr(services, "get_run", lambda rid: {1: a, 2: b}[rid])
    frame = compare.metrics_frame("run:1", "run:2", {"source": "demo", "summary": {}})
    rows = {r[0]: r[1:] for r in frame.values.tolist()}
    text = frame.to_string()
    assert "e+0" not in text and "params_active" not in text and "checkpoint_bytes" not in text
    assert rows["checkpoint size"][:2] == ["12.5 MB", "6.27 MB"] and rows["total params"][0] == "13.1 M"
    assert rows["top-1 agreement with the original"][0] == "91.2%"
    prefill = rows["prefill speed-up over the original (range of rounds)"]
    assert prefill[0] == "0.98x (0.70–1.30), within noise" and prefill[2].endswith("within noise")


def test_runs_drawn_at_one_point_share_one_label():
    pts = [{"run_id": 3, "params_active": 3e6, "perplexity": 95.0, "label": "4 experts"},
           {"run_id": 7, "params_active": 3e6, "perplexity": 95.2, "label": "4 experts · W8A16"},
           {"run_id": 9, "params_active": 1.5e6, "perplexity": 140.0, "label": "2 experts"}]
    original = {"params_active": 6e6, "perplexity": 80.0}
    assert figures.point_labels(pts, original) == ["#3 · #7", "", "#9"]
    fig = figures.pareto(pts, original=original)
    runs = next(t for t in fig.data if t.name == "runs")
    assert list(runs.text) == ["#3 · #7", "", "#9"] and [c[0] for c in runs.customdata] == ["#3", "#7", "#9"]
    assert isinstance(compare_runs.metrics_frame([_run(1), _run(2)]), pd.DataFrame)
