"""Sliders stay in range when the model changes (issue 27, item 2). Gradio checks a slider's value against the
range the session last gave it, so (a) an update that narrows a range also moves the value into it, and (b) no event
reads a slider while another event fired by the same trigger is changing that slider's range (the second would send
the old value against the new maximum: "Value 8 is greater than maximum value 4.")."""
from collections import defaultdict

import gradio as gr
import pandas as pd

import app
from ui import compress, explore


def _fired_together(demo) -> dict:
    """{trigger (block id, event): [fn]} of the events a user action or a state change starts at once."""
    fired = defaultdict(list)
    for fn in demo.fns.values():
        for target in fn.targets:
            fired[tuple(target)].append(fn)
    return fired


def test_no_event_reads_a_slider_whose_range_a_sibling_event_updates():
    demo = app.build_app()
    ranged = {b._id for b in demo.blocks.values() if isinstance(b, (gr.Slider, gr.Number))}
    races = []
    for trigger, fns in _fired_together(demo).items():
        for writer in fns:
            written = {b._id for b in writer.outputs} & ranged
            for reader in fns:
                read = written & {b._id for b in reader.inputs}
                if reader is not writer and read:
                    races.append(f"{writer.api_name} updates what {reader.api_name} reads on {trigger}")
    assert not races, races


def test_a_new_models_compress_sliders_get_range_and_value_together():
    small = {"summary": {"num_experts": 4, "top_k": 2, "num_layers": 3}, "source": "x", "label": "x"}
    keep, drop = compress.fit_ranges(small, experts_keep=8, layers_drop=3)
    assert (keep["minimum"], keep["maximum"], keep["value"]) == (2, 4, 4)
    assert (drop["maximum"], drop["value"]) == (2, 2)


def test_a_model_switch_shows_the_whole_model_and_clears_the_old_models_refusal():
    """Issue 27, item 8: the refusal / invalid-recipe box under Enqueue and the parent run were the old model's."""
    small = {"summary": {"num_experts": 4, "top_k": 2, "num_layers": 3}, "source": "x", "label": "x"}
    out = compress.on_model(small, None, *[None] * compress.N_CONTROLS)
    keep, drop = out[2], out[4]
    assert keep["value"] == 4 and keep["maximum"] == 4 and drop["value"] == 0
    status, parent, lineage, pending = out[compress.N_CONTROLS:]
    assert status == "" and parent is None and lineage == "" and pending is None


def test_explores_drop_slider_is_moved_into_the_smaller_models_range(monkeypatch):
    ex = pd.DataFrame({"layer": [0, 0, 1, 1], "expert": [0, 1, 0, 1], "reap": [1.0, 2.0, 3.0, 4.0]})
    ly = pd.DataFrame({"layer": [0, 1], "block_influence": [0.1, 0.2]})
    monkeypatch.setattr(explore.services, "score_frames", lambda d: {"experts": ex, "layers": ly})
    for name in ("expert_heatmap", "layer_importance", "load_balance"):
        monkeypatch.setattr(explore.figures, name, lambda *a, **k: None)
    out = explore._draw("scores", "reap", 8, None, 7, "taylor", 0.5)
    n_expert, drop = out[5], out[6]
    assert drop["maximum"] == 1 and drop["value"] == 1                     # was 8: out of the new range
    assert n_expert["maximum"] == 1 and n_expert["value"] == 1

