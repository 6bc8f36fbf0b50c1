"""The facade (docs/ARCHITECTURE.md §Instruments): every instrument composed once.

Each module here takes a `Workspace` (or a folder) and plain arguments, checks its arguments
(`InputError`), does the opening, checking and building the instrument needs, and returns plain
data: JSON-ready dicts, DataFrames, arrays or figures. The CLI (`cli.py`: argparse and printing),
the public API (`hsfm_core.__all__`, re-exported by `api.py`) and the pages (through the thin
Streamlit caches of `studio/ui.py`) all call these functions, so an instrument's `--json` output
and its API return value are the same dict.

| module        | instruments |
| ------------- | ----------- |
| evaluation    | evaluate, run_group_summary |
| tables        | runs_overview, group_table, summary_table, accuracy_table, averages_table, predictions, confusion, prediction_flips, train_correlation, example_rows |
| projection    | project_map, project, projection_figure |
| decode        | decode, describe_selection, concept_figure |
| retrieval     | neighbors, edit_shift, edit_diagnostics |
| semantics     | edit_semantics, edited_groups, resolve_group |
| render        | render, strip, class_means, flip_rate, renderer, train_renderer |

Nothing below this layer imports it (imports point one way, §Layers).
"""
