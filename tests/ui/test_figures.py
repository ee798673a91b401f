"""ui.figures from small hand-made tables: what is drawn, where, and what hovering shows."""
import pandas as pd
import pytest

from ui import figures


@pytest.fixture
def experts():
    # 2 MoE layers (ids 1 and 3) x 4 experts; tokens per layer sum to 2 * 10 (top-2 of 10 tokens)
    rows = []
    for layer, tokens in ((1, [8, 6, 4, 2]), (3, [5, 5, 5, 5])):
        for e, t in enumerate(tokens):
            rows.append({"layer": layer, "expert": e, "tokens": t, "frequency": t / 10, "reap": 0.1 * (e + 1) + layer,
                         "man": 1.0, "taylor": 0.5})
    return pd.DataFrame(rows)


def test_heatmap_is_layer_by_expert_with_values_on_hover(experts):
    fig = figures.expert_heatmap(experts, "reap")
    hm = fig.data[0]
    assert list(hm.y) == ["L1", "L3"] and list(hm.x) == ["0", "1", "2", "3"]
    assert hm.z[0][2] == pytest.approx(1.3) and hm.z[1][0] == pytest.approx(3.1)
    assert hm.customdata[0][0] == 8                       # routed tokens shown on hover
    assert "reap = %{z" in hm.hovertemplate


def test_heatmap_of_a_missing_score_says_so(experts):
    fig = figures.expert_heatmap(experts.drop(columns="taylor"), "taylor")
    assert f"no {figures.SCORE_LABELS['taylor']} scores" in fig.layout.annotations[0].text   # the registry label


def test_load_balance_sorts_shares_and_reports_imbalance(experts):
    fig = figures.load_balance(experts)
    first = fig.data[0]
    assert list(first.y) == pytest.approx([0.4, 0.3, 0.2, 0.1])        # 8,6,4,2 of 20
    assert list(first.customdata) == [0, 1, 2, 3]
    assert "max/uniform 1.60" in first.name                           # 0.4 * 4 experts
    assert "max/uniform 1.00" in fig.data[1].name


def test_layer_importance_marks_the_dropped_layers():
    layers = pd.DataFrame({"layer": [0, 1, 2], "moe": [True, True, False], "block_influence": [0.3, 0.1, 0.2],
                           "dlp_score": [1.0, 2.0, 3.0]})
    fig = figures.layer_importance(layers, drop=2)
    colors = fig.data[0].marker.color
    assert colors[1] == figures.BAD and colors[2] == figures.BAD and colors[0] == figures.ACCENT
    assert list(fig.data[0].x) == ["L0", "L1", "L2 (dense)"]
    assert list(fig.data[1].y) == [1.0, 2.0, 3.0]


def test_neuron_cut_line_sits_at_the_kept_share():
    nr = pd.DataFrame({"layer": [0] * 4, "expert": [1] * 4, "neuron": range(4), "taylor": [4.0, 1.0, 3.0, 2.0]})
    fig = figures.neuron_distribution(nr, layer=0, expert=1, score="taylor", keep_ratio=0.5)
    line = [s for s in fig.layout.shapes if s.type == "line"][0]
    assert line.x0 == 3.0                                             # keep the top 2 of 4: cut at the 2nd best
    assert "keep 2/4" in fig.layout.annotations[0].text


def test_pareto_front_and_original():
    pts = [{"run_id": 1, "params_active": 10, "perplexity": 30.0},
           {"run_id": 2, "params_active": 20, "perplexity": 25.0},
           {"run_id": 3, "params_active": 30, "perplexity": 27.0}]
    fig = figures.pareto(pts, original={"params_active": 40, "perplexity": 20.0})
    front, runs, orig = fig.data
    assert list(front.x) == [10, 20]                                  # run 3 is dominated by run 2
    assert list(runs.text) == ["#1", "#2", "#3"]
    assert orig.marker.symbol == "star"


def test_top_tokens_and_loss_curve():
    fig = figures.top_tokens([("a", 0.5), ("b", 0.2)], [("b", 0.6), ("a", 0.1)], names=("A", "B"), context="x")
    assert list(fig.data[0].x) == [0.2, 0.5] and list(fig.data[1].x) == [0.1, 0.6]
    fig = figures.loss_curve([(1, 3.0), (2, 2.5)], stages=[2])
    assert list(fig.data[0].y) == [3.0, 2.5]
    assert "no loss" in figures.loss_curve([]).layout.annotations[0].text


MARKUP = '<a href="http://evil.example">x</a><span style="font-size:90px">big</span>%{x}'


def _texts(fig) -> str:
    """Every text plotly would draw or hover, as one string."""
    return fig.to_json()


def test_names_from_users_and_models_are_shown_as_text_never_as_markup():
    # Issue 28: a run named with <a href> or <span style> drew a link or restyled the legend.
    figs = [
        figures.loss_curves({MARKUP: ([(1, 2.0), (2, 1.5)], [])}),
        figures.pareto([{"run_id": 1, "params_active": 1e6, "perplexity": 9.0, "label": MARKUP}], original=None,
                       title=f"Size against quality · {MARKUP}"),
        figures.loss_curve([(1, 2.0)], title=MARKUP),
        figures.top_tokens([("<b>", 0.5)], [("x", 0.4)], names=(MARKUP, "b"), context=MARKUP),
        figures.metrics_bars([{"metric": "ppl", "a": 1.0, "b": 2.0}], names=(MARKUP, "<i>b</i>")),
    ]
    for fig in figs:
        text = _texts(fig)
        assert "<a href" not in text and "<span style" not in text and "<b>" not in text and "<i>" not in text, text
        assert "&lt;a href=" in text or "&lt;b&gt;" in text
    legend = figs[0].data[0]
    assert legend.name == figures.plain(MARKUP) and "%{x}" not in legend.hovertemplate.replace("step %{x}", "")
