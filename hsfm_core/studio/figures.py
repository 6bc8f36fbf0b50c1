"""Plotly figures the app draws: grouped accuracy bars with intervals, the projection map with
before → after arrows, concept score bars, and training curves. Inputs are the tables built
elsewhere in hsfm_core; these functions only draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# What the map can be coloured by (see `colour_values`)
COLOUR_FIELDS = ("group", "class", "attribute", "split", "correct", "kind", "verdict")
ARROW_ANNOTATIONS_MAX = 150  # above this many support points, arrows are plain segments
PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


def palette(n: int) -> list[str]:
    """n distinct colours: the 8 above up to 8 (groups of a 2 × 2 or 2 × 4 world), plotly's Dark24
    up to 24, else n samples of the Turbo scale (C × A groups can be many)."""
    from plotly import colors

    if n <= len(PALETTE):
        return PALETTE[:n]
    if n <= len(colors.qualitative.Dark24):
        return list(colors.qualitative.Dark24[:n])
    return colors.sample_colorscale("Turbo", [i / (n - 1) for i in range(n)])


def accuracy_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars: one colour per run, one cluster per group, 95% intervals as error bars and
    each run's worst group hatched. `table` is `compare.accuracy_table`."""
    figure = go.Figure()
    runs = table.groupby("run", sort=False)
    for colour, (run_name, rows) in zip(palette(runs.ngroups), runs):
        figure.add_bar(name=run_name, x=rows["group"], y=rows["accuracy"], marker_color=colour,
                       error_y={"type": "data", "array": rows["ci_high"] - rows["accuracy"],
                                "arrayminus": rows["accuracy"] - rows["ci_low"]},
                       marker_pattern_shape=["/" if w else "" for w in rows["worst"]],
                       customdata=rows[["n", "ci_low", "ci_high"]],
                       hovertemplate="%{x}<br>accuracy %{y:.1%} (95% CI %{customdata[1]:.1%}–%{customdata[2]:.1%})"
                                     "<br>n = %{customdata[0]}<extra>%{fullData.name}</extra>")
    return _group_bar_layout(figure, "accuracy")


def _group_bar_layout(figure: go.Figure, y_title: str) -> go.Figure:
    figure.update_layout(barmode="group", yaxis={"tickformat": ".0%", "range": [0, 1.05], "title": y_title},
                         xaxis_title="group (class · attribute)", height=420,
                         legend={"orientation": "h", "y": -0.25}, margin={"t": 20})
    return figure


def seed_accuracy_bars(table: pd.DataFrame) -> go.Figure:
    """Grouped bars at the mean over seeds, ± one sample std as error bars, one colour per run group,
    each run group's worst group hatched. `table` is `compare.seed_accuracy_table`."""
    figure = go.Figure()
    run_groups = table.groupby("run group", sort=False)
    for colour, (name, rows) in zip(palette(run_groups.ngroups), run_groups):
        seeds = int(rows["seeds"].iloc[0])
        figure.add_bar(name=f"{name} ({seeds} seed{'s' if seeds > 1 else ''})", x=rows["group"], y=rows["mean"],
                       marker_color=colour, error_y={"type": "data", "array": rows["std"].fillna(0)},
                       marker_pattern_shape=["/" if w else "" for w in rows["worst"]],
                       customdata=np.stack([rows["std"].fillna(np.nan), rows["seeds"]], axis=1),
                       hovertemplate="%{x}<br>mean accuracy %{y:.1%} ± %{customdata[0]:.1%} (sample std over "
                                     "%{customdata[1]} seeds)<extra>%{fullData.name}</extra>")
    return _group_bar_layout(figure, "mean accuracy")


def sweep_heatmap(table: pd.DataFrame, x: str, y: str) -> go.Figure:
    """Mean val worst-group accuracy over two swept settings (the best over any others, as labelled),
    the selected configuration marked ★. `table` is `sweeps.results`."""
    cells = table.groupby([y, x], sort=False)["val_wga_mean"].max().unstack(x)
    figure = go.Figure(go.Heatmap(z=cells.to_numpy(dtype=float), x=[str(c) for c in cells.columns],
                                  y=[str(i) for i in cells.index], colorscale="Viridis", zmin=0, zmax=1,
                                  texttemplate="%{z:.1%}", colorbar={"title": "val WGA", "tickformat": ".0%"},
                                  hovertemplate=f"{x} %{{x}}<br>{y} %{{y}}<br>mean val WGA %{{z:.1%}}<extra></extra>"))
    chosen = table[table["selected"]]
    if len(chosen):
        figure.add_scatter(x=[str(chosen[x].iloc[0])], y=[str(chosen[y].iloc[0])], mode="text", text=["★"],
                           textfont={"size": 28, "color": "white"}, name="selected on val", showlegend=False)
    others = [c for c in table.columns if c not in (x, y) and c in table.attrs.get("grid", [])]
    figure.update_layout(xaxis_title=x, yaxis_title=y, height=360, margin={"t": 30},
                         title={"text": "mean val worst-group accuracy" + (f" (best over {', '.join(others)})"
                                                                           if others else ""), "font": {"size": 13}})
    return figure


