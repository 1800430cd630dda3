"""Lanes fanned out over Ray: every distinct step a Ray task asking for one GPU (one CPU on a machine
without GPUs), a step waiting only for the step before it in its lane. `ray.init()` starts a local
cluster on one box; `--ray-address` joins a real one.

Lanes sharing a prefix (prune -> distill -> ...) share its step keys, so the prefix is one task that
its lanes' next steps wait on: it runs once, as in turn. Every task logs to the pipeline's tracking
store under the pipeline's run, exactly as the sequential path does (steps.make_step), so resume,
--force and lineage do not depend on how the lanes ran. Tasks are never retried: a crashed worker
fails its lane (and the lanes waiting on it) alone, and its run, left RUNNING by the dead process,
is ended FAILED. Ctrl-C cancels every task and ends their runs KILLED.

Only compression fans out. Evaluation stays in the pipeline's own process and GPU: speed is only
compared within one serving session (base beside candidates), so spreading sessions over GPUs would
buy wall time at the price of sessions on different chips; one session per group of lanes keeps every
lane's SpeedNorm against the base measured on the same GPU at the same time.
"""

import logging
import os
import socket
import time
from pathlib import Path

from exatrack.compress import checkpoint
from exatrack.core import console, tracking
from exatrack.core.basics import ExatrackError

log = logging.getLogger(__name__)
WHERE = "exatrack.worker"  # tag on a step's run: the host and GPU its Ray task ran on


def check(address: str | None) -> None:
    """Refuse, before any work, what cannot work: Ray missing, or a cluster writing to a local store."""
    import importlib.util

    import mlflow

    if importlib.util.find_spec("ray") is None:
        raise ExatrackError("--workers/--ray-address need Ray; install it with `pip install 'exatrack[ray]'`")
    uri = mlflow.get_tracking_uri()
    if address and address != "local" and not uri.startswith(("http://", "https://", "databricks")):
        raise ExatrackError(f"the workers of a Ray cluster cannot reach this machine's store ({uri}); start a "
                            "tracking server and set MLFLOW_TRACKING_URI=http://<server>:5000 (see README, team server)")


