"""Run groups and seed statistics (docs/ARCHITECTURE.md §Runs): runs that differ only in their seed.

One seed of HSFM varies by ±2–3 points of worst-group accuracy (its bilevel dynamics amplify
float32 rounding), so every comparison the Studio shows is a mean ± sample standard deviation over
a run group's finished seeds, with the number of seeds beside it. A group with one seed shows its
value and no spread.

Two runs are in one group when they share method, store and settings (the resolved
hyperparameters, so `--set E=40` and a preset that says E=40 agree) and sweep configuration;
only the seed differs.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hsfm_core import methods

SUMMARY_KEYS = ("wga", "avg_adjusted", "avg_plain", "mean_group")
KEY_LABELS = {"wga": "worst-group acc.", "avg_adjusted": "adjusted avg.", "avg_plain": "plain avg.",
              "mean_group": "mean of groups"}


@dataclass
class RunGroup:
    key: str
    method: str | None
    name: str  # what tables and legends show: "HSFM · waterbirds", "HSFM · auto · alpha=2e-4"
    runs: list[dict]  # ordered by seed

    @property
    def seeds(self) -> list[int]:
        return [r["config"].get("seed") for r in self.runs]

    def finished(self, split: str) -> list[dict]:
        return [r for r in self.runs if r.get("status") == "done" and (r.get("metrics") or {}).get(split)]


def group_key(run: dict) -> str:
    config = run.get("config") or {}
    return json.dumps({"method": run.get("method"), "store": config.get("store_hash"),
                       "settings": config.get("hyperparameters"), "sweep": config.get("sweep"),
                       "sweep_config": config.get("sweep_config")}, sort_keys=True, default=str)


def _overrides(run: dict) -> list[str]:
    return list(((run.get("config") or {}).get("request") or {}).get("overrides") or [])


def group_name(run: dict) -> str:
    config = run.get("config") or {}
    method = run.get("method")
    label = methods.get(method).label if method in methods.names() else str(method or "?").upper()
    parts = [label]
    if config.get("demo_label"):  # the demo's own runs say what they show ("the paper's Waterbirds settings")
        return f"{label} · {config['demo_label']}"
    if config.get("preset"):
        parts.append(str(config["preset"]))
    if config.get("sweep"):
        parts.append(f"{config['sweep']} c{int(config.get('sweep_config') or 0):02d}")
    overrides = _overrides(run)
    if overrides:
        parts.append(" ".join(overrides))
    return " · ".join(parts)


def run_groups(runs: list[dict]) -> list[RunGroup]:
    """The runs, grouped by everything but the seed; registry order, then name."""
    groups: dict[str, RunGroup] = {}
    for run in runs:
        key = group_key(run)
        if key not in groups:
            groups[key] = RunGroup(key, run.get("method"), group_name(run), [])
        groups[key].runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: ((r.get("config") or {}).get("seed") is None, (r.get("config") or {}).get("seed") or 0))
    names = [g.name for g in groups.values()]
    for group in groups.values():  # two groups with one name (settings changed by hand): tell them apart
        if names.count(group.name) > 1:
            group.name = f"{group.name} · {group.runs[0]['run_id'].rsplit('-s', 1)[0]}"
    return sorted(groups.values(), key=lambda g: (methods.order_of(g.method), g.name))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1); std is None with fewer than two values."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def aggregate(group: RunGroup, split: str) -> dict:
    """{n, seeds, <key>: {mean, std}, group_acc: {mean: [...], std: [...]}} over the group's finished seeds."""
    done = group.finished(split)
    out = {"n": len(done), "seeds": [r["config"].get("seed") for r in done]}
    for key in SUMMARY_KEYS:
        mean, std = mean_std([r["metrics"][split].get(key) for r in done])
        out[key] = {"mean": mean, "std": std}
    if done:
        per_group = np.array([[np.nan if v is None else v for v in r["metrics"][split]["group_acc"]] for r in done],
                             dtype=np.float64)
        with warnings.catch_warnings():  # a group empty in every seed: NaN, shown as —
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(per_group, axis=0)
            stds = np.nanstd(per_group, axis=0, ddof=1) if len(done) > 1 else np.full(per_group.shape[1], np.nan)
        out["group_acc"] = {"mean": [None if math.isnan(v) else float(v) for v in means],
                            "std": [None if math.isnan(v) else float(v) for v in stds]}
    return out


def summary_table(groups: list[RunGroup], split: str) -> pd.DataFrame:
    """One row per run group with finished seeds: seeds, and mean and std of each labelled figure."""
    rows = []
    for group in groups:
        agg = aggregate(group, split)
        if not agg["n"]:
            continue
        row = {"group": group.name, "method": group.method, "seeds": agg["n"]}
        for key in SUMMARY_KEYS:
            row[f"{key}_mean"], row[f"{key}_std"] = agg[key]["mean"], agg[key]["std"]
        rows.append(row)
    columns = ["group", "method", "seeds"] + [f"{k}_{s}" for k in SUMMARY_KEYS for s in ("mean", "std")]
    return pd.DataFrame(rows, columns=columns)


def format_mean_std(mean: float | None, std: float | None, percent: bool = True, digits: int = 1) -> str:
    """'85.7 ± 1.2' (percent points), '85.7' for one seed, '—' for nothing."""
    def missing(value) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    if missing(mean):
        return "—"
    scale = 100 if percent else 1
    text = f"{scale * mean:.{digits}f}"
    return text if missing(std) else f"{text} ± {scale * std:.{digits}f}"


def paper_table(groups: list[RunGroup], split: str = "test", fmt: str = "markdown") -> str:
    """The comparison as a paper's table: method, WGA and adjusted average (mean ± std, %), seeds.

    `fmt`: markdown, latex or csv (csv keeps separate mean and std columns, in fractions)."""
    table = summary_table(groups, split)
    if fmt == "csv":
        return table.to_csv(index=False)
    header = ["Method", "Worst-group acc. (%)", "Adjusted avg. (%)", "Seeds"]
    body = [[row["group"], format_mean_std(row["wga_mean"], row["wga_std"]),
             format_mean_std(row["avg_adjusted_mean"], row["avg_adjusted_std"]), str(row["seeds"])]
            for _, row in table.iterrows()]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + f"\n\n{split} split; mean ± sample std over seeds.\n"
    if fmt == "latex":
        def tex(text: str) -> str:
            return text.replace("±", r"$\pm$").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

        lines = [r"\begin{tabular}{lccc}", r"\toprule", " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(tex(c) for c in cells) + r" \\" for cells in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt!r}; expected markdown, latex or csv")
