"""Recovery % per task, hand-checked values."""
import math

import pytest

from compressor.evaluate.recovery import recovery_pct, recovery_table, render_recovery, task_recovery


def test_recovery_pct_both_directions():
    assert recovery_pct(0.5, 0.45) == pytest.approx(90.0)
    assert recovery_pct(20.0, 25.0, higher_is_better=False) == pytest.approx(80.0)   # perplexity 20 -> 25


def test_mean_and_sample_sd_over_seeds():
    r = task_recovery("sotu_cloze", original=0.5, compressed=[0.45, 0.40, 0.35])
    assert r.per_seed == pytest.approx((90.0, 80.0, 70.0))
    assert r.mean == pytest.approx(80.0) and r.sd == pytest.approx(10.0) and r.n == 3
    one = task_recovery("sotu_cloze", original=0.4, compressed=0.3)
    assert one.mean == pytest.approx(75.0) and one.sd == 0.0 and one.n == 1


def test_table_keeps_kinds_apart_and_inverts_perplexity():
    rows = recovery_table({"gsm8k": 0.2, "arc_easy": 0.6, "perplexity": 10.0},
                          [{"gsm8k": 0.1, "arc_easy": 0.54, "perplexity": 12.5},
                           {"gsm8k": 0.15, "arc_easy": 0.48, "perplexity": 10.0}],
                          metrics={"perplexity": "perplexity"})
    assert [(r.task, r.kind) for r in rows] == [("arc_easy", "multiple_choice"), ("gsm8k", "generative"),
                                                 ("perplexity", "perplexity")]
    arc, gsm, ppl = rows
    assert arc.mean == pytest.approx(85.0) and arc.sd == pytest.approx(math.sqrt(50.0))
    assert gsm.per_seed == pytest.approx((50.0, 75.0))
    assert ppl.per_seed == pytest.approx((80.0, 100.0))
    text = render_recovery(rows)
    assert "| arc_easy | multiple_choice | acc | 0.6 | 0.54, 0.48 | 85.0 ± 7.1 (n=2) |" in text


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="positive reference"):
        recovery_pct(0.0, 0.3)
    with pytest.raises(ValueError, match="missing from some seeds"):
        recovery_table({"a": 0.5, "b": 0.5}, [{"a": 0.4}])
    with pytest.raises(ValueError, match="no compressed"):
        task_recovery("a", original=0.5, compressed=[])
