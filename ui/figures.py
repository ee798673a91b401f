"""Plotly figures of the studio, drawn from plain tables (pandas) and dicts: no torch, no I/O.

    fig = expert_heatmap(frames["experts"], "reap")          # layer x expert, values on hover
    fig = pareto(points, original={"params_active": 5.1e6, "perplexity": 31.2})

Plotly draws a subset of HTML in every text it shows (legend names, titles, tick labels, hover text): <a href>,
<span style>, <b>, <br>. Every string that comes from a user or a model (run names, model labels, tokens, the
prompt) goes through `plain` first, so it is shown as written and never rendered as markup.
"""
from __future__ import annotations

import html
import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from compressor import methods

ACCENT, MUTED, GOOD, BAD = "#4f46e5", "#94a3b8", "#059669", "#dc2626"
# Legends from the method registries (compressor/methods.py): experts first, neurons where the names differ.
SCORE_LABELS = {**{m.name: m.label for m in methods.NEURON_SCORES.values()},
                **{m.name: m.label for m in methods.EXPERT_SCORES.values()}}


def plain(text) -> str:
    """`text` as plotly shows it literally: & < > as entities, which plotly decodes only after it has found the
    tags. `plain("<b>x</b>")` -> "&lt;b&gt;x&lt;/b&gt;" (drawn as <b>x</b>, not as a bold x)."""
    return html.escape(str(text), quote=False)


def _layout(fig: go.Figure, *, title: str, height: int = 420, **kw) -> go.Figure:
    kw.setdefault("margin", {"l": 60, "r": 20, "t": 50, "b": 50})
    fig.update_layout(title={"text": title, "x": 0.01, "font": {"size": 15}}, template="plotly_white", height=height,
                      font={"size": 12}, hoverlabel={"font_size": 12}, **kw)
    return fig