def colour_values(frame: pd.DataFrame, field: str, class_names, attribute_names, group_labels) -> pd.Series:
    """The category name of every map point under a colour field."""
    if field == "group":
        return frame["group"].map(lambda g: group_labels[g] if g >= 0 else "unknown")
    if field == "class":
        return frame["y_class"].map(lambda c: class_names[c])
    if field == "attribute":
        return frame["attribute"].map(lambda a: attribute_names[a] if a >= 0 else "unknown")
    if field == "correct":
        if "correct" not in frame:
            return pd.Series("no run", index=frame.index)
        return frame["correct"].map({True: "correct", False: "wrong"})
    if field in ("split", "kind"):
        return frame[field].astype(str)
    if field == "verdict":  # a support point's own edit against its class's verdict (analysis/semantics.py)
        if "agrees" not in frame:
            return pd.Series("no verdict", index=frame.index)
        support = frame["support"].to_numpy() >= 0

        def name(agrees, is_support: bool) -> str:
            if not is_support:
                return "not a support point"
            return {True: "edit agrees with the verdict", False: "edit disagrees"}.get(agrees, "no verdict")

        return pd.Series([name(a, s) for a, s in zip(frame["agrees"], support)], index=frame.index)
    raise ValueError(f"unknown colour field {field!r}; expected one of {COLOUR_FIELDS}")


def projection_map(frame: pd.DataFrame, colours: pd.Series, drawn: np.ndarray, height: int = 640,
                   edit_notes: list[str] | None = None) -> go.Figure:
    """WebGL scatter of the map: `drawn` original points as a light backdrop coloured by
    `colours`, support points before (circles) → after (diamonds) with arrows; `edit_notes[i]`
    (how far support example i moved) is in its hover. Every marker carries its frame position in `customdata`. The figure does not depend on the selection, so
    a lasso never makes the browser redraw the map (plotly highlights the selection itself)."""
    figure = go.Figure()
    categories = sorted(colours.unique(), key=str)
    colour_of = dict(zip(categories, palette(len(categories))))
    kind = frame["kind"].to_numpy()
    drawn = np.asarray(drawn, dtype=np.int64)
    size, opacity = (7, 0.6) if len(drawn) < 2_000 else (4, 0.4) if len(drawn) < 20_000 else (3, 0.3)
    for category in categories:
        members = drawn[(colours.to_numpy()[drawn] == category) & (kind[drawn] == "original")]
        if not len(members) and (colours.to_numpy()[kind != "original"] == category).any():
            # a category only support points have (e.g. "verdict"): its colour still needs a legend entry
            figure.add_scattergl(x=[None], y=[None], mode="markers", name=str(category),
                                 marker={"size": 10, "color": colour_of[category]})
        if len(members):
            figure.add_scattergl(x=frame["x"].to_numpy()[members], y=frame["y"].to_numpy()[members], mode="markers",
                                 name=str(category), legendgroup=str(category), customdata=members,
                                 marker={"size": size, "opacity": opacity, "color": colour_of[category]},
                                 hovertemplate=f"{category}<br>row %{{text}}<extra></extra>",
                                 text=frame["row"].to_numpy()[members])
    support = np.flatnonzero(kind == "support")
    edited = np.flatnonzero(kind == "edited")
    if len(edited):
        _add_arrows(figure, frame, support, edited)
        for name, points, symbol in (("support (before)", support, "circle"), ("edited (after)", edited, "diamond")):
            if len(points):
                figure.add_scattergl(
                    x=frame["x"].to_numpy()[points], y=frame["y"].to_numpy()[points], mode="markers", name=name,
                    customdata=points, text=frame["support"].to_numpy()[points],
                    hovertext=[edit_notes[int(i)] if edit_notes else "" for i in frame["support"].to_numpy()[points]],
                    marker={"size": 10, "symbol": symbol, "color": [colour_of[c] for c in colours.to_numpy()[points]],
                            "line": {"width": 1.5, "color": "black"}},
                    hovertemplate=f"{name}<br>support #%{{text}}<br>%{{hovertext}}<extra></extra>")
    figure.update_layout(dragmode="lasso", height=height, margin={"t": 10, "b": 10},
                         legend={"itemsizing": "constant"}, xaxis={"showticklabels": False, "title": None},
                         yaxis={"showticklabels": False, "title": None})
    return figure


