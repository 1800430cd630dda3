"""Every test session gets its own tracking store (sqlite + artifacts in a temporary folder) and no hub."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
SHARED = Path(__file__).resolve().parents[2] / "shared"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory):
    """MLflow's default store lives in the working folder, so each session works in a fresh one."""
    folder = tmp_path_factory.mktemp("store")
    old = Path.cwd()
    os.chdir(folder)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield folder
    os.chdir(old)


@pytest.fixture(scope="session")
def tiny_model():
    from exatrack.tiny import tiny_path

    return tiny_path()


def shared(*parts) -> Path:
    """A file under ../shared, or a skip where this machine has none (a user's machine never does)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    return path
