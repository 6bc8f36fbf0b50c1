"""Where the bundled files are: the demo's assets (the small CLIP, concept list, tuned settings) and
the app (app.py + pages/) — docs/ARCHITECTURE.md §Package.

In a checkout, and in an editable install of it, they sit at the top of the repository
(`assets/`, `app.py`, `pages/`), where `make run` and the tests use them. A built wheel
(`pip install .`) carries the same files inside the package, under `hsfm_core/_bundled/`
(pyproject.toml maps the three into it). The installed copy wins when it exists, so a
regular install never reads a folder that happens to sit beside site-packages.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "_bundled"  # a wheel's copy of app.py, pages/ and assets/
CHECKOUT = PACKAGE.parent  # the repository root, when hsfm_core is used from its source tree


def _root() -> Path:
    """The installed copy when there is one, else the checkout. Callers say what is missing in their own
    words (the demo build names the CLIP bundle, `hsfm app` the script), so this never raises."""
    return INSTALLED if (INSTALLED / "app.py").is_file() else CHECKOUT


def assets_dir() -> Path:
    """The folder holding the demo CLIP (`synthbirds-clip/`), `concepts.txt` and `demo-hsfm-tuned.json`."""
    return _root() / "assets"


def app_script() -> Path:
    """The Streamlit entry script, app.py; its pages are in `pages/` beside it."""
    return _root() / "app.py"
