"""HSFM Studio from Python: open the demo workspace, train DFR and HSFM over three seeds, print the
per-group table, read HSFM's edits in words, and save a figure.

    pip install -e .            # or `make test` / `make run`, which install the checkout into .venv
    python examples/quickstart.py [--workspace DIR] [--out DIR]

Without --workspace it opens the bundled demo workspace (SynthBirds encoded by the bundled CLIP),
building it on first use (about 1 min on 2 CPU cores, into ~/.cache/hsfm-studio; HSFM_CACHE_DIR
moves it). The new runs are added to the workspace beside the ones there; nothing is overwritten.
Runs from any folder: it uses only the installed package.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hsfm_core as hc

SEEDS = [0, 1, 2]  # accuracy claims are mean ± std over ≥ 3 seeds
# The demo's validation-tuned HSFM settings (assets/demo-hsfm-tuned.json: selected on val, test never read)
HSFM_PRESET, HSFM_SETTINGS = "waterbirds", {"alpha": 2e-4, "eta": 0.1, "K_hard": 64}


def percent(mean, std) -> str:
    if mean is None or mean != mean:  # None or NaN: a group without examples
        return "—"
    return f"{100 * mean:.1f}" + ("" if std is None or std != std else f" ± {100 * std:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", help="a workspace in a CLIP space (default: the bundled demo)")
    parser.add_argument("--out", default=".", help="folder for the figure (default: here)")
    args = parser.parse_args()
    start = time.perf_counter()

    if args.workspace:
        ws = hc.open_workspace(args.workspace)
    else:
        shown = []

        def progress(message: str, done: float) -> None:  # one line per step of the build
            if not shown or message.split(" (")[0] != shown[-1]:
                shown.append(message.split(" (")[0])
                print(f"  building the demo workspace: {done:4.0%} {message}", flush=True)

        ws = hc.demo_workspace(progress=progress)
    print(ws)

    dfr = hc.train_runs(ws, "dfr", seeds=SEEDS, device="cpu")
    hsfm = hc.train_runs(ws, "hsfm", preset=HSFM_PRESET, settings=HSFM_SETTINGS, seeds=SEEDS, device="cpu")
    runs = dfr + hsfm

    table = hc.group_table(ws, "test", runs=runs)
    table["cell"] = [percent(m, s) + (" ←" if w else "") for m, s, w in zip(table["mean"], table["std"], table["worst"])]
    print("\nTest accuracy per group (%), mean ± sample std over seeds "
          f"{', '.join(map(str, SEEDS))}; ← the run group's worst group")
    print(table.pivot(index="group", columns="run group", values="cell").to_string())
    print()
    print(hc.summary_table(ws, "test", runs=runs, fmt="markdown"))

    decoded = hc.decode(ws, hsfm[0], top=5)
    positive, negative = decoded["contrast"]["positive"], decoded["contrast"]["negative"]
    print(f"What HSFM's edits point to (seed {hsfm[0]['config']['seed']}, CLIP text concepts by cosine):")
    for c in decoded["per_class"]:
        words = ", ".join(f"{t['concept']} ({t['cosine']:+.2f})" for t in c["top"])
        print(f"  {c['name']:>10} ({c['n']} edited features): {words}; "
              f"'{positive}' − '{negative}' {c['contrast']:+.2f}")
    diagnostics = decoded["edit_diagnostics"]
    print(f"  median edit ‖Δ‖/‖z‖ {diagnostics['median_relative_edit_norm']:.2f}, "
          f"median off-data ratio {diagnostics['median_off_data_ratio']:.2f}"
          + (f" — {diagnostics['warning']}" if diagnostics["warning"] else ""))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "quickstart-groups.html"
    hc.group_figure(ws, "test", runs=runs).write_html(figure, include_plotlyjs="cdn")
    print(f"\nsaved {figure.resolve()} (per-group accuracy, mean ± std over seeds)")
    print(f"quickstart done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
