"""How exatrack talks to MLflow: which store, which experiment, which run, and the tags every run gets.

The store is MLflow's own default (sqlite:///mlflow.db plus ./mlruns in the working folder), so
`mlflow run`, `mlflow ui` and this package see the same runs with no set-up; MLFLOW_TRACKING_URI
points all of them at a team server instead.
"""

import logging
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from exatrack.core import console, processes
from exatrack.core.basics import ExatrackError, redact

log = logging.getLogger(__name__)
EXPERIMENT = "exatrack"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Tags naming the process that runs a run, so that a run left RUNNING by a killed process can be ended.
HOST, PID, PID_STARTED = "exatrack.host", "exatrack.pid", "exatrack.pid_started"
ENDED = "exatrack.ended"  # tag: why exatrack, not the run's own process, ended a run
INTERRUPTED = "stopped: the command was interrupted (Ctrl-C or SIGTERM)"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def store_ready() -> None:
    """Refuse in seconds, with one line, a store that cannot work, before any command starts its work.

    A tracking server on a closed port used to hang for minutes in MLflow's retries, and a read-only
    working folder failed only at the first write with an sqlite message. The default store is also
    created here under a lock: two commands started at once in a fresh folder used to race MLflow's
    schema migration and leave a half-migrated mlflow.db that failed every later command."""
    import mlflow
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        if urlsplit(uri).username:
            raise ExatrackError("MLFLOW_TRACKING_URI carries credentials, which MLflow prints with every run; drop them "
                                "from the URI and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
        server_answers(uri)
    try:
        if not uri.startswith("sqlite:///"):  # a team server migrates itself
            mlflow.MlflowClient().search_experiments(max_results=1)
            return
        database = Path(uri[len("sqlite:///"):])
        if not os.access(database.parent, os.W_OK):
            raise ExatrackError(f"the folder {database.parent.resolve()} is read-only, and MLflow's default store "
                                "(mlflow.db and mlruns/) is written there; run exatrack from a folder you can write to, "
                                "or set MLFLOW_TRACKING_URI")
        with FileLock(str(database) + ".lock"):
            from sqlalchemy.exc import DatabaseError  # what MLflow's sqlite store raises for a damaged file

            try:
                client = mlflow.MlflowClient()
                client.search_experiments(max_results=1)  # creates and migrates the database once
            except DatabaseError as err:
                reason = str(err.orig or err).strip().splitlines()[0][:200]
                raise ExatrackError(f"the tracking store {database} is damaged ({reason}); move it aside "
                                    f"(mv {database.name} {database.name}.damaged) and restore a copy, or start a new store there")
        forgotten_runs(client, database.parent / "mlruns")
    except MlflowException as err:
        raise ExatrackError(f"the tracking store {uri} does not work ({str(err).strip().splitlines()[0][:300]}); "
                            "fix or unset MLFLOW_TRACKING_URI")


def forgotten_runs(client, artifacts: Path) -> None:
    """Say it when the database knows no run but its artifact folder holds some: mlflow.db was deleted
    or replaced, and every board would be empty without a word why."""
    if not artifacts.is_dir() or client.search_runs(
            [e.experiment_id for e in client.search_experiments(view_type=3)], max_results=1, run_view_type=3):
        return
    held = sum(1 for run in artifacts.glob("*/*") if run.is_dir() and len(run.name) == 32)
    if held:
        log.warning("the tracking store knows no run, but %s holds the artifacts of %d run%s: was mlflow.db deleted "
                    "or replaced? Restore it, or move %s aside to start afresh", artifacts, held, "s"[:held != 1],
                    artifacts.name)


def server_answers(uri: str, timeout_s: float = 5.0) -> None:
    """One short request to the server's /health; any HTTP answer will do (a proxy may guard /health)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except OSError as err:  # refused, unknown host, timed out
        raise ExatrackError(f"no tracking server answers at MLFLOW_TRACKING_URI={uri} "
                            f"({getattr(err, 'reason', err)}); start the server, or fix or unset MLFLOW_TRACKING_URI")


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
    running = client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{HOST}` = {quoted(host)}",
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

    found = mlflow.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise ExatrackError(f"experiment '{name}' is deleted; restore it (`mlflow experiments restore --experiment-id "
                            f"{found.experiment_id}`) or pick another name with --experiment")
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



def quoted(value: str) -> str:
    """A value as an MLflow search filter reads it back: single-quoted, or double-quoted when it holds
    a single quote (MLflow's filter grammar has no escapes: a backslash is matched as it is)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ExatrackError(f"{value!r} holds both quote characters, which MLflow's search cannot match; "
                        "rename it without one of them")

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
        interrupted = False
        try:
            yield active
        except BaseException as err:
            mlflow.set_tag("exatrack.error", redact(str(getattr(err, "message", err)))[:5000])
            if interrupted := isinstance(err, KeyboardInterrupt):  # MLflow would call it FAILED
                mlflow.set_tag(ENDED, INTERRUPTED)
            raise
        finally:
            if not nested and (log := console.log_path()) is not None:  # the command's run keeps its log
                mlflow.log_artifact(str(log), "logs")
            if interrupted:
                mlflow.end_run("KILLED")


def system_metrics() -> bool:
    """MLflow's system metrics (GPU memory and utilisation) where a GPU and NVIDIA's bindings are there."""
    import importlib.util
    import shutil

    return shutil.which("nvidia-smi") is not None and importlib.util.find_spec("pynvml") is not None


def redact_logs() -> None:
    """Every log line goes out redacted, ours and the libraries' alike: httpx logs each request's URL,
    credentials included. Installed once per process, however many commands it runs."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacted(*args, **kwargs):
        record = make(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except Exception:  # a malformed record is logging's to report, as it would be without this
            pass
        return record

    redacted.redacts = True
    logging.setLogRecordFactory(redacted)


def log_new_params(params: dict) -> None:
    """Log the effective values of the parameters the run does not hold yet.

    A run launched by `mlflow run` already holds the entry point's parameters as the user gave them
    (an empty default shows as ''); MLflow forbids changing a param, and the logged recipe artifact
    records the effective values in any case.
    """
    import mlflow

    held = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: redact(str(v)) for k, v in params.items() if k not in held})


def artifact_location(run_id: str, path: str) -> str:
    """Where a person finds a run's artifact: a path on this machine for a local store, else its URI."""
    from urllib.parse import unquote

    import mlflow

    uri = f"{mlflow.get_run(run_id).info.artifact_uri}/{path}"
    location = urlsplit(uri)
    return unquote(location.path) if location.scheme in ("", "file") else uri


def log_folder(folder: Path, artifact_path: str) -> None:
    """Log a folder; other commands then take it as runs:/<run id>/<artifact_path>."""
    import mlflow

    mlflow.log_artifacts(str(folder), artifact_path)


def log_table(table: dict, artifact_file: str) -> None:
    """mlflow.log_table on the active run, except that a table already there is replaced, not appended
    to (MLflow appends): a run scored again (`exatrack rescore`) shows each prediction once."""
    import mlflow

    run_id = mlflow.active_run().info.run_id
    folder = os.path.dirname(artifact_file)
    if artifact_file not in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, folder or None)}:
        mlflow.log_table(table, artifact_file=artifact_file)
        return
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(artifact_file))
        pd.DataFrame(table).to_json(path, orient="split", index=False, date_format="iso")  # as log_table writes it
        mlflow.log_artifact(path, folder or None)


