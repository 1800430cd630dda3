"""How exatrack talks to MLflow: which store, which experiment, which run, and the tags every run gets.

The store is MLflow's own default (sqlite:///mlflow.db plus ./mlruns in the working folder), so
`mlflow run`, `mlflow ui` and this package see the same runs with no set-up; MLFLOW_TRACKING_URI
points all of them at a team server instead.
"""

import logging
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from exatrack import processes

log = logging.getLogger(__name__)
EXPERIMENT = "exatrack"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Environment variables whose values must never reach a param, tag, artifact or log line.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "EXATRACK_JUDGE_API_KEY", "OPENAI_API_KEY")
# Tags naming the process that runs a run, so that a run left RUNNING by a killed process can be ended.
HOST, PID, PID_STARTED = "exatrack.host", "exatrack.pid", "exatrack.pid_started"
ENDED = "exatrack.ended"  # tag: why exatrack, not the run's own process, ended a run


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def store_ready() -> None:
    """Create the default store under a lock: two commands started at once in a fresh folder used to
    race MLflow's schema migration and leave a half-migrated mlflow.db that failed every later command.
    A team server (MLFLOW_TRACKING_URI) migrates itself once, so only the embedded store needs this."""
    import mlflow
    from filelock import FileLock

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri[len("sqlite:///"):])
    with FileLock(str(database) + ".lock"):
        mlflow.MlflowClient().search_experiments(max_results=1)  # creates and migrates the database once


def owner_tags() -> dict:
    host, pid, started = processes.me()
    return {HOST: host, PID: str(pid), PID_STARTED: f"{started:.2f}"}


def end_stale_runs() -> list[str]:
    """End as KILLED, saying why, the runs left RUNNING by processes of this host that are gone: a
    process killed with -9 never ends its runs, and they would show as running forever. The runs of a
    live process, of another host, or of no recorded process are left alone. Returns the runs ended."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient()
    host, _, _ = processes.me()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    running = client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{host}'",
                                 max_results=1000)
    ended = []
    for run in running:
        pid, started = int(run.data.tags[PID]), float(run.data.tags[PID_STARTED])
        if processes.gone(host, pid, started):
            why = f"stale: process {pid} on {host} is gone"
            client.set_tag(run.info.run_id, ENDED, why)
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s (%s) ended as KILLED: %s", run.info.run_id, run.info.run_name, why)
            ended.append(run.info.run_id)
    return ended


def use_experiment() -> str:
    """The experiment named by `--experiment` or MLFLOW_EXPERIMENT_NAME; else the one `mlflow run` (or
    an earlier `mlflow.set_experiment`, which exports MLFLOW_EXPERIMENT_ID) chose; else 'exatrack'.
    Returns the experiment's id."""
    import mlflow

    if name := os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return set_experiment(name)
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    return set_experiment(EXPERIMENT)


def set_experiment(name: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.set_experiment(name).experiment_id
    except MlflowException:  # a command started at the same time created it between MLflow's lookup and create
        return mlflow.set_experiment(name).experiment_id


# What each kind of run is, shown as its description in the MLflow UI.
DESCRIPTIONS = {
    "quantize": "A compressed checkpoint (llmcompressor): its recipe, checkpoint/ folder and quality proxy. "
                "Its evaluations are nested under it.",
    "prune": "A checkpoint with the least important decoder layers dropped (Block Influence).",
    "distill": "A student trained on its teacher's next-token distributions.",
    "sft": "A LoRA fine-tune merged back into a plain checkpoint.",
    "pipeline": "Lanes of compression steps, evaluated side by side with the base in one vLLM session, "
                "ranked (leaderboard.md/.csv/.png here) and promoted.",
    "rank": "A leaderboard of one fingerprint and source model: scores with 95% intervals, ties, the verdict.",
    "promote": "The submission: submit.zip built from a registered version, checked before the alias moved.",
}


@contextmanager
def run(kind: str, run_id: str | None = None, run_name: str | None = None, parent_run_id: str | None = None,
        tags: dict | None = None):
    """Start (or resume) a run as this process's; any exception marks it FAILED with the error kept as a tag."""
    import mlflow

    use_experiment()
    new = {"exatrack.kind": kind, "mlflow.note.content": DESCRIPTIONS.get(kind, "")} if run_id is None else {}
    tags = {**new, **owner_tags(), **(tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_id=run_id, run_name=run_name, tags=tags or None, nested=nested,
                          log_system_metrics=system_metrics()) as active:
        try:
            yield active
        except BaseException as err:
            mlflow.set_tag("exatrack.error", redact(str(getattr(err, "message", err)))[:5000])
            raise


def system_metrics() -> bool:
    """MLflow's system metrics (GPU memory and utilisation) where a GPU and NVIDIA's bindings are there."""
    import importlib.util
    import shutil

    return shutil.which("nvidia-smi") is not None and importlib.util.find_spec("pynvml") is not None


def redact(text: str) -> str:
    for name in SECRET_ENV:
        if secret := os.environ.get(name):
            text = text.replace(secret, "***")
    return text


def log_new_params(params: dict) -> None:
    """Log the effective values of the parameters the run does not hold yet.

    A run launched by `mlflow run` already holds the entry point's parameters as the user gave them
    (an empty default shows as ''); MLflow forbids changing a param, and the logged recipe artifact
    records the effective values in any case.
    """
    import mlflow

    held = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in held})


def log_folder(folder: Path, artifact_path: str) -> None:
    """Log a folder; other commands then take it as runs:/<run id>/<artifact_path>."""
    import mlflow

    mlflow.log_artifacts(str(folder), artifact_path)


def log_figure(fig, artifact_file: str) -> None:
    """Log a plot and free it: a pipeline draws many, and pyplot keeps every open figure alive."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def log_dataset(name: str, source: str, rows: list[dict], context: str) -> None:
    """What a run saw, as an MLflow dataset input (name, source, digest, rows): the UI's Dataset column."""
    import mlflow

    if mlflow.active_run() is None or not rows:
        return
    import pandas as pd

    dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=source, name=name)
    mlflow.log_input(dataset, context=context)