def _add_arrows(figure: go.Figure, frame: pd.DataFrame, support: np.ndarray, edited: np.ndarray) -> None:
    """before → after for each support example whose original is on the map."""
    start = {int(frame["support"].iat[p]): p for p in support}
    pairs = [(start[int(frame["support"].iat[p])], p) for p in edited if int(frame["support"].iat[p]) in start]
    if not pairs:
        return
    x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
    if len(pairs) <= ARROW_ANNOTATIONS_MAX:
        arrow = {"xref": "x", "yref": "y", "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 2,
                 "arrowsize": 1.2, "arrowwidth": 1.2, "arrowcolor": "rgba(30,30,30,0.7)", "text": ""}
        # one layout update: add_annotation per arrow re-validates every earlier one (0.3 s for 32 arrows)
        figure.update_layout(annotations=[{**arrow, "x": x[b], "y": y[b], "ax": x[a], "ay": y[a]} for a, b in pairs])
    else:
        xs = np.ravel([[x[a], x[b], None] for a, b in pairs])
        ys = np.ravel([[y[a], y[b], None] for a, b in pairs])
        figure.add_scattergl(x=xs, y=ys, mode="lines", name="edit (before → after)", hoverinfo="skip",
                             line={"width": 1, "color": "rgba(30,30,30,0.5)"})


def concept_bars(top: list[dict], title: str = "") -> go.Figure:
    """Horizontal bars of concept cosines (`ConceptBank.ranked` output), best on top."""
    frame = pd.DataFrame(top)
    figure = go.Figure(go.Bar(x=frame["cosine"], y=frame["concept"], orientation="h",
                              marker_color=["#E45756" if c < 0 else "#4C78A8" for c in frame["cosine"]],
                              customdata=frame["category"],
                              hovertemplate="%{y} (%{customdata})<br>cosine %{x:.3f}<extra></extra>"))
    figure.update_layout(title=title or None, height=60 + 26 * len(frame), margin={"t": 40 if title else 10, "l": 10},
                         yaxis={"autorange": "reversed"}, xaxis_title="cosine with the direction")
    return figure


def null_histogram(alignment: dict, title: str = "") -> go.Figure:
    """The null of a class's attribute alignment (random within-class differences, every seed's draws
    pooled) with the observed per-seed alignments and their mean marked (analysis/semantics.py)."""
    histogram = alignment["null_histogram"]
    edges = np.asarray(histogram["edges"], dtype=float)
    counts = np.asarray(histogram["counts"], dtype=float).sum(axis=0)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    figure = go.Figure(go.Bar(x=centres, y=counts / max(counts.sum(), 1), width=widths, marker_color="#BAB0AC",
                              name="null: random within-class differences",
                              hovertemplate="cos %{x:.2f}: %{y:.1%} of null draws<extra></extra>"))
    for i, value in enumerate(alignment["per_seed"]):
        figure.add_vline(x=value, line={"color": "#4C78A8", "width": 1.5, "dash": "dot"},
                         annotation_text=f"seed {i + 1}" if len(alignment["per_seed"]) <= 6 else None)
    if alignment.get("mean") is not None:
        figure.add_vline(x=alignment["mean"], line={"color": "#E45756", "width": 3},
                         annotation_text=f"mean {alignment['mean']:+.2f}", annotation_position="top left")
    figure.update_layout(title=title or None, height=260, margin={"t": 40 if title else 10, "l": 10, "b": 30},
                         xaxis_title="cos(mean edit, attribute direction)", yaxis_title="share of draws",
                         showlegend=False, bargap=0)
    return figure


def training_curves(history: pd.DataFrame) -> go.Figure:
    """Outer loss, validation accuracy and (for feature editors) the median edit size ‖Δ‖/‖z‖ per epoch
    (the runs' history.jsonl lines with their seed and run id), one line per run: growing edits show when an editor
    leaves the data. A job of one request names its lines by seed; a sweep's pass (several configurations in one
    job, docs/ARCHITECTURE.md §Sweeps) by run id."""
    from plotly.subplots import make_subplots

    edits = "median_relative_edit" in history and history["median_relative_edit"].notna().any()
    titles = ("outer loss on the hard set", "validation accuracy") + (("median edit ‖Δ‖ / ‖z‖",) if edits else ())
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    by = "run_id" if "run_id" in history and history["run_id"].notna().any() else "seed"
    one_request = history.groupby(by)["seed"].first().is_unique  # then the seed names a line
    for key, rows in history.groupby(by):
        who = f"seed {rows['seed'].iat[0]}" if one_request else str(key)
        figure.add_scatter(x=rows["epoch"], y=rows["outer_loss"], mode="lines+markers", name=f"outer loss ({who})",
                           row=1, col=1)
        for column, label in (("val_wga", "worst group"), ("val_avg", "average")):
            figure.add_scatter(x=rows["epoch"], y=rows[column], mode="lines+markers", name=f"val {label} ({who})",
                               row=1, col=2)
        if edits:
            figure.add_scatter(x=rows["epoch"], y=rows["median_relative_edit"], mode="lines+markers",
                               name=f"median ‖Δ‖/‖z‖ ({who})", row=1, col=3)
    figure.update_yaxes(tickformat=".0%", row=1, col=2)
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(height=320, margin={"t": 40})
    return figure
