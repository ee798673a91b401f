"""Explore never shows one model's scores under another's status (issue 27, item 8)."""
from ui import explore


def test_explore_clears_the_previous_models_figures_while_the_new_one_has_no_scores(monkeypatch):
    """Issue 27, item 8: the previous model's heatmap stayed, unmarked, through the new model's analysis."""
    model = {"source": "/m/mix", "label": "mixtral-tiny", "model_id": 2}
    monkeypatch.setattr(explore.services, "cached_scores_dir", lambda source, settings: None)
    monkeypatch.setattr(explore.services, "start_analysis", lambda model_id, settings: "task-1")
    monkeypatch.setattr(explore.services, "active_analysis", lambda model_id, settings: None)
    for start, text in ((True, "analysing mixtral-tiny"), (False, "no scores of mixtral-tiny")):
        out = explore.load_or_start(model, 1024, 256, True, "reap", 0, None, 0, "taylor", 0.5, start=start)
        heatmap = out[3]
        assert text in str(heatmap.to_dict()), out[0]
