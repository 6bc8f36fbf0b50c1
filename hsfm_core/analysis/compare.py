"""Side-by-side views of runs on one store: per-group accuracy tables, the labelled averages,
per-group confusion, the examples whose prediction flips between two runs, and the train
correlation that makes a dataset spurious. Pure functions over a store and run records
(`runs.list_runs`); the app's Groups and Home pages draw what they return.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hsfm_core.heads import predict
from hsfm_core.runs import check_run_fits_store, load_head

# How each average is computed, for the labels the UI shows next to the numbers (docs/ARCHITECTURE.md §Metrics).
AVERAGE_LABELS = {
    "wga": "worst-group accuracy",
    "avg_adjusted": "adjusted average (groups weighted by train proportions)",
    "avg_plain": "plain average (all examples)",
    "mean_group": "mean of group accuracies (unweighted)",
}


def method_label(name: str | None) -> str:
    """How views print a method: its registered label ('HSFM'), else the name as recorded."""
    from hsfm_core import methods

    if name in methods.names():
        return methods.get(name).label
    return (name or "?").upper()


def run_label(run: dict) -> str:
    """'HSFM · waterbirds · hsfm-20261129-…-s0' — what pickers and legends show: the method, the preset
    (the recipe: DFR's official or val_scaler) when the run recorded one, and the run id."""
    preset = (run.get("config") or {}).get("preset")
    return " · ".join([method_label(run.get("method")), *([str(preset)] if preset else []), run["run_id"]])


def _runs_with_metrics(runs: list[dict], split: str):
    """(run, its metrics on `split`) for the runs evaluated on that split."""
    for run in runs:
        metrics = (run.get("metrics") or {}).get(split)
        if metrics:
            yield run, metrics


def accuracy_table(store, runs: list[dict], split: str) -> pd.DataFrame:
    """One row per (run, group): accuracy, its Wilson 95% interval, n and whether it is the run's
    worst group. Runs without metrics for `split` are left out."""
    names = store.groups.names
    rows = []
    for run, m in _runs_with_metrics(runs, split):
        for g, name in enumerate(names):
            acc = m["group_acc"][g]
            low, high = m["group_ci"][g] if m["group_ci"][g] else (None, None)
            rows.append({"run": run_label(run), "run_id": run["run_id"], "method": run.get("method"), "group": name,
                         "g": g, "accuracy": acc, "ci_low": low, "ci_high": high, "n": m["group_n"][g],
                         "worst": g == m["worst_group"]})
    return pd.DataFrame(rows, columns=["run", "run_id", "method", "group", "g", "accuracy", "ci_low", "ci_high",
                                       "n", "worst"])


def averages_table(store, runs: list[dict], split: str) -> pd.DataFrame:
    """One row per run: worst group (name and accuracy) and the three averages, labelled."""
    names = store.groups.names
    rows = []
    for run, m in _runs_with_metrics(runs, split):
        worst = m["worst_group"]
        rows.append({"run": run_label(run), "worst group": names[worst] if worst is not None else None,
                     **{AVERAGE_LABELS[k]: m[k] for k in AVERAGE_LABELS}})
    return pd.DataFrame(rows, columns=["run", "worst group", *AVERAGE_LABELS.values()]).set_index("run")


def seed_accuracy_table(store, runs: list[dict], split: str) -> pd.DataFrame:
    """One row per (run group, group): mean and sample std of the group's accuracy over the run group's
    finished seeds among `runs`, seeds counted, and whether it is the worst group of the means."""
    from hsfm_core.analysis.seeds import aggregate, run_groups

    names = store.groups.names
    rows = []
    for run_group in run_groups(runs):
        agg = aggregate(run_group, split)
        if not agg["n"]:
            continue
        means = [np.nan if v is None else v for v in agg["group_acc"]["mean"]]
        worst = int(np.nanargmin(means)) if not np.all(np.isnan(means)) else None
        for g, name in enumerate(names):
            rows.append({"run group": run_group.name, "method": run_group.method, "group": name, "g": g,
                         "mean": agg["group_acc"]["mean"][g], "std": agg["group_acc"]["std"][g], "seeds": agg["n"],
                         "worst": g == worst})
    return pd.DataFrame(rows, columns=["run group", "method", "group", "g", "mean", "std", "seeds", "worst"])


def seed_averages_table(runs: list[dict], split: str) -> pd.DataFrame:
    """One row per run group: seeds, and every labelled figure as 'mean ± std' (percent)."""
    from hsfm_core.analysis.seeds import format_mean_std, summary_table, run_groups

    table = summary_table(run_groups(runs), split)
    out = pd.DataFrame({"run group": table["group"], "seeds": table["seeds"]})
    for key, label in AVERAGE_LABELS.items():
        out[label] = [format_mean_std(m, s) for m, s in zip(table[f"{key}_mean"], table[f"{key}_std"])]
    return out.set_index("run group")


def predictions(store, run: dict, split: str) -> np.ndarray:
    """The run's predicted class for every example of `split` (store order)."""
    check_run_fits_store(run, store)
    head = load_head(run)
    return predict(store.select(split).features, head["weight"], head["bias"])


def confusion_by_group(store, predicted: np.ndarray, split: str) -> pd.DataFrame:
    """Counts of (group, predicted class) on `split`: rows = groups, columns = 'predicted <class>'."""
    sel = store.select(split)
    groups = store.groups
    table = np.zeros((groups.n_groups, groups.n_classes), dtype=np.int64)
    np.add.at(table, (sel.g, predicted), 1)
    frame = pd.DataFrame(table, index=groups.names, columns=[f"predicted {c}" for c in groups.class_names])
    frame["accuracy"] = groups.accuracies(predicted, sel.y, sel.g)  # NaN for a group without rows
    frame.index.name = "group (class · attribute)"
    return frame


def prediction_flips(store, before: np.ndarray, after: np.ndarray, split: str) -> pd.DataFrame:
    """Examples of `split` whose prediction differs between two runs, with which way it went:
    'fixed' (wrong → right) or 'broken' (right → wrong). Sorted fixed first, then by group."""
    sel = store.select(split)
    changed = np.flatnonzero(before != after)
    names = store.groups.names
    fixed = after[changed] == sel.y[changed]
    frame = pd.DataFrame({"row": sel.rows[changed], "group": [names[g] for g in sel.g[changed]],
                          "g": sel.g[changed], "label": [store.class_names[c] for c in sel.y[changed]],
                          "before": [store.class_names[c] for c in before[changed]],
                          "after": [store.class_names[c] for c in after[changed]],
                          "change": np.where(fixed, "fixed", "broken")})
    return frame.sort_values(["change", "g", "row"], ascending=[False, True, True], ignore_index=True)


def flip_counts(flips: pd.DataFrame, store) -> pd.DataFrame:
    """Per group: how many examples were fixed and broken, and the net change."""
    names = store.groups.names
    counts = flips.groupby(["group", "change"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=names, columns=["fixed", "broken"], fill_value=0)
    counts["net"] = counts["fixed"] - counts["broken"]
    counts.index.name = "group"
    return counts


def train_correlation(store) -> pd.DataFrame | None:
    """Per class in train: how often the attribute is the class's usual one (its most common
    attribute) — the spurious correlation ERM learns. None without a train split."""
    if not store.has_split("train"):
        return None
    groups = store.groups
    counts = np.asarray(groups.counts(store.select("train").g)).reshape(groups.n_classes, groups.n_attributes)
    rows = []
    for c, name in enumerate(groups.class_names):
        n = int(counts[c].sum())
        if n == 0:
            continue
        usual = int(np.argmax(counts[c]))
        rows.append({"class": name, "n": n, "usual attribute": groups.attribute_names[usual],
                     "share with usual attribute": counts[c, usual] / n})
    return pd.DataFrame(rows)


def example_rows(store, split: str, per_group: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to `per_group` random store rows of each group in `split` (for thumbnails)."""
    rng = np.random.default_rng(seed)
    sel = store.select(split)
    out = {}
    for g in range(store.n_groups):
        rows = sel.rows[sel.g == g]
        out[g] = np.sort(rng.choice(rows, size=min(per_group, len(rows)), replace=False)) if len(rows) else rows
    return out