def log_figure(fig, artifact_file: str) -> None:
    """Log a plot and free it: a pipeline draws many, and pyplot keeps every open figure alive."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def log_dataset(name: str, where: str, rows: list[dict], context: str, split: str | None = None) -> None:
    """What a run saw, as an MLflow dataset input (name, source, digest, schema): the UI's Dataset column."""
    import mlflow

    if mlflow.active_run() is None or not rows:
        return
    import pandas as pd

    frame = pd.DataFrame(rows)
    # MLflow hints on every integer column (it could not hold a missing value); these are data, not a
    # model's input schema, so they are recorded as the doubles it recommends
    frame = frame.astype({column: "float64" for column in frame.select_dtypes("integer").columns})
    mlflow.log_input(mlflow.data.from_pandas(frame, source=dataset_source(where, split), name=name), context=context)


def dataset_source(where: str, split: str | None):
    """A local file or a hub dataset, as MLflow's own source types. Handed the bare string instead,
    MLflow 3.17 tries every source it registered and warns on every run: a hub id reads as a local
    path too, and the local source is registered twice (for "" and for "file:")."""
    import json

    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    if Path(where).expanduser().exists():
        return get_dataset_source_from_json(json.dumps({"uri": str(Path(where).expanduser().resolve())}), "local")
    return HuggingFaceDatasetSource(path=where, split=split)