def message_figure(text: str, *, height: int = 300) -> go.Figure:
    """An empty figure that says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#64748b"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title="", height=height)


# -- Explore ----------------------------------------------------------------------------------------------------------
def expert_heatmap(experts: pd.DataFrame, score: str) -> go.Figure:
    """Layer x expert heatmap of `score`; hover shows layer, expert, the score and the routed token count."""
    if score not in experts.columns:
        return message_figure(f"no {SCORE_LABELS.get(score, score)} scores in this analysis")
    z = experts.pivot(index="layer", columns="expert", values=score).sort_index()
    tokens = experts.pivot(index="layer", columns="expert", values="tokens").reindex(z.index)
    fig = go.Figure(go.Heatmap(
        z=z.values, x=[str(c) for c in z.columns], y=[f"L{i}" for i in z.index], customdata=tokens.values,
        colorscale="Viridis", colorbar={"title": {"text": score, "side": "right"}, "thickness": 14},
        hovertemplate="layer %{y} · expert %{x}<br>" + score + " = %{z:.4g}<br>routed tokens %{customdata}"
                      "<extra></extra>", xgap=1 if z.shape[1] <= 64 else 0, ygap=1))
    fig.update_xaxes(title="expert", type="category", tickangle=0,
                     dtick=1 if z.shape[1] <= 32 else 4)
    fig.update_yaxes(title="MoE layer", type="category", autorange="reversed")
    height = max(260, min(640, 90 + 34 * z.shape[0]))
    return _layout(fig, title=f"{SCORE_LABELS.get(score, score)} per layer and expert", height=height)


def layer_importance(layers: pd.DataFrame, *, drop: int = 0) -> go.Figure:
    """Block influence (1 - cos(h_in, h_out)) and the DLP layer score per decoder layer; the `drop` layers with the
    lowest block influence (those a layer drop removes) are drawn in red."""
    has_dlp = "dlp_score" in layers.columns
    fig = make_subplots(rows=1, cols=2 if has_dlp else 1, horizontal_spacing=0.12,
                        subplot_titles=["block influence (higher = keep)"] + (["DLP score (mean |W|·‖X‖)"]
                                                                              if has_dlp else []))
    labels = [f"L{i}" + ("" if moe else " (dense)") for i, moe in zip(layers["layer"], layers["moe"])]
    order = layers["block_influence"].rank(method="first").astype(int)
    colors = [BAD if r <= drop else ACCENT for r in order]
    fig.add_trace(go.Bar(x=labels, y=layers["block_influence"], marker_color=colors, name="block influence",
                         hovertemplate="%{x}<br>block influence %{y:.4f}<extra></extra>"), row=1, col=1)
    if has_dlp:
        fig.add_trace(go.Bar(x=labels, y=layers["dlp_score"], marker_color=GOOD, name="DLP score",
                             hovertemplate="%{x}<br>DLP score %{y:.4g}<extra></extra>"), row=1, col=2)
    title = "Per-layer importance" + (f" · red: the {drop} layer(s) a drop of {drop} removes" if drop else "")
    fig.update_annotations(font_size=12, yshift=4)
    return _layout(fig, title=title, height=360, showlegend=False, margin={"l": 50, "r": 20, "t": 80, "b": 40})


def neuron_distribution(neurons: pd.DataFrame, *, layer: int, expert: int, score: str,
                        keep_ratio: float) -> go.Figure:
    """Histogram of one expert's neuron scores, with the cut that keeps the top `keep_ratio` of them."""
    sel = neurons[(neurons["layer"] == layer) & (neurons["expert"] == expert)]
    if sel.empty:
        return message_figure(f"no neurons for layer {layer}, expert {expert}")
    if score not in sel.columns:
        return message_figure(f"no {score} neuron scores in this analysis")
    values = sel[score].sort_values(ascending=False).to_numpy()
    keep = max(1, min(len(values), int(math.floor(keep_ratio * len(values) + 0.5))))
    cut = values[keep - 1]
    fig = go.Figure(go.Histogram(x=values, nbinsx=min(60, max(10, len(values) // 8)), marker_color=ACCENT,
                                 hovertemplate="score %{x}<br>%{y} neurons<extra></extra>"))
    fig.add_vline(x=cut, line_dash="dash", line_color=BAD,
                  annotation_text=f"keep {keep}/{len(values)} (ratio {keep_ratio:.2f})", annotation_position="top")
    fig.update_xaxes(title=SCORE_LABELS.get(score, score))
    fig.update_yaxes(title="neurons")
    return _layout(fig, title=f"Neuron scores of expert {expert} in layer {layer}", height=340, bargap=0.05)


def load_balance(experts: pd.DataFrame) -> go.Figure:
    """Per MoE layer, each expert's share of the routed tokens sorted high to low, against the uniform share 1/E.
    Legend entries give max share / uniform share (1.0 = perfectly balanced)."""
    fig = go.Figure()
    n_exp = int(experts["expert"].nunique())
    for layer, grp in experts.groupby("layer", sort=True):
        tokens = grp["tokens"].to_numpy(dtype=float)
        share = tokens / tokens.sum() if tokens.sum() > 0 else tokens
        order = share.argsort()[::-1]
        ratio = share.max() * n_exp if tokens.sum() > 0 else float("nan")
        fig.add_trace(go.Scatter(
            x=list(range(1, n_exp + 1)), y=share[order], mode="lines+markers", marker={"size": 5},
            name=f"L{layer} (max/uniform {ratio:.2f})", customdata=grp["expert"].to_numpy()[order],
            hovertemplate=f"layer {layer}<br>rank %{{x}}: expert %{{customdata}}<br>share %{{y:.3%}}<extra></extra>"))
    fig.add_hline(y=1.0 / n_exp, line_dash="dot", line_color=MUTED, annotation_text="uniform",
                  annotation_position="top right")
    fig.update_xaxes(title="experts, sorted by load")
    fig.update_yaxes(title="share of routed tokens", tickformat=".0%")
    return _layout(fig, title="Routing load balance", height=360, legend={"font": {"size": 11}})


# -- Runs -------------------------------------------------------------------------------------------------------------
def point_labels(pts: list[dict], original: dict | None = None, *, near: float = 0.03) -> list[str]:
    """One label per group of runs drawn at (about) one point, on the group's first run: "#3 · #7" (a quantized run
    sits on its unquantized twin: same active parameters, perplexity within a hair), "" on the others, so labels
    never print over each other. Two runs are one group when they are within `near` of the axes' spans on both."""
    xs = [p["params_active"] for p in pts] + ([original["params_active"]] if original else [])
    ys = [p["perplexity"] for p in pts] + ([original["perplexity"]] if original else [])
    span_x = (max(xs) - min(xs)) or abs(xs[0]) or 1.0
    span_y = (max(ys) - min(ys)) or abs(ys[0]) or 1.0
    labels, heads = [""] * len(pts), []                      # heads: (index of the labelled run, its members)
    for i, p in enumerate(pts):
        for head, members in heads:
            q = pts[head]
            if (abs(p["params_active"] - q["params_active"]) <= near * span_x
                    and abs(p["perplexity"] - q["perplexity"]) <= near * span_y):
                members.append(p["run_id"])
                break
        else:
            heads.append((i, [p["run_id"]]))
    for head, members in heads:
        labels[head] = " · ".join(f"#{m}" for m in members)
    return labels


def pareto(points: list[dict], *, original: dict | None, title: str = "Finished runs: size against quality"
           ) -> go.Figure:
    """Active parameters against perplexity for finished runs (`{"run_id", "params_active", "perplexity",
    "label"}`), the original as a star, and the Pareto front (no other point is both smaller and better)."""
    pts = [p for p in points if p.get("params_active") and p.get("perplexity") is not None
           and math.isfinite(p["perplexity"])]
    if not pts and not original:
        return message_figure("finished runs appear here: active parameters against perplexity")
    fig = go.Figure()
    if pts:
        front, best = [], math.inf
        for p in sorted(pts, key=lambda p: (p["params_active"], p["perplexity"])):
            if p["perplexity"] < best:
                front.append(p)
                best = p["perplexity"]
        fig.add_trace(go.Scatter(x=[p["params_active"] for p in front], y=[p["perplexity"] for p in front],
                                 mode="lines", line={"color": MUTED, "dash": "dot", "shape": "hv"},
                                 name="Pareto front", hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=[p["params_active"] for p in pts], y=[p["perplexity"] for p in pts], mode="markers+text",
            text=point_labels(pts, original), textposition="top center", name="runs",
            marker={"size": 11, "color": ACCENT, "line": {"width": 1, "color": "white"}},
            customdata=[[f"#{p['run_id']}", plain(p.get("label", ""))] for p in pts],
            hovertemplate="%{customdata[0]}<br>active %{x:.3s}<br>perplexity %{y:.2f}<br>%{customdata[1]}"
                          "<extra></extra>"))
    if original and original.get("params_active") and original.get("perplexity") is not None:
        fig.add_trace(go.Scatter(x=[original["params_active"]], y=[original["perplexity"]], mode="markers+text",
                                 marker={"symbol": "star", "size": 17, "color": "#f59e0b"}, text=["original"],
                                 textposition="bottom center", name="original",
                                 hovertemplate="original<br>active %{x:.3s}<br>perplexity %{y:.2f}<extra></extra>"))
    fig.update_xaxes(title="active parameters per token")
    fig.update_yaxes(title="held-out perplexity (lower is better)")
    return _layout(fig, title=plain(title), height=380)


def loss_curve(points: list[tuple[int, float]], *, stages: list[int] | None = None, title: str = "") -> go.Figure:
    """Distillation loss against the global step; dotted lines where a new stage starts."""
    if not points:
        return message_figure("no loss recorded yet (distillation writes it step by step)")
    fig = go.Figure(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], mode="lines+markers",
                               marker={"size": 4}, line={"color": ACCENT},
                               hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"))
    for s in stages or []:
        fig.add_vline(x=s, line_dash="dot", line_color=MUTED)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss")
    return _layout(fig, title=plain(title) if title else "Distillation loss", height=320)


# -- Compare ----------------------------------------------------------------------------------------------------------
def top_tokens(top_a: list[tuple[str, float]], top_b: list[tuple[str, float]], *, names: tuple[str, str],
               context: str) -> go.Figure:
    """The two models' top-k next tokens at one position, side by side (bars = probability)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[plain(n) for n in names], horizontal_spacing=0.18)
    top_p = max([p for _, p in top_a + top_b] or [1.0])
    for col, (top, color) in enumerate(((top_a, ACCENT), (top_b, GOOD)), start=1):
        labels = [plain(repr(t)[1:-1]) or "∅" for t, _ in top][::-1]       # lowest first: plotly draws upwards
        ranks = range(len(labels), 0, -1)
        fig.add_trace(go.Bar(x=[p for _, p in top][::-1], y=[f"{i}. {name}" for i, name in zip(ranks, labels)],
                             orientation="h", marker_color=color, text=[f"{p:.1%}" for _, p in top][::-1],
                             textposition="auto", hovertemplate="%{y}<br>p = %{x:.2%}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(range=[0, min(1.0, top_p * 1.25)], tickformat=".0%", row=1, col=col)
    return _layout(fig, title=f"Top-5 next tokens after “{plain(context)}”", height=300, showlegend=False)


def metrics_bars(rows: list[dict], *, names: tuple[str, str]) -> go.Figure:
    """Metric ratios B / A (1.0 = equal) for the metrics both models have: `{"metric", "a", "b"}` rows."""
    rows = [r for r in rows if isinstance(r.get("a"), (int, float)) and isinstance(r.get("b"), (int, float))
            and r["a"] not in (0, None)]
    if not rows:
        return message_figure("no metrics to compare (the original has metrics once a run evaluated it)")
    a, b = (plain(n) for n in names)
    fig = go.Figure(go.Bar(x=[r["b"] / r["a"] for r in rows], y=[plain(r["metric"]) for r in rows],
                           orientation="h", marker_color=ACCENT, customdata=[[r["a"], r["b"]] for r in rows],
                           meta=[a, b],     # names as data, not template text: a '%{' in a name stays text
                           hovertemplate="%{y}<br>%{meta[0]} %{customdata[0]:.4g}<br>%{meta[1]}"
                                         " %{customdata[1]:.4g}<br>ratio %{x:.3f}<extra></extra>"))
    fig.add_vline(x=1.0, line_dash="dot", line_color=MUTED)
    fig.update_xaxes(title=f"{b} / {a}")
    return _layout(fig, title="Metrics side by side (ratio)", height=max(220, 60 + 28 * len(rows)))


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, TensorBoard's rule: s_t = weight * s_(t-1) + (1 - weight) * v_t, s_0 = v_0,
    debiased (divided by 1 - weight^(t+1)) so the start is not pulled towards zero; weight 0 returns the values."""
    if weight <= 0:
        return list(values)
    out, s = [], 0.0
    for t, v in enumerate(values):
        s = weight * s + (1 - weight) * v
        out.append(s / (1 - weight ** (t + 1)))
    return out


PALETTE = ["#4f46e5", "#059669", "#dc2626", "#d97706", "#0891b2", "#7c3aed", "#db2777", "#65a30d"]


def loss_curves(curves: dict[str, tuple[list[tuple[int, float]], list[int]]], *, smoothing: float = 0.0,
                log_y: bool = False) -> go.Figure:
    """Several runs' distillation losses against the global step, overlaid: {name: (points, stage starts)}. Each
    stage's segment is smoothed on its own (`smooth`), so a stage start is not blurred; a dotted line in the run's
    colour marks each stage start; `log_y` draws the loss on a log axis."""
    if not any(points for points, _ in curves.values()):
        return message_figure("no loss recorded for these runs")
    fig = go.Figure()
    for i, (name, (points, starts)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        segments: dict[int, list[tuple[int, float]]] = {}
        for step, value in points:                     # segment k = the points after the k-th stage start
            segments.setdefault(sum(step >= b for b in starts), []).append((step, value))
        xs, ys = [], []
        for _, seg in sorted(segments.items()):
            xs += [s for s, _ in seg] + [None]
            ys += smooth([v for _, v in seg], smoothing) + [None]
        fig.add_trace(go.Scatter(x=xs[:-1], y=ys[:-1], mode="lines+markers", name=plain(name), marker={"size": 3},
                                 line={"color": color}, connectgaps=False,
                                 hovertemplate="%{fullData.name}<br>step %{x}<br>loss %{y:.4f}<extra></extra>"))
        for s in starts:
            fig.add_vline(x=s, line_dash="dot", line_color=color, opacity=0.6)
    fig.update_xaxes(title="step (all stages)")
    fig.update_yaxes(title="loss" + (" (log)" if log_y else ""), type="log" if log_y else "linear")
    title = "Distillation loss" + (f" · smoothed {smoothing:.2f}" if smoothing else "")
    return _layout(fig, title=title, height=360, legend={"font": {"size": 11}})