def worker_env(experiment_id: str) -> dict:
    """What a worker needs to write where the pipeline writes: the same store (made absolute, since a
    worker's folder is its own), the same experiment, and the project's settings."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    env = {k: v for k, v in os.environ.items() if k.startswith(("EXATRACK_", "MLFLOW_", "HF_")) and k != "MLFLOW_RUN_ID"}
    return {**env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment_id}


def start(workers: int, address: str | None, experiment_id: str):
    import ray

    runtime_env = {"env_vars": worker_env(experiment_id)}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:  # a local cluster of `workers` slots: GPUs where the box has them, else CPUs
        import torch

        gpus = min(workers, torch.cuda.device_count()) if torch.cuda.is_available() else 0
        # Ray's sockets live in its temp folder, and a socket path may not pass 107 bytes: not under
        # this command's own (deep) temp folder, but where Ray puts them by default
        ray.init(num_cpus=max(workers, 1), num_gpus=gpus, runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=False, _temp_dir=os.environ.get("RAY_TMPDIR", "/tmp/ray"))
    return ray


def run_step(before: tuple, lane: str, step: str, params: dict, key: str, calib: str | None,
             parent_id: str, experiment_id: str, force: bool) -> tuple[str, bool, str]:
    """A Ray task: one step on the checkpoint of the step before. `before` and the result are (model
    reference, whether every step so far was reused, where it ran)."""
    import ray
    from mlflow import MlflowClient

    from exatrack.core import processes
    from exatrack.lanes.steps import make_step

    os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run`'s run is the pipeline's; a step's run is its own child
    tracking.redact_logs()
    processes.own_temp_folder()
    where = f"{socket.gethostname()} GPU {','.join(map(str, ray.get_gpu_ids())) or 'none'}"
    client = MlflowClient()
    client.set_tag(parent_id, f"lane.{lane}", f"running {step} on {where}")
    run_id, reused = make_step(client, experiment_id, lane, step, params, before[0], key, calib,
                               parent_id, force)
    if not reused:
        client.set_tag(run_id, WHERE, where)
    return checkpoint.uri(run_id), reused and before[1], where


def make_lanes(lanes: dict, base: str, calib: str | None, parent_id: str, experiment_id: str, force: bool,
               workers: int, address: str | None) -> tuple[dict, dict]:
    """Every lane over Ray: lane -> final checkpoint, lane -> status, as pipeline.make_lanes_in_turn."""
    from exatrack.lanes.steps import step_key

    ray = start(workers, address, experiment_id)
    refs, last = {}, {}  # step key -> its task; lane -> its last step's task
    stop = Interrupt()
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(max_retries=0, **({"num_gpus": 1} if gpus else {"num_cpus": 1}))(run_step)
        for name, steps in lanes.items():
            before = (base, True, "")
            for i, (step, params) in enumerate(steps):
                key = step_key(base, steps, i, calib)
                if key not in refs:
                    refs[key] = task.remote(before, name, step, params, key, calib, parent_id, experiment_id, force)
                before = refs[key]
            last[name] = before
        return wait(ray, lanes, refs, last, parent_id, stop)
    except KeyboardInterrupt:
        for ref in refs.values():
            ray.cancel(ref, force=True)
        ray.shutdown()
        end_left_running(parent_id, "KILLED", tracking.INTERRUPTED)
        raise
    finally:
        stop.restore()
        ray.shutdown()


class Interrupt:
    """Ctrl-C noted, not raised where it lands: a KeyboardInterrupt raised inside the store's or Ray's own
    calls can be swallowed there; the wait loop checks the flag between its calls instead."""

    def __init__(self):
        import signal

        self.asked = False
        self.previous = signal.signal(signal.SIGINT, self.note)

    def note(self, signum, frame):
        self.asked = True

    def restore(self):
        import signal

        signal.signal(signal.SIGINT, self.previous)


def wait(ray, lanes: dict, refs: dict, last: dict, parent_id: str, stop: Interrupt) -> tuple[dict, dict]:
    """Collect the tasks as they finish; progress (done/total, ETA, each lane's state) on the terminal
    and as tags of the pipeline run."""
    from mlflow import MlflowClient

    client, finals, status = MlflowClient(), {}, {}
    pending, started = list(refs.values()), time.monotonic()
    with console.bar(total=len(pending), desc="steps", unit="step") as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if stop.asked:
                raise KeyboardInterrupt
            if not ready:
                continue
            bar.update(len(ready))
            for name in [name for name, ref in last.items() if ref in ready]:
                try:
                    finals[name], reused, where = ray.get(last[name])
                    status[name] = "reused" if reused else "done"
                    console.say(f"lane {name}: {status[name]} (last step on {where})")
                except Exception as err:  # the lane's own step, or one before it that it waited on, failed
                    status[name] = lane_failure(err)
                    console.say(f"lane {name}: {status[name]}")
                client.set_tag(parent_id, f"lane.{name}", status[name][:250])
            left = (time.monotonic() - started) / bar.n * len(pending) if bar.n else 0
            client.set_tag(parent_id, "exatrack.progress", f"{bar.n}/{bar.total} steps done, {len(status)}/{len(lanes)} "
                                                           f"lanes, about {left / 60:.0f} min left")
    end_left_running(parent_id, "FAILED", "ended: its Ray worker died")
    return finals, status


def lane_failure(err: BaseException) -> str:
    from exatrack.lanes.steps import failure

    cause = getattr(err, "cause", None) or err  # a RayTaskError wraps the step's own exception
    return failure(cause)


def end_left_running(parent_id: str, status: str, why: str) -> None:
    """End the step runs of this pipeline still RUNNING once their tasks are over: their process died
    (OOM, a lost node) or was cancelled, and never ended them."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(parent_id)
    for child in client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = {tracking.quoted(parent_id)} "
                                    "and attributes.status = 'RUNNING'"):
        client.set_tag(child.info.run_id, tracking.ENDED, why)
        client.set_terminated(child.info.run_id, status)
        log.warning("run %s (%s) %s", child.info.run_id, child.info.run_name, why)
