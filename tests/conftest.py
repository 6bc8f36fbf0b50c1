import os

# Tests never touch the network: open_clip / huggingface_hub must work from local files only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.helpers import make_tiny_clip, make_waterbirds  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """`local-dir:` spec of a randomly initialised 64-px open_clip bundle."""
    return f"local-dir:{make_tiny_clip(tmp_path_factory.mktemp('clip') / 'tiny-clip')}"


@pytest.fixture()
def waterbirds_dir(tmp_path):
    return make_waterbirds(tmp_path / "waterbirds")


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory):
    """A small workspace with images, CLIP features and ERM, DFR and HSFM runs (read-only: copy it
    before adding runs)."""
    from tests.appdata import make_app_workspace

    return make_app_workspace(tmp_path_factory.mktemp("app"))
