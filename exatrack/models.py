"""Model references, resolved to a local folder in one place.

A reference is a hub id (default LGAI-EXAONE/EXAONE-4.0-1.2B), a local folder, `tiny` (the built-in
tiny EXAONE-4), or an MLflow URI (`runs:/<id>/<path>`, `models:/<name>@<alias>`).
"""

import re
from pathlib import Path

from exatrack import ExatrackError

DEFAULT_MODEL = "LGAI-EXAONE/EXAONE-4.0-1.2B"
SOURCE_MODEL = "exatrack.source_model"  # the tag naming the uncompressed model a run's checkpoint derives from
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# What vLLM needs from a checkpoint; weights, config, tokenizer and templates, nothing else.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


def resolve(ref: str) -> Path:
    if ref == "tiny":
        from exatrack.tiny import tiny_path

        return tiny_path()
    if ref.startswith(("runs:/", "models:/")):
        return from_mlflow(ref)
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ExatrackError(f"{path} has no config.json; pass a Hugging Face model folder")
        return path.resolve()
    if HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return from_hub(ref)
    raise ExatrackError(
        f"no model at '{ref}': pass an existing folder, a hub id such as {DEFAULT_MODEL}, tiny, runs:/<id>/checkpoint "
        "or models:/<name>@<alias>"
    )


def from_mlflow(uri: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except (MlflowException, OSError) as err:
        raise ExatrackError(f"cannot fetch {uri} from the tracking store ({str(err).splitlines()[0][:200]}); check the run id or alias")
    if not (path / "config.json").exists():
        raise ExatrackError(f"{uri} holds no config.json; point at the checkpoint folder, e.g. runs:/<id>/checkpoint")
    return path


def from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=CHECKPOINT_FILES))
    except Exception as err:
        raise ExatrackError(
            f"cannot download {repo_id} from the Hugging Face Hub ({type(err).__name__}); "
            "check the id, your network and HF_TOKEN, or pass a local folder"
        )


def run_id_of(ref: str) -> str | None:
    """The run a `runs:/` reference points into, so results can be logged next to the checkpoint."""
    match = re.match(r"^runs:/([0-9a-f]+)/", ref)
    return match.group(1) if match else None


def source_model(ref: str) -> str:
    """The uncompressed model a reference derives from, followed back through the runs that made it."""
    run_id = run_id_of(ref)
    if not run_id:
        return ref
    import mlflow

    return mlflow.get_run(run_id).data.tags.get(SOURCE_MODEL, ref)
