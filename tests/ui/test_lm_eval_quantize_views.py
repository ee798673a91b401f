"""What Runs, Compare and Download show of a run's lm-eval figures and quantized checkpoint (pure functions over the
stored metrics)."""
from ui.download import headline_card
from ui.run_table import lm_eval_pairs
from ui.run_view import extras_text

METRICS = {"perplexity": 93.1, "baseline_perplexity": 89.5,
           "evaluation": {"lm_eval": {"backend": "hf", "tasks": {
               "sotu_cloze": {"model": {"acc": 0.61, "n": 200}, "baseline": {"acc": 0.66, "n": 200}}}}},
           "quantize": {"scheme": "W8A16", "checkpoint_bytes_before": 13_144_424, "checkpoint_bytes_after": 7_763_008}}


def test_lm_eval_beside_the_original_and_the_quantized_size():
    assert lm_eval_pairs(METRICS) == [("sotu_cloze", 0.61, 0.66)]
    line = extras_text(METRICS)
    assert "lm-eval sotu_cloze 0.610 (original 0.660)" in line and "W8A16 checkpoint 7.4 MB" in line
    card = headline_card(METRICS)
    assert "W8A16 checkpoint" in card and "from 12.5 MB unquantized" in card and "original 0.660" in card
    assert extras_text({"perplexity": 90.0}) == "" and lm_eval_pairs(None) == []
